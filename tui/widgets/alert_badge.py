"""`AlertBadge`: the status line's alert indicator, shown only while a rule is firing or pending.

It sits at the right end of the status line (tui/screens/main.py puts both in one row). Nothing
is shown when every rule is ok, when the hub has no rules, or when the hub is older than alerts, so
a quiet cluster's screen is the same as before alerts existed. Firing outranks pending: a firing
rule paints the badge in the error colour, pending ones alone in the warning colour. The text
names the key (`!`) that opens the alerts view.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


def badge_text(firing: int, pending: int) -> str:
    """`2 alerts firing · 1 pending — ! alerts`; empty when nothing fires or waits."""
    parts = []
    if firing:
        parts.append(f"{firing:,} alert{'' if firing == 1 else 's'} firing")
    if pending:
        noun = "" if firing else f" alert{'' if pending == 1 else 's'}"
        parts.append(f"{pending:,}{noun} pending")
    if not parts:
        return ""
    return "⚠ " + " · ".join(parts) + " — ! alerts"


class AlertBadge(Widget):
    """Firing and pending rule counts; hidden (no width) while both are zero."""

    DEFAULT_CSS = """
    AlertBadge { width: auto; height: 1; display: none; padding: 0 1; }
    """

    firing = reactive(0)
    pending = reactive(0)

    def show(self, firing: int, pending: int) -> None:
        self.firing, self.pending = max(firing, 0), max(pending, 0)
        self.display = bool(self.firing or self.pending)
        self.set_class(self.firing > 0, "-firing")
        self.set_class(self.firing == 0 and self.pending > 0, "-pending")

    def render(self) -> Text:
        return Text(badge_text(self.firing, self.pending), no_wrap=True)
