"""Where the capture pipelines run: one thread in the worker (`InThread`) or N processes (`capture.fanout`).

Both look the same to the worker: interfaces are opened and closed by name, finished calls come back
through ``on_calls`` (on a capture thread: the callback must be quick and thread-safe), and a stats
snapshot is refreshed about once a second by whoever drives the pipeline (a ring's kernel counters
reset when read, so only the driving thread may read them).

The thread is enough while one core keeps up (see BENCHMARKS.md for the figure on this machine);
past that, `--procs N` fans the interfaces out by flow hash into N processes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from capture.pipeline import Pipeline, PipelineConfig
from dissect.model import Call

OnCalls = Callable[[list[Call]], None]
STATS_EVERY = 1.0


class Backend(Protocol):
    def start(self, on_calls: OnCalls) -> None: ...
    def open(self, ifname: str) -> str | None: ...
    def close(self, ifname: str) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def stop(self) -> None: ...


class InThread:
    """One pipeline driven by one thread of the worker process."""

    def __init__(self, config: PipelineConfig) -> None:
        self.pipeline = Pipeline(config)
        self._commands: queue.Queue[tuple[str, str, queue.Queue[str | None] | None]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats: dict[str, Any] = {}
        self._on_calls: OnCalls = lambda calls: None

    def start(self, on_calls: OnCalls) -> None:
        self._on_calls = on_calls
        self._thread = threading.Thread(target=self._loop, name="podshark-capture", daemon=True)
        self._thread.start()

    def open(self, ifname: str) -> str | None:
        """Open ``ifname`` on the capture thread (rings belong to it); wait for the outcome."""
        if self._thread is None or not self._thread.is_alive():
            return self.pipeline.open(ifname)
        reply: queue.Queue[str | None] = queue.Queue()
        self._commands.put(("open", ifname, reply))
        try:
            return reply.get(timeout=10)
        except queue.Empty:
            return f"{ifname}: the capture thread did not answer"

    def close(self, ifname: str) -> None:
        self._commands.put(("close", ifname, None))

    def stats(self) -> dict[str, Any]:
        return self._stats

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        pipe = self.pipeline
        pipe.start_tls()  # on this thread: the engine it feeds is this thread's
        next_stats = 0.0
        while not self._stop.is_set():
            while not self._commands.empty():
                cmd, ifname, reply = self._commands.get_nowait()
                if cmd == "open":
                    err = pipe.open(ifname)
                    if reply is not None:
                        reply.put(err)
                else:
                    pipe.close_iface(ifname)
            calls = pipe.step(0.05)
            if calls:
                self._on_calls(calls)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_EVERY
                self._stats = pipe.stats()
        self._stats = pipe.stats()
        calls = pipe.finish()
        if calls:
            self._on_calls(calls)
