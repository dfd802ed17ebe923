"""Messages the main screen's widgets send up to the screen, which does the I/O.

Widgets never talk to the hub: the table asks for pages (`NeedOlder`, `NeedNewer`, `ReloadNewest`)
and reports what it shows (`TableChanged`), the filter bar hands over a filter that parsed
(`FilterSubmitted`), and the screen runs the workers and feeds the answers back.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from dissect.model import Call


@dataclass
class NeedOlder(Message):
    """The cursor or the view came near the last loaded row: load the page before `before`
    (None: the newest page; the rows shown came from the live stream only)."""

    before: Call | None


@dataclass
class NeedNewer(Message):
    """The view reached the first loaded row and newer rows were dropped to bound memory: load
    the page after `after`."""

    after: Call


@dataclass
class ReloadNewest(Message):
    """The user asked to follow (g/Home) but the newest rows are no longer loaded: start over."""


@dataclass
class OpenCall(Message):
    """Enter (or a double click) on a call: show its details."""

    call: Call


@dataclass
class TableChanged(Message):
    """What the table holds now, for the status line."""

    rows: int
    new: int  # arrivals not shown because the user moved away from the top
    missed: int  # calls the hub dropped for this client (it read too slowly)
    following: bool


@dataclass
class FilterSubmitted(Message):
    """Enter in the filter bar with text that parses: apply it."""

    text: str


@dataclass
class FilterCancelled(Message):
    """Escape in the filter bar: keep the active filter, back to the table."""
