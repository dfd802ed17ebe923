"""Where podshark keeps its own files for a user: one cache root for every command."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/podshark/<name>`` (``~/.cache/podshark/<name>`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "podshark" / name
