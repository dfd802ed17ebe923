"""Live call ids: ``<node>/<ULID>``, unique across the cluster and time, sortable by time.

The design (../shared/design.md, "One record end to end") asks that a restarted worker never reuses
an id and that ids sort by time. A ULID gives both: 48 bits of Unix milliseconds, then 80 random
bits, written as 26 characters of Crockford base32 (https://github.com/ulid/spec), so the string
order is the time order.

Uniqueness without coordination: the random part is drawn from ``os.urandom`` whenever the
millisecond changes, so two processes (two capture processes on one node, or a worker and its
restarted self) collide only if 80 random bits do. Within one millisecond the previous random part
is incremented instead of redrawn (the spec's monotonic mode), which keeps ids strictly increasing
in the order they were made even at 10k+ calls a millisecond. A forked child starts over with its
own random draw (`os.register_at_fork`), so a fork cannot replay its parent's sequence.

Clock steps: if the wall clock goes backwards (NTP), the generator stays on the last millisecond it
used and keeps incrementing, so ids never go backwards; if the 80-bit counter would overflow within
one millisecond (it cannot in practice: the counter starts at a random point and would need ~2^79
ids), it borrows the next millisecond. Either way an id's timestamp may run slightly ahead of the
wall clock, never behind the previous id.

Speed: consecutive ids share all but their last few characters, so the text of the high bits is
cached and the last four characters (the low 20 bits) are two table lookups; the full encoding (one
``base64.b32encode`` and a translation into the Crockford alphabet) runs once per millisecond or
carry. About a microsecond per id.
"""

from __future__ import annotations

import base64
import os
import time
import weakref
from collections.abc import Callable

__all__ = ["ULID_LENGTH", "CallIds", "new_ulid", "run_id"]

ULID_LENGTH = 26
_RANDOM_BITS = 80
_RANDOM_LIMIT = 1 << _RANDOM_BITS
_MAX_MS = (1 << 48) - 1
# RFC 4648 base32 and Crockford's base32 both map 5 bits to one character, in different alphabets:
# encoding with the former and translating gives the latter.
_TO_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _encode(ms: int, rand: int) -> str:
    """The 26-character ULID text of a (48-bit ms, 80-bit random) pair.

    128 bits make 26 base32 characters with two spare leading zero bits (130 bits); shifted left by
    30 they fill 20 bytes, which base32 writes as 32 characters of which the first 26 are the ULID.
    """
    raw = (((ms << _RANDOM_BITS) | rand) << 30).to_bytes(20, "big")
    return base64.b32encode(raw)[:ULID_LENGTH].translate(_TO_CROCKFORD).decode("ascii")


# the two Crockford characters of every 10-bit value: the last four characters of an id are two lookups
_PAIRS = tuple(_encode(0, v)[-2:] for v in range(1024))


def _random80() -> int:
    return int.from_bytes(os.urandom(10), "big")


class _Generator:
    """Monotonic ULIDs for one process, each prefixed with ``prefix`` (``"<node>/"`` or empty).

    State: the last millisecond used and its random part. Consecutive ids differ only in their
    last few characters, so the text of everything but the low 20 bits (the last 4 characters) is
    cached and only those are looked up per id.
    """

    def __init__(self, prefix: str = "", clock: Callable[[], int] = time.time_ns) -> None:
        self._prefix = prefix
        self._clock = clock
        self._ms = -1
        self._rand = 0
        self._high = -1  # (ms, rand) >> 20 whose text is in _head
        self._head = ""
        _LIVE.add(self)

    def reseed(self) -> None:
        """Forget the state, so the next id draws fresh randomness (called in a forked child)."""
        self._ms = -1
        self._rand = 0
        self._high = -1

    def next(self) -> str:
        ms = self._clock() // 1_000_000
        if ms > self._ms:
            if ms > _MAX_MS:
                raise ValueError(f"clock reads {ms} ms since 1970: beyond the 48-bit ULID range")
            self._ms = ms
            self._rand = rand = _random80()
        else:  # same millisecond, or the clock stepped back: stay monotonic
            self._rand = rand = self._rand + 1
            if rand >= _RANDOM_LIMIT:
                self._ms += 1
                self._rand = rand = _random80()
        high = (self._ms << 60) | (rand >> 20)
        if high != self._high:
            self._high = high
            self._head = self._prefix + _encode(self._ms, rand)[:-4]
        return self._head + _PAIRS[(rand >> 10) & 1023] + _PAIRS[rand & 1023]


# Every live generator, so a forked child can reseed them all before it makes its first id.
_LIVE: weakref.WeakSet[_Generator] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for gen in list(_LIVE):
        gen.reseed()


os.register_at_fork(after_in_child=_after_fork_in_child)

_PROCESS = _Generator()


def new_ulid() -> str:
    """A fresh ULID from this process's monotonic generator."""
    return _PROCESS.next()


def run_id() -> str:
    """A unique id of this worker run (a ULID); flow ids are ``<node>/<run>/f<n>``.

    Flow ids must not repeat across restarts (the hub joins calls to spooled packets by flow id),
    and the engine numbers flows from 1 in each run: the run id keeps them apart.
    """
    return _PROCESS.next()


class CallIds:
    """``ids(n) -> "<node>/<ULID>"``: the engine's ``call_id`` hook for live capture.

    The engine passes its running call index ``n``; a live id does not need it (the ULID is unique
    on its own), so it is ignored. ``clock`` (ns since the epoch) exists for tests of clock steps.
    """

    __slots__ = ("_next",)

    def __init__(self, node: str, *, clock: Callable[[], int] = time.time_ns) -> None:
        if not node or "/" in node:
            raise ValueError(f"node name {node!r} must be non-empty and without '/' (ids are <node>/<ULID>)")
        self._next = _Generator(node + "/", clock).next

    def __call__(self, n: int) -> str:
        return self._next()
