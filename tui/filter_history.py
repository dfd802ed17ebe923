"""The history of applied filters, walked with up/down in the filter bar.

Kept in memory, newest last, without repeats (applying an old filter again moves it to the end),
at most `limit` entries. With a `path` it is also loaded from and appended to a file (one filter a
line; by default `$XDG_STATE_HOME/podshark/filter_history`, i.e. ~/.local/state/...), rewritten
when it grows past twice the limit so the file stays bounded. A file that cannot be read or
written only costs the persistence, never the TUI: the error is remembered in `problem`.
"""

from __future__ import annotations

import os
from pathlib import Path

LIMIT = 200


def default_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "podshark" / "filter_history"


class FilterHistory:
    def __init__(self, path: Path | None = None, limit: int = LIMIT) -> None:
        self.path = path
        self.limit = limit
        self.entries: list[str] = []
        self.problem: str | None = None
        self._pos: int | None = None  # index while walking; None = not walking
        self._draft = ""
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with path.open(encoding="utf-8", errors="replace") as f:
                lines = [line.rstrip("\n") for line in f]
        except FileNotFoundError:
            return
        except OSError as e:
            self.problem = f"cannot read the filter history {path}: {e.strerror or e}"
            return
        for line in lines:
            if line.strip():
                self._remember(line)

    def _remember(self, text: str) -> None:
        if text in self.entries:
            self.entries.remove(text)
        self.entries.append(text)
        del self.entries[: -self.limit]

    def add(self, text: str) -> None:
        """Remember an applied filter (empty text and multi-line text are not kept)."""
        self._pos = None
        text = text.strip()
        if not text or "\n" in text:
            return
        self._remember(text)
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(text + "\n")
            if self.path.stat().st_size > 2 * self.limit * 200:
                self._rewrite(self.path)
        except OSError as e:
            self.problem = f"cannot write the filter history {self.path}: {e.strerror or e}"

    def _rewrite(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(e + "\n" for e in self.entries), encoding="utf-8")
        tmp.replace(path)

    def previous(self, current: str) -> str | None:
        """The entry before the one shown (up); the first step remembers `current` as the draft
        that `next` returns to. None when there is nothing older."""
        if not self.entries:
            return None
        if self._pos is None:
            self._draft = current
            self._pos = len(self.entries)
        if self._pos == 0:
            return None
        self._pos -= 1
        return self.entries[self._pos]

    def next(self) -> str | None:
        """The entry after the one shown (down); past the newest, the draft. None when not walking."""
        if self._pos is None:
            return None
        self._pos += 1
        if self._pos >= len(self.entries):
            self._pos = None
            return self._draft
        return self.entries[self._pos]

    def reset(self) -> None:
        """Stop walking (the user typed, applied or cancelled)."""
        self._pos = None
