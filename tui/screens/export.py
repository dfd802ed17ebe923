"""The export dialog (`e`): the current filter and window to a pcapng file, with a progress bar.

The hub does the work (`GET /api/v1/export`: the original frames of the matching calls'
connections); this dialog says what will be exported, asks where to, downloads through
`HubClient.export` (which writes `PATH.partial` and renames it only when complete, so a cut
download never looks like a finished file) and shows the path, frame count and size at the end.

The download runs in an async Textual worker on the app's own loop, so the client's progress
callback may touch the ProgressBar directly (no thread hop). Every failure is a sentence in the
dialog, never a crash: a filter the hub refuses (with a caret at the position), a wrong token, an
unreachable hub, a path that cannot be written. An existing file is only replaced after a second,
explicit Start.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, ProgressBar, Static

from dissect.filter import render_time
from tui.client import HubError, Rejected, Unauthorized, Unreachable
from tui.format import caret_lines, format_size
from tui.widgets.text_field import TextField

if TYPE_CHECKING:
    from tui.client import HubClient

DIALOGS_TCSS = "../dialogs.tcss"


class State(Enum):
    READY = "ready"
    CONFIRM = "confirm"  # the file exists; the next Start overwrites it
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def default_name(now_ns: int) -> str:
    """`podshark-20251121T104500Z.pcapng`: sortable, unique per second, safe on every filesystem."""
    stamp = dt.datetime.fromtimestamp(now_ns // 1_000_000_000, tz=dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"podshark-{stamp}.pcapng"


def describe_window(from_ns: int | None, to_ns: int | None) -> str:
    if from_ns is None and to_ns is None:
        return "all stored history"
    lo = render_time(from_ns) if from_ns is not None else "the first stored call"
    hi = render_time(to_ns) if to_ns is not None else "the last stored call"
    return f"{lo} – {hi}"


def check_path(path: Path) -> str | None:
    """Why `path` cannot be written (a sentence saying what to do), or None."""
    if path.is_dir():
        return f"{path} is a folder: add a file name like {default_name(time.time_ns())}"
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist: create it or choose another path"
    if not os.access(path.parent, os.W_OK):
        return f"cannot write into {path.parent} (permission denied): choose another folder"
    if path.exists() and not os.access(path, os.W_OK):
        return f"cannot overwrite {path} (permission denied): choose another path"
    return None


class ExportScreen(ModalScreen["Path | None"]):
    """Dismisses with the written file's path (Close, Enter or Escape after a successful export),
    or None (Escape or Cancel before, which also stops a running download and removes its partial
    file)."""

    CSS_PATH = DIALOGS_TCSS
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        client: HubClient,
        filter_text: str,
        from_ns: int | None,
        to_ns: int | None,
        default_dir: Path,
        *,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__()
        self.client = client
        self.filter_text = filter_text
        self.from_ns = from_ns
        self.to_ns = to_ns
        self.default_dir = default_dir
        self._now_ns = now_ns
        self.state = State.READY
        self.path: Path | None = None  # the file being (or that was) written
        self.frames = 0
        self.bytes_written = 0
        self.error = ""
        self.progress_updates = 0  # progress callbacks received during the download

    # ---- layout

    def compose(self) -> ComposeResult:
        name = str(self.default_dir / default_name(self._now_ns()))
        with Vertical(id="export-dialog", classes="dialog"):
            yield Static("Export to pcapng", classes="dialog-title")
            with Horizontal(classes="field"):
                yield Label("Filter", classes="field-label")
                yield Static(self._filter_text(), id="export-filter", classes="field-value")
            with Horizontal(classes="field"):
                yield Label("Window", classes="field-label")
                window = describe_window(self.from_ns, self.to_ns)
                yield Static(window, id="export-window", classes="field-value")
            with Horizontal(classes="field"):
                yield Label("File", classes="field-label -input")
                yield TextField(name, id="export-path")
            yield Static("", id="export-message", classes="dialog-note")
            yield ProgressBar(total=None, show_eta=False, id="export-progress")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start", variant="primary", id="export-start")
                yield Button("Cancel", id="export-cancel")
                yield Button("Close", variant="primary", id="export-close")
            yield Static(
                "The original frames of every connection that carries a matching call.",
                classes="dialog-hint",
            )

    def _filter_text(self) -> Text:
        if not self.filter_text.strip():
            return Text("none (every call)", style="dim")
        return Text(self.filter_text)

    def on_mount(self) -> None:
        self.query_one("#export-progress", ProgressBar).display = False
        self.query_one("#export-close", Button).display = False
        self.query_one("#export-start", Button).focus()

    # ---- helpers

    def _message(self, text: str | Text, error: bool = False) -> None:
        widget = self.query_one("#export-message", Static)
        widget.update(text)
        widget.set_class(error, "-error")

    def _target(self) -> Path:
        text = self.query_one("#export-path", Input).value.strip()
        path = Path(text).expanduser() if text else self.default_dir / default_name(self._now_ns())
        return path if path.is_absolute() else self.default_dir / path

    # ---- start / confirm

    @on(Input.Changed, "#export-path")
    def _path_changed(self) -> None:
        if self.state in (State.CONFIRM, State.FAILED):
            self.state = State.READY
            self.query_one("#export-start", Button).label = "Start"
            self._message("")

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-start")
    def action_start(self) -> None:
        if self.state in (State.RUNNING, State.DONE):
            return
        path = self._target()
        problem = check_path(path)
        if problem is not None:
            self.state = State.FAILED
            self.error = problem
            self._message(problem, error=True)
            self.query_one("#export-path", Input).focus()
            return
        if path.exists() and not (self.state is State.CONFIRM and self.path == path):
            self.state = State.CONFIRM
            self.path = path
            self._message(f"{path} exists: press Overwrite to replace it, or change the name", error=True)
            self.query_one("#export-start", Button).label = "Overwrite"
            return
        self.path = path
        self.state = State.RUNNING
        self.error = ""
        self.query_one("#export-path", Input).disabled = True
        start = self.query_one("#export-start", Button)
        start.disabled = True
        start.label = "Exporting…"
        bar = self.query_one("#export-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self._message(f"exporting to {path}…")
        self._download(path)

    # ---- the download

    def _progress(self, done: int, total: int | None) -> None:
        """The client's callback, on the app loop (the worker is async), so widgets are safe."""
        self.progress_updates += 1
        bar = self.query_one("#export-progress", ProgressBar)
        if total:
            bar.update(total=max(total, done), progress=done)
        else:
            bar.update(progress=done)
        self._message(f"exporting to {self.path}… {format_size(done)}")

    @work(exclusive=True, group="export")
    async def _download(self, path: Path) -> None:
        try:
            frames, size = await self.client.export(
                path, self.filter_text, from_ns=self.from_ns, to_ns=self.to_ns, progress=self._progress
            )
        except Rejected as e:
            self._failed(self._rejected(e))
        except Unauthorized as e:
            self._failed(f"{e}. Nothing was written.")
        except Unreachable as e:
            self._failed(f"{e}. Check the hub (or the port-forward) and press Start to try again.")
        except HubError as e:
            self._failed(f"{e}. Press Start to try again.")
        except OSError as e:
            self._failed(f"cannot write {path}: {e.strerror or e}. Choose another path.")
        else:
            self._finished(path, frames, size)

    def _rejected(self, e: Rejected) -> Text:
        """The hub's refusal; for a filter, the filter with a caret under the position."""
        text = Text(f"the hub refused the export: {e}")
        if e.position is not None and self.filter_text:
            line, caret = caret_lines(self.filter_text, e.position, 76)
            text.append(f"\n  {line}\n  {caret}", style="bold")
            if e.expected:
                text.append(f" expected {e.expected}", style="bold")
            text.append("\nFix the filter (/) and export again.")
        return text

    def _failed(self, message: str | Text) -> None:
        self.state = State.FAILED
        self.error = message.plain if isinstance(message, Text) else message
        self._message(message, error=True)
        self.query_one("#export-progress", ProgressBar).display = False
        self.query_one("#export-path", Input).disabled = False
        start = self.query_one("#export-start", Button)
        start.disabled = False
        start.label = "Start"
        start.focus()

    def _finished(self, path: Path, frames: int, size: int) -> None:
        self.state = State.DONE
        self.frames, self.bytes_written = frames, size
        self.query_one("#export-progress", ProgressBar).update(total=max(size, 1), progress=max(size, 1))
        noun = "frame" if frames == 1 else "frames"
        self._message(f"wrote {frames} {noun} ({format_size(size)}) to {path}")
        self.query_one("#export-start", Button).display = False
        self.query_one("#export-cancel", Button).display = False
        close = self.query_one("#export-close", Button)
        close.display = True
        close.focus()

    # ---- leaving

    @on(Button.Pressed, "#export-close")
    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        if self.state is State.DONE:
            self.dismiss(self.path)
            return
        if self.state is State.RUNNING:
            self.workers.cancel_group(self, "export")
            if self.path is not None:  # the client renames only a complete download
                self.path.with_name(self.path.name + ".partial").unlink(missing_ok=True)
        self.dismiss(None)
