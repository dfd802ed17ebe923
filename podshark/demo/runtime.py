"""What every demo service process does first: name itself, tie its life to the demo, say it is ready.

- Process name: ``prctl(PR_SET_NAME)`` sets ``/proc/PID/comm`` to the service name, so process
  identity shows ``frontend`` or ``inventory`` instead of ``python3``. It is called before any
  thread starts, because threads inherit the name of the thread that creates them.
- Lifeline: a service must not outlive the demo that started it (a SIGKILLed demo cannot stop it,
  and a loadgen left running would keep hammering a dead frontend). A daemon thread watches the
  parent pid and, when the parent changes, runs the hooks registered with `on_orphaned` (the dns
  service ends its dnsmasq there) and ends the process. ``PR_SET_PDEATHSIG`` is not used: it fires
  when the *thread* that forked the child exits (the demo may be started from a short-lived
  thread), and the kernel clears it when a program changes its credentials, as dnsmasq does when it
  drops capabilities.
- Readiness: a service touches ``<workdir>/ready/<name>`` once it serves (its socket is bound and
  listening); the demo polls for those files. Files, not pipes: a pipe nobody reads fills up and
  blocks the writer.
- Release: loadgen, once its first request went through, waits for ``<workdir>/go`` before it sends
  the steady traffic, so a caller can start capturing first and see every conversation from its
  beginning (`podshark.demo.workload.Demo.start` with ``hold_traffic``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_NAME = 15
LIFELINE_INTERVAL = 0.5
_orphan_hooks: list[Callable[[], None]] = []


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def set_process_name(name: str) -> bool:
    """Set this thread's (and so, called first thing, the process's) comm; False when prctl failed."""
    libc = _libc()
    if libc is None:
        return False
    raw = name.encode()[:15] + b"\x00"
    return bool(libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) == 0)


def on_orphaned(hook: Callable[[], None]) -> None:
    """Run `hook` (from the lifeline thread) before the process ends because the demo is gone."""
    _orphan_hooks.append(hook)


def start_lifeline(parent: int) -> None:
    """End this process (after the `on_orphaned` hooks) once its parent is no longer `parent`."""
    if os.getppid() != parent:
        _orphaned()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(LIFELINE_INTERVAL)
        _orphaned()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _orphaned() -> None:
    for hook in list(_orphan_hooks):
        with contextlib.suppress(Exception):
            hook()
    os._exit(0)


def mark_ready(workdir: Path, name: str) -> None:
    """Tell the demo this service serves (atomically: the file appears complete or not at all)."""
    ready = workdir / "ready"
    ready.mkdir(exist_ok=True)
    tmp = ready / f".{name}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(ready / name)


GO_FILE = "go"


class Lifecycle:
    """What a service's ``serve(cfg, life)`` reports to the demo, and when it may go on."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir
        self.name = name

    def ready(self) -> None:
        mark_ready(self.workdir, self.name)

    def wait_released(self, poll: float = 0.05) -> None:
        """Block until the demo releases the traffic (``<workdir>/go`` exists)."""
        while not (self.workdir / GO_FILE).exists():
            time.sleep(poll)


def release(workdir: Path) -> None:
    """Let loadgen send its traffic (see `Lifecycle.wait_released`)."""
    (workdir / GO_FILE).touch()


def log(name: str, message: str) -> None:
    """One line on stderr (the demo sends it to ``<workdir>/logs/<name>.log``)."""
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} {name}[{os.getpid()}]: {message}", file=sys.stderr, flush=True)
