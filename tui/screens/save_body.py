"""Save a body to a file (`S` in the detail view): a small dialog with the side, a default path
like `./<id>-response.json`, and a refusal to overwrite an existing file until the user presses
Enter a second time for that same path.

The body written is the one the hub stores: decoded from Content-Encoding, exactly those bytes.
Writing happens in a thread worker (a megabyte on a slow disk must not freeze the UI); a failure
is shown in the dialog with the reason, and the dialog stays open to try another path.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from dissect.model import Call, Message
from tui.curl import sanitize
from tui.render.body import as_text, content_type, is_json_type, pretty_json
from tui.render.units import size
from tui.widgets.text_field import TextField

SIDES = ("request", "response")


def extension(message: Message | None) -> str:
    """`json` for a JSON body, `txt` for text, `bin` for anything else."""
    if message is None or not message.body:
        return "bin"
    ct = content_type(message)
    if ct.startswith("application/grpc"):
        return "bin"
    looks_json = is_json_type(ct) or message.body.lstrip()[:1] in (b"{", b"[")
    if looks_json and pretty_json(message.body, limit=1) is not None:
        return "json"
    return "txt" if as_text(message.body, ct, message.truncated) is not None else "bin"


def default_path(call: Call, side: str) -> str:
    """`./<id-sanitized>-<side>.<ext>` in the current directory."""
    message = call.request if side == "request" else call.response
    return f"./{sanitize(call.id)}-{side}.{extension(message)}"


def write_body(path: Path, body: bytes, overwrite: bool) -> None:
    """Write `body` to `path`; without `overwrite` an existing file is an error (`FileExistsError`)."""
    with path.open("wb" if overwrite else "xb") as f:
        f.write(body)


class SaveBodyDialog(ModalScreen[tuple[Path, int] | None]):
    """Dismisses with (path, bytes written), or None when cancelled."""

    CSS_PATH = "../detail.tcss"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, call: Call, side: str = "response") -> None:
        super().__init__()
        self.call = call
        self.side = side if side in SIDES else "response"
        self._confirm: Path | None = None  # the existing file the user was warned about
        self._edited = False

    def _message(self, side: str) -> Message | None:
        return self.call.request if side == "request" else self.call.response

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(f"Save a body of call {self.call.id}", style="bold"))
            with RadioSet(id="save-side"):
                for side in SIDES:
                    m = self._message(side)
                    what = "none" if m is None else size(len(m.body))
                    yield RadioButton(f"{side} body ({what})", value=side == self.side, id=f"side-{side}")
            yield TextField(default_path(self.call, self.side), id="save-path")
            yield Label(
                Text("Enter saves, Escape cancels; an existing file needs a second Enter", style="dim")
            )
            yield Static("", id="save-status")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#save-path", Input).focus()

    @property
    def status(self) -> Static:
        return self.query_one("#save-status", Static)

    @on(RadioSet.Changed, "#save-side")
    def _side_changed(self, event: RadioSet.Changed) -> None:
        pressed = event.pressed.id or ""
        self.side = pressed.removeprefix("side-")
        field = self.query_one("#save-path", Input)
        if not self._edited:  # follow the side until the user typed a path of their own
            field.value = default_path(self.call, self.side)
            self._edited = False
        self._confirm = None
        self.status.update("")

    @on(Input.Changed, "#save-path")
    def _path_changed(self, event: Input.Changed) -> None:
        if event.value != default_path(self.call, self.side):
            self._edited = True
        self._confirm = None

    @on(Input.Submitted, "#save-path")
    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        message = self._message(self.side)
        if message is None or not message.body:
            self.status.update(Text(f"the {self.side} has no body to save", style="bold red"))
            return
        text = self.query_one("#save-path", Input).value.strip()
        if not text:
            self.status.update(Text("type a file path", style="bold red"))
            return
        path = Path(text).expanduser()
        if path.is_dir():
            self.status.update(Text(f"{path} is a directory: add a file name", style="bold red"))
            return
        overwrite = False
        if path.exists():
            if self._confirm != path:
                self._confirm = path
                self.status.update(
                    Text(
                        f"{path} exists: press Enter again to overwrite it, or change the path",
                        style="yellow",
                    )
                )
                return
            overwrite = True
        self.run_worker(self._write(path, message.body, overwrite), group="save", exclusive=True)

    async def _write(self, path: Path, body: bytes, overwrite: bool) -> None:
        self.status.update(Text(f"writing {size(len(body))} to {path}…", style="dim"))
        try:
            await asyncio.to_thread(write_body, path, body, overwrite)
        except FileExistsError:
            self._confirm = path
            self.status.update(
                Text(f"{path} appeared meanwhile: press Enter again to overwrite it", style="yellow")
            )
            return
        except OSError as e:
            self.status.update(Text(f"cannot write {path}: {e.strerror or e}", style="bold red"))
            return
        self.dismiss((path, len(body)))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
