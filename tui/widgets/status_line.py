"""The status line: which hub, whether we are connected to it, live or replay, and the counts.

One line at the bottom, above the key footer. It shows no wall-clock time, so snapshots are
stable. Connection states come from the live stream's `Status` events and from page fetches:
`connecting`, `connected`, `reconnecting` (with the reason), `unauthorized` (with what to do).
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

UNAUTHORIZED_HELP = (
    "the hub refused the token — set PODSHARK_TOKEN (or --token-file) to the hub's token and "
    "start podshark ui again; retrying every 10 s"
)


class StatusLine(Widget):
    DEFAULT_CSS = """
    StatusLine { height: 1; }
    """

    hub = reactive("")
    state = reactive("connecting")
    detail = reactive("")
    mode = reactive("LIVE")
    rows = reactive(0)
    new = reactive(0)
    missed = reactive(0)
    following = reactive(True)
    paging = reactive(True)
    note = reactive("")

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        if self.state == "connected":
            out.append("● connected", style="bold green")
        elif self.state == "unauthorized":
            out.append("✖ unauthorized: ", style="bold red")
            out.append(self.detail or UNAUTHORIZED_HELP, style="red")
        elif self.state == "reconnecting":
            out.append("◌ reconnecting", style="bold yellow")
            if self.detail:
                out.append(f": {self.detail}", style="yellow")
        else:
            out.append("◌ connecting", style="yellow")
        out.append(f"  {self.hub}", style="dim")
        out.append("  │  ")
        if self.mode == "LIVE":
            out.append(" LIVE ", style="bold reverse green")
        else:
            out.append(" REPLAY ", style="bold reverse magenta")
        out.append(f"  {self.rows:,} calls loaded")
        if self.missed:
            out.append(f"  │  {self.missed:,} missed", style="bold yellow")
        if self.new:
            out.append(f"  │  ↑ {self.new:,} new — press g/Home to follow", style="bold cyan")
        elif self.mode == "LIVE" and self.following:
            out.append("  │  following ▲ newest on top", style="dim")
        if self.note:
            out.append(f"  │  {self.note}", style="dim")
        return out
