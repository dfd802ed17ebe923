"""Time ranges of ownership: who held an address (or a port, a container id...) from when to when.

Calls are tagged when they complete, often after the connection closed, and a pod's IP can belong to
another pod a few seconds after the first one is deleted. So an address does not map to *an* owner
but to owners over time: each `Span` is one holder over ``[start, end)`` (``end`` None while it
still holds it), and a lookup names the holder at the call's time.

Spans of objects that still exist are kept as long as the objects do. Ended spans are kept for
`History.keep_ns` after their end (long enough for the calls of that time to be tagged) and at most
`History.max_spans` of them, so churn (CronJobs, crash loops, autoscaling) cannot grow memory
without bound; both removals are counted.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from typing import Any


class Span:
    """One holder of a key over ``[start, end)``; `table` and `key` say where it is indexed."""

    __slots__ = ("end", "key", "start", "table", "value")

    def __init__(self, table: Table, key: Hashable, value: Any, start: int) -> None:
        self.table = table
        self.key = key
        self.value = value
        self.start = start
        self.end: int | None = None

    def covers(self, ts: int) -> bool:
        return self.start <= ts and (self.end is None or ts < self.end)

    def __repr__(self) -> str:  # for test failures and debugging
        return f"Span({self.table.name}[{self.key!r}] {self.start}..{self.end} {self.value!r})"


class Table:
    """key -> the spans that held it: one holder at a time, a few more while history keeps them.

    A key with one span maps to the span itself, not to a list of one: most keys (pod IPs,
    container ids) never have more, and a list would cost more memory than the span.
    """

    __slots__ = ("name", "spans")

    def __init__(self, name: str) -> None:
        self.name = name
        self.spans: dict[Hashable, Span | list[Span]] = {}

    def open(self, key: Hashable, value: Any, start: int) -> Span:
        span = Span(self, key, value, start)
        held = self.spans.get(key)
        if held is None:
            self.spans[key] = span
        elif isinstance(held, Span):
            self.spans[key] = [held, span]
        else:
            held.append(span)
        return span

    def remove(self, span: Span) -> None:
        held = self.spans.get(span.key)
        if held is span:
            del self.spans[span.key]
        elif isinstance(held, list):
            for i, s in enumerate(held):
                if s is span:
                    del held[i]
                    break
            if len(held) == 1:
                self.spans[span.key] = held[0]

    def all(self, key: Hashable) -> list[Span] | tuple[Span]:
        """Every span of ``key``, ended or not."""
        held = self.spans.get(key)
        if held is None:
            return []
        return (held,) if isinstance(held, Span) else held

    def at(self, key: Hashable, ts: int, lead: int = 0) -> Span | None:
        """The holder of ``key`` at ``ts``: of the spans covering it, the one that started last.

        With nothing covering ``ts``, a span starting at most ``lead`` later is taken: its start is
        when *we saw* the key taken (a pod's IP arrives in a status update after the pod got it), so
        a call a moment earlier most likely belongs to it already.
        """
        held = self.spans.get(key)
        if held is None:
            return None
        if isinstance(held, Span):  # the common case, kept short
            if held.start <= ts and (held.end is None or ts < held.end):
                return held
            return held if lead and ts < held.start <= ts + lead else None
        best: Span | None = None
        for s in held:
            if s.start <= ts and (s.end is None or ts < s.end) and (best is None or s.start > best.start):
                best = s
        if best is None and lead:
            for s in held:
                if ts < s.start <= ts + lead and (best is None or s.start < best.start):
                    best = s
        return best

    def covering(self, key: Hashable, ts: int) -> list[Span]:
        """Every span of ``key`` covering ``ts`` (keys that may have several holders at once)."""
        held = self.spans.get(key)
        if held is None:
            return []
        if isinstance(held, Span):
            return [held] if held.start <= ts and (held.end is None or ts < held.end) else []
        return [s for s in held if s.start <= ts and (s.end is None or ts < s.end)]

    def latest(self, key: Hashable) -> Span | None:
        """The span of ``key`` that started last, ended or not (for keys whose holder never changes)."""
        held = self.spans.get(key)
        if held is None or isinstance(held, Span):
            return held
        return max(held, key=lambda s: s.start)

    def __len__(self) -> int:
        return len(self.spans)


class History:
    """Ended spans, oldest end first, removed from their tables once they are no longer needed."""

    def __init__(self, keep_ns: int, max_spans: int) -> None:
        if keep_ns < 0 or max_spans < 1:
            raise ValueError("history keep time must be >= 0 and its size >= 1")
        self.keep_ns = keep_ns
        self.max_spans = max_spans
        self._ended: collections.deque[Span] = collections.deque()
        self.pruned = 0  # removed because older than keep_ns
        self.evicted = 0  # removed early because more than max_spans had ended

    def end(self, span: Span, ts: int) -> None:
        """End ``span`` at ``ts`` (never before its start); a span ends once."""
        if span.end is not None:
            return
        span.end = max(ts, span.start)
        self._ended.append(span)
        if len(self._ended) > self.max_spans:
            old = self._ended.popleft()
            old.table.remove(old)
            self.evicted += 1

    def prune(self, now: int) -> int:
        """Remove the spans that ended more than `keep_ns` before ``now``; how many were removed.

        Ends arrive in event order, which is close to time order; a span queued behind a later one
        waits for it, so removal can be late, never early.
        """
        cutoff = now - self.keep_ns
        ended = self._ended
        n = 0
        while ended and ended[0].end is not None and ended[0].end < cutoff:
            span = ended.popleft()
            span.table.remove(span)
            n += 1
        self.pruned += n
        return n

    def __len__(self) -> int:
        return len(self._ended)
