"""The help screen (`?`): what the screen it was opened from shows (its `HELP` text, when it has
one: the service map, the alerts view), every key of that screen, and the filter language.

The keys are read from the running app, not written down here, so the help can never fall behind a
new binding: the screen beneath's `active_bindings` (the focused widget's, that screen's and the
app's, the chain a key press actually walks), grouped by where each is defined, hidden bindings
(vim keys, paging) included. The filter language's help is `dissect.filter.HELP`, the text the
parser's own node classes carry, so it describes the grammar the hub really parses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from dissect.filter import HELP as FILTER_HELP

DIALOGS_TCSS = "../dialogs.tcss"


@dataclass(frozen=True)
class KeyHelp:
    group: str  # where the binding is defined: "Global", the screen, the focused widget
    keys: str  # as Textual displays them: "j ↓", "ctrl+p"
    description: str


def _group_title(node: DOMNode) -> str:
    """A heading for the bindings one node defines: its BINDING_GROUP_TITLE if it sets one."""
    title = getattr(node, "BINDING_GROUP_TITLE", None)
    if title:
        return str(title)
    from textual.app import App

    if isinstance(node, App):
        return "Global"
    name = type(node).__name__
    # CallsTable -> "Calls table", MainScreen -> "Main screen"
    words = "".join(f" {c.lower()}" if c.isupper() and i else c for i, c in enumerate(name)).split()
    return " ".join(words).capitalize() if words else name


def _describe(binding: Binding) -> str:
    if binding.description:
        return binding.description
    if binding.tooltip:
        return binding.tooltip
    action = binding.action.rpartition(".")[2].split("(")[0]
    return action.replace("_", " ").capitalize()


def collect_keys(screen: Screen[object]) -> list[KeyHelp]:
    """The bindings a key press on `screen` reaches (`Screen.active_bindings`: the focused
    widget's, the screen's, the app's; a key bound twice shows the one that wins), grouped by the
    node defining them in the order Textual checks them, keys of one action joined."""
    app = screen.app
    grouped: dict[int, tuple[str, dict[str, list[str]], dict[str, str]]] = {}
    for active in screen.active_bindings.values():
        node, binding = active.node, active.binding
        _title, keys, descriptions = grouped.setdefault(id(node), (_group_title(node), {}, {}))
        shown = keys.setdefault(binding.action, [])
        display = app.get_key_display(binding)
        if display not in shown:
            shown.append(display)
        descriptions.setdefault(binding.action, _describe(binding))
    return [
        KeyHelp(title, " ".join(shown), descriptions[action])
        for title, keys, descriptions in grouped.values()
        for action, shown in keys.items()
    ]


def keys_table(rows: list[KeyHelp]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column("keys", justify="right", style="bold", no_wrap=True)
    table.add_column("what")
    previous = None
    for row in rows:
        if row.group != previous:
            if previous is not None:
                table.add_row("", "")
            table.add_row("", Text(row.group, style="bold underline"))
            previous = row.group
        table.add_row(Text(row.keys, style="bold"), row.description)
    return table


class HelpScreen(ModalScreen[None]):
    """Keys of the screen beneath and of the app, then the filter language; Escape, q or ? close."""

    CSS_PATH = DIALOGS_TCSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close"),
        Binding("j,down", "scroll('down')", "Scroll down", show=False),
        Binding("k,up", "scroll('up')", "Scroll up", show=False),
        Binding("pagedown,space", "scroll('page_down')", "Page down", show=False),
        Binding("pageup", "scroll('page_up')", "Page up", show=False),
        Binding("g,home", "scroll('home')", "Top", show=False),
        Binding("G,end", "scroll('end')", "Bottom", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[KeyHelp] = []

    def compose(self) -> ComposeResult:
        stack = self.app.screen_stack
        beneath = stack[stack.index(self) - 1] if self in stack and stack.index(self) > 0 else None
        self.keys = collect_keys(beneath if beneath is not None else self.app.screen)
        with Vertical(id="help-dialog", classes="dialog"):
            yield Static("Help — Esc, q or ? to close · j/k, PgUp/PgDn scroll", classes="dialog-title")
            with VerticalScroll(id="help-body"):
                about = getattr(beneath, "HELP", None) if beneath is not None else None
                if about:
                    title = _group_title(beneath) if beneath is not None else "This view"
                    yield Static(Text(title, style="bold"), classes="help-heading")
                    yield Static(Text(str(about)), id="help-about")
                yield Static(Text("Keys", style="bold"), classes="help-heading")
                yield Static(keys_table(self.keys), id="help-keys")
                yield Static(Text("Filter language (/)", style="bold"), classes="help-heading")
                yield Static(Text(FILTER_HELP), id="help-filter")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, how: str) -> None:
        body = self.query_one("#help-body", VerticalScroll)
        {
            "down": body.scroll_down,
            "up": body.scroll_up,
            "page_down": body.scroll_page_down,
            "page_up": body.scroll_page_up,
            "home": body.scroll_home,
            "end": body.scroll_end,
        }[how]()
