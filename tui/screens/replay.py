"""The replay dialog (`r`): choose a past window and a speed; the main screen plays it.

    from  [-15m        ]   relative to now (-15m, -1h30m, -2d), RFC 3339, or `now`
    to    [now         ]
    speed (•) 1x ( ) 10x ( ) max
    [Whole stored history]  [Replay]  [Cancel]

The text is checked here, as it is typed, with the same literal parsers the filter language and
the hub use (`dissect.filter.parse_duration` / `parse_time`), so a typo is an inline message under
its field instead of a 400 from the hub after the table was already cleared. The window is resolved
to absolute nanoseconds when the dialog closes and the main screen sends those numbers to the hub:
what the preview line showed is what gets replayed, however long the user then takes.

"Now" comes from an injectable clock (`now_ns`), so tests and snapshots are deterministic.
"Whole stored history" asks the hub for the stored calls' first and last start times
(`GET /api/v1/stats` -> `window`): the natural choice for an old capture opened with
`podshark open`, whose calls are all far older than "-15m".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from dissect.filter import parse_duration, parse_time, render_duration, render_time
from tui.widgets.text_field import TextField

if TYPE_CHECKING:
    from tui.client import HubClient

DIALOGS_TCSS = "../dialogs.tcss"

# (label, speed sent to the hub; None = as fast as possible)
SPEEDS: tuple[tuple[str, float | None], ...] = (("1x", 1.0), ("10x", 10.0), ("max", None))


@dataclass(frozen=True)
class ReplayRequest:
    """A window [from_ns, to_ns) of call start times, in ns since the epoch, and the speed
    (`None`: as fast as the hub can send)."""

    from_ns: int
    to_ns: int
    speed: float | None

    @property
    def speed_label(self) -> str:
        if self.speed is None:
            return "max speed"
        return f"{self.speed:g}x"

    def describe(self) -> str:
        """`2025-11-21T10:45:00Z–2025-11-21T11:00:00Z at 10x`, for the replay banner."""
        return f"{render_time(self.from_ns)}–{render_time(self.to_ns)} at {self.speed_label}"


def parse_when(text: str, now_ns: int) -> int:
    """A time as the user types it -> ns since the epoch; ValueError with a sentence otherwise.

    Accepts what the hub accepts (hub/api.py's `parse_when`): `now`, relative `-15m` / `-1h30m`,
    RFC 3339 (`2025-11-21T10:00:00Z`, offsets, fractions) or a bare date (midnight UTC)."""
    t = text.strip()
    if not t:
        raise ValueError("required: a time like -15m or 2025-11-21T10:00:00Z")
    if t == "now":
        return now_ns
    if t.startswith("-"):
        d = parse_duration(t[1:])
        if d is None:
            raise ValueError(f"{t!r} is not a duration: write -15m, -1h30m, -2d or -90s")
        return now_ns - d
    if parse_duration(t) is not None:
        raise ValueError(f"{t!r} is a duration: write -{t} for {t} ago")
    ns = parse_time(t)
    if ns is None:
        raise ValueError(f"{t!r} is not a time: write -15m or RFC 3339 like 2025-11-21T10:00:00Z")
    return ns


class ReplayDialog(ModalScreen["ReplayRequest | None"]):
    """Dismisses with a `ReplayRequest` (Enter in a field, or Replay), or None (Escape, Cancel)."""

    CSS_PATH = DIALOGS_TCSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Replay", show=False),
    ]

    def __init__(
        self,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        client: HubClient | None = None,
        from_text: str = "-15m",
        to_text: str = "now",
        speed: float | None = 1.0,
    ) -> None:
        """`client` is for "Whole stored history" (default: the app's `client`, if it has one)."""
        super().__init__()
        self._now_ns = now_ns
        self._client = client
        self._from_text = from_text
        self._to_text = to_text
        self._speed = speed
        self.errors: dict[str, str] = {"from": "", "to": ""}  # what is wrong with each field

    # ---- layout

    def compose(self) -> ComposeResult:
        with Vertical(id="replay-dialog", classes="dialog"):
            yield Static("Replay a past window", classes="dialog-title")
            with Horizontal(classes="field"):
                yield Label("From", classes="field-label")
                yield TextField(self._from_text, placeholder="-15m or 2025-11-21T10:00:00Z", id="replay-from")
            yield Static("", id="replay-from-error", classes="field-error")
            with Horizontal(classes="field"):
                yield Label("To", classes="field-label")
                yield TextField(self._to_text, placeholder="now, -5m or 2025-11-21T10:15:00Z", id="replay-to")
            yield Static("", id="replay-to-error", classes="field-error")
            with Horizontal(classes="field"):
                yield Label("Speed", classes="field-label")
                with RadioSet(id="replay-speed"):
                    for label, speed in SPEEDS:
                        yield RadioButton(label, value=speed == self._speed, id=_speed_id(speed))
            yield Static("", id="replay-preview", classes="dialog-note")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Whole stored history", id="replay-all")
                yield Button("Replay", variant="primary", id="replay-ok")
                yield Button("Cancel", id="replay-cancel")
            yield Static("Enter replays · Esc cancels · the current filter applies", classes="dialog-hint")

    def on_mount(self) -> None:
        self.query_one("#replay-from", Input).focus()
        self._validate()

    # ---- reading and checking the fields

    @property
    def speed(self) -> float | None:
        pressed = self.query_one("#replay-speed", RadioSet).pressed_button
        for _, speed in SPEEDS:
            if pressed is not None and pressed.id == _speed_id(speed):
                return speed
        return self._speed

    def _validate(self) -> ReplayRequest | None:
        """Check both fields, show each one's problem under it (or the resolved window in the
        preview line); the request when everything is right."""
        now = self._now_ns()
        from_text = self.query_one("#replay-from", Input).value
        to_text = self.query_one("#replay-to", Input).value
        errors = {"from": "", "to": ""}
        lo = hi = None
        try:
            lo = parse_when(from_text, now)
        except ValueError as e:
            errors["from"] = str(e)
        try:
            hi = parse_when(to_text or "now", now)
        except ValueError as e:
            errors["to"] = str(e)
        if lo is not None and hi is not None and hi <= lo:
            errors["to"] = f"must be after from ({render_time(lo)})"
        self.errors = errors
        for end, message in errors.items():
            self.query_one(f"#replay-{end}-error", Static).update(message)
            self.query_one(f"#replay-{end}", Input).set_class(bool(message), "-invalid")
        preview = self.query_one("#replay-preview", Static)
        if lo is None or hi is None or hi <= lo:
            preview.update("")
            return None
        request = ReplayRequest(lo, hi, self.speed)
        preview.update(f"{request.describe()}  ({render_duration(hi - lo)} of calls)")
        return request

    @on(Input.Changed)
    @on(RadioSet.Changed)
    def _changed(self) -> None:
        self._validate()

    # ---- closing

    @on(Input.Submitted)
    @on(Button.Pressed, "#replay-ok")
    def action_submit(self) -> None:
        request = self._validate()
        if request is None:
            self.query_one("#replay-from" if self.errors["from"] else "#replay-to", Input).focus()
            return
        self.dismiss(request)

    @on(Button.Pressed, "#replay-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    # ---- the hub's own window

    @on(Button.Pressed, "#replay-all")
    def _whole_history(self) -> None:
        client = self._client or getattr(self.app, "client", None)
        if client is None:
            self.query_one("#replay-preview", Static).update("no hub to ask for its stored window")
            return
        self.query_one("#replay-preview", Static).update("asking the hub for its stored window…")
        self._fetch_window(client)

    @work(exclusive=True, group="replay-window")
    async def _fetch_window(self, client: HubClient) -> None:
        from tui.client import HubError

        try:
            stats = await client.stats(buckets=1, top=1)
        except HubError as e:
            self.query_one("#replay-preview", Static).update(f"cannot get the stored window: {e}")
            return
        window = stats.get("window") or {}
        lo, hi = window.get("from"), window.get("to")
        if not isinstance(lo, int) or not isinstance(hi, int):
            self.query_one("#replay-preview", Static).update("the hub has no calls stored yet")
            return
        self.query_one("#replay-from", Input).value = render_time(lo)
        self.query_one("#replay-to", Input).value = render_time(hi)
        self._validate()
        self.query_one("#replay-ok", Button).focus()


def _speed_id(speed: float | None) -> str:
    return "speed-max" if speed is None else f"speed-{speed:g}"
