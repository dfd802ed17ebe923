"""The command palette (ctrl+p): the app's verbs and presets under names a user can search for.

Each command names an action (`filter`, `replay`, `export`, `stats`, `map`, `alerts`, `help`,
`live`) that the app or one of its screens defines as `action_<name>`, so the palette does what the
key would do and has no code path of its own. The action runs on the nearest node that defines
it: the screen the palette was opened on, else the closest screen beneath it (the screens above it
are closed first, so "Filter: dns only" from the stats screen goes back to the table it filters),
else the app.

Presets carry an argument: `filter(text)` applies `text` ('' clears the filter), `replay(since)`
replays from `since` (relative, like '-15m') to now at 1x. An action that takes the argument gets
it. One that does not (`action_filter()` opening the filter bar) is bypassed for the screen's public
`apply_filter(text)` / `start_replay(ReplayRequest)` when it has them, and otherwise simply run, so
a preset never does something other than what its name says.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.dom import DOMNode

from dissect.filter import ERRORS, PROTOCOLS


@dataclass(frozen=True)
class PaletteCommand:
    name: str
    help: str
    action: str  # the action's name: `filter` runs `action_filter`
    arg: str | None = None  # the preset's argument, if any

    @property
    def action_string(self) -> str:
        """As Textual writes actions: `filter('dns')`."""
        return self.action if self.arg is None else f"{self.action}({self.arg!r})"


PALETTE: tuple[PaletteCommand, ...] = (
    PaletteCommand("Filter: errors only", "HTTP 5xx; non-zero gRPC, DNS and Kafka status", "filter", ERRORS),
    *(PaletteCommand(f"Filter: {p} only", f"only {p} calls", "filter", p) for p in PROTOCOLS),
    PaletteCommand("Filter: clear", "show every call", "filter", ""),
    PaletteCommand("Filter: edit…", "open the filter bar (/)", "filter"),
    PaletteCommand("Replay the last 5 minutes", "play them back at 1x", "replay", "-5m"),
    PaletteCommand("Replay the last 15 minutes", "play them back at 1x", "replay", "-15m"),
    PaletteCommand("Replay the last hour", "play it back at 1x", "replay", "-1h"),
    PaletteCommand("Replay a window…", "choose the window and speed (r)", "replay"),
    PaletteCommand("Export to pcapng…", "the current filter and window (e)", "export"),
    PaletteCommand("Stats", "rates, errors, latency percentiles, top workloads (s)", "stats"),
    PaletteCommand("Service map", "who talks to whom: calls/s, errors, p50/p99, bytes/s per edge (m)", "map"),
    PaletteCommand("Alerts", "alert rules firing, pending and ok, and recent events (!)", "alerts"),
    PaletteCommand("Help", "every key and the filter language (?)", "help"),
    PaletteCommand("Back to live", "leave a replay and follow new calls (l)", "live"),
)


def _takes_argument(method: Callable[..., Any]) -> bool:
    try:
        return len(inspect.signature(method).parameters) > 0
    except (TypeError, ValueError):
        return False


class PodsharkCommands(Provider):
    """The palette's podshark section: filter presets, replay windows, export, stats, help, live."""

    async def _target(self, action: str) -> DOMNode:
        """The node that runs `action`, with the screens above it closed."""
        app = self.app
        name = f"action_{action}"
        if hasattr(self.screen, name):
            return self.screen
        stack = app.screen_stack
        for screen in reversed(stack[: stack.index(self.screen)] if self.screen in stack else stack):
            if hasattr(screen, name):
                while app.screen is not screen and len(app.screen_stack) > 1:
                    await app.pop_screen()
                return screen
        return app

    async def run(self, command: PaletteCommand) -> None:
        target = await self._target(command.action)
        method = getattr(target, f"action_{command.action}", None)
        if command.arg is None or (method is not None and _takes_argument(method)):
            await self.app.run_action(command.action_string, target)
        elif command.action == "filter" and hasattr(target, "apply_filter"):
            target.apply_filter(command.arg)
        elif command.action == "replay" and hasattr(target, "start_replay"):
            from tui.screens.replay import ReplayRequest, parse_when

            clock = getattr(self.app, "now_ns", time.time_ns)
            now = clock()
            target.start_replay(ReplayRequest(parse_when(command.arg, now), now, 1.0))
        else:
            await self.app.run_action(command.action, target)

    async def discover(self) -> Hits:
        for command in PALETTE:
            yield DiscoveryHit(command.name, partial(self.run, command), help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in PALETTE:
            score = matcher.match(command.name)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(command.name),
                    partial(self.run, command),
                    text=command.name,
                    help=command.help,
                )
