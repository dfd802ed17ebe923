"""The podshark terminal UI: `PodsharkApp` and `run_app`, used by `podshark ui` and `podshark open`.

Structure (harlequin/posting style: app, messages, widgets and screens in their own modules, CSS in
.tcss files, I/O in workers):

    tui/app.py              PodsharkApp: the hub client, the active filter, app-wide keys (q, ?),
                            the command palette; its default screen is the main screen
    tui/client.py           HubClient: the hub's HTTP/WebSocket API (the ONLY way to the hub)
    tui/screens/main.py     MainScreen: filter bar + calls table + replay banner + status line;
                            runs the live, paging and replay workers
    tui/widgets/            calls_table.py (windowed Line API table that follows like tail -f),
                            filter_bar.py (inline syntax errors, history), status_line.py,
                            alert_badge.py (firing/pending rules at the status line's end),
                            view_table.py (the map's and alerts' row tables)
    tui/messages.py         what widgets tell the screen (NeedOlder, OpenCall, FilterSubmitted, ...)
    tui/format.py           pure row formatting (times, latency, sizes, endpoint labels, layout)
    tui/quick_filters.py    w / t / x: filters built from the selected row
    tui/filter_history.py   up/down history of applied filters (optionally persisted)
    tui/screens/detail.py   DetailScreen (Enter)            } other engineers' screens, imported
    tui/screens/replay.py   ReplayDialog (r)                } lazily by the actions that push
    tui/screens/export.py   ExportScreen (e)                } them, so the main screen works
    tui/screens/stats.py    StatsScreen (s)                 } without any of them
    tui/screens/map.py      MapScreen (m): the service map  }
    tui/screens/alerts.py   AlertsScreen (!)                }
    tui/screens/help.py     HelpScreen (?)                  }
    tui/commands.py         command palette provider (ctrl+p), registered if present

Shared state other screens use: `app.client` (a `HubClient`), `app.filter_text` (the active
filter), `app.now_ns()` (the clock; injectable so tests and snapshots are deterministic).

The TUI talks to the hub only through its API and imports nothing of ours but `dissect` (the
layering test checks). When the hub is unreachable or refuses the token the app still opens, says
so in the status line (and a notification), and keeps retrying.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from ssl import SSLContext
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.command import Hits, Provider
from textual.screen import Screen

from tui.client import Explain, HubClient
from tui.filter_history import FilterHistory, default_path
from tui.screens.main import MainScreen

PAGE_SIZE = 200  # rows per history page
MAX_ROWS = 5000  # rows the table keeps at most (memory stays bounded with millions stored)


class _NoCommands(Provider):
    """Stands in for tui/commands.py's provider when that module is not there."""

    async def search(self, query: str) -> Hits:
        return
        yield  # pragma: no cover - an empty async generator


def _podshark_commands() -> type[Provider]:
    """The Provider class defined in tui/commands.py (imported when the palette opens)."""
    if importlib.util.find_spec("tui.commands") is None:
        return _NoCommands
    module = importlib.import_module("tui.commands")
    named = getattr(module, "PodsharkCommands", None)
    if isinstance(named, type) and issubclass(named, Provider):
        return named
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Provider) and obj is not Provider and obj.__module__ == module.__name__:
            return obj
    return _NoCommands


class PodsharkApp(App[int]):
    """The TUI against one hub. `whole_history`: start with the stored history, newest first,
    however old it is (`podshark open`); otherwise start with an empty live view (`podshark ui`:
    what happens now), and load the history when the user scrolls past the last row (j/↓, G) or
    applies a filter."""

    TITLE = "podshark"
    CSS_PATH = "podshark.tcss"
    COMMANDS: ClassVar[set[type[Provider] | Callable[[], type[Provider]]]] = App.COMMANDS | {
        _podshark_commands
    }
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        whole_history: bool = False,
        hub_label: str | None = None,
        page_size: int = PAGE_SIZE,
        max_rows: int = MAX_ROWS,
        history_path: Path | None = None,
        filter_text: str = "",
        now_ns: Callable[[], int] = time.time_ns,
        ssl: SSLContext | None = None,
        explain: Explain | None = None,
    ) -> None:
        """`hub_label`: how the status line names the hub (default: its URL; snapshots pass a
        fixed one). `history_path`: where filter history persists (None: memory only). `ssl` and
        `explain` go to the hub client (`tui.client.HubClient`): an https:// hub's TLS context, and
        the sentence naming the fix for a failed connection."""
        super().__init__()
        self.url = url
        self.client = HubClient(url, token, ssl=ssl, explain=explain)
        self.whole_history = whole_history
        self.hub_label = hub_label or url
        self.page_size = max(1, min(page_size, 10_000))
        self.max_rows = max_rows
        self.history = FilterHistory(history_path)
        self.filter_text = filter_text
        self.now_ns = now_ns
        self.ready = False  # the first page (if any) and the live stream's first answer are in

    def get_default_screen(self) -> Screen[None]:
        return MainScreen()

    @property
    def main(self) -> MainScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    async def on_unmount(self) -> None:
        await self.client.close()

    def action_help(self) -> None:
        try:
            from tui.screens.help import HelpScreen
        except ImportError:
            self.notify("help is not available in this build", severity="warning")
            return
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def run_app(
    url: str,
    token: str | None,
    whole_history: bool = False,
    *,
    ssl: SSLContext | None = None,
    explain: Explain | None = None,
) -> int:
    """Run the TUI until the user quits; the exit status for the command."""
    app = PodsharkApp(
        url, token, whole_history=whole_history, history_path=default_path(), ssl=ssl, explain=explain
    )
    code = app.run()
    return int(code or app.return_code or 0)
