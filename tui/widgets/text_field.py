"""`TextField`: the text input every podshark screen uses.

It is Textual's `Input` with one difference: under a headless app (Pilot tests, snapshots) the
cursor does not blink. A blinking cursor toggles every 0.5 s, so a snapshot taken a little later on
a loaded machine shows it hidden instead of shown; a steady cursor makes the screen a function of
the app's state alone. In a real terminal it blinks as usual.
"""

from __future__ import annotations

from textual.widgets import Input


class TextField(Input):
    """An `Input` whose cursor is steady when the app runs headless."""

    def on_mount(self) -> None:
        if self.app.is_headless:
            self.cursor_blink = False
