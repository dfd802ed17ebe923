"""Live call ids (`capture.ids`): ``<node>/<ULID>``, checked against the python-ulid package.

The oracle for the format is python-ulid (`ulid.ULID.from_str` parses our text and gives back the
timestamp); the expected milliseconds come from the clock read around each call, and uniqueness
from sets, never from our own encoder.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from typing import Any

import pytest
import ulid

from capture.ids import ULID_LENGTH, CallIds, new_ulid, run_id

CROCKFORD = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def _ulid(call_id: str, node: str = "node-a") -> ulid.ULID:
    prefix, _, text = call_id.partition("/")
    assert prefix == node
    assert CROCKFORD.match(text), text
    parsed = ulid.ULID.from_str(text)
    assert str(parsed) == text  # canonical form: python-ulid writes it back identically
    return parsed


def test_format_and_timestamp_agree_with_python_ulid() -> None:
    ids = CallIds("node-a")
    for _ in range(2000):
        before = time.time_ns() // 1_000_000
        cid = ids(1)
        after = time.time_ns() // 1_000_000
        assert len(cid) == len("node-a/") + ULID_LENGTH
        assert before <= _ulid(cid).milliseconds <= after


def test_python_ulid_timestamps_read_back_from_an_injected_clock() -> None:
    # fixed instants, including the extremes of the 48-bit range
    for ms in (0, 1, 1_763_700_000_123, (1 << 48) - 1):
        ids = CallIds("n", clock=lambda ms=ms: ms * 1_000_000 + 999_999)
        parsed = _ulid(ids(1), "n")
        assert parsed.milliseconds == ms
        # the random part is 80 bits drawn per millisecond: not all zero in practice
        assert int(parsed) & ((1 << 80) - 1) != 0


def test_beyond_the_48_bit_range_is_a_clear_error() -> None:
    ids = CallIds("n", clock=lambda: (1 << 48) * 1_000_000)
    with pytest.raises(ValueError, match="48-bit"):
        ids(1)


def test_sortable_by_time_and_monotonic_within_a_millisecond() -> None:
    ids = CallIds("node-a")
    made = []
    for _ in range(5):
        made += [ids(i) for i in range(3000)]
        time.sleep(0.003)
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    stamps = [_ulid(c).milliseconds for c in made]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) > 5  # spans several milliseconds, so the order is not one ms's counter alone
    # within one millisecond the 80-bit random part counts up by one
    rand = [int(_ulid(c)) & ((1 << 80) - 1) for c in made]
    same_ms = [(a, b) for a, b, sa, sb in zip(rand, rand[1:], stamps, stamps[1:]) if sa == sb]
    assert same_ms and all(b == a + 1 for a, b in same_ms)


def test_clock_stepping_back_never_makes_an_id_go_backwards() -> None:
    now = [5_000 * 1_000_000]
    ids = CallIds("n", clock=lambda: now[0])
    first = ids(1)
    now[0] -= 2_000 * 1_000_000  # NTP steps the clock back two seconds
    later = [ids(i) for i in range(100)]
    assert [first, *later] == sorted([first, *later])
    assert len(set([first, *later])) == 101
    assert {_ulid(c, "n").milliseconds for c in later} == {5_000}
    now[0] += 10_000 * 1_000_000  # and forward again: ids follow the clock
    assert _ulid(ids(1), "n").milliseconds == 13_000


def test_random_part_overflow_borrows_the_next_millisecond() -> None:
    ids = CallIds("n", clock=lambda: 7_000_000)
    ids(1)
    gen = ids._next.__self__  # type: ignore[attr-defined]  # white box: put the counter at its top
    gen._rand = (1 << 80) - 2
    a, b, c = ids(1), ids(1), ids(1)
    assert a < b < c
    assert _ulid(a, "n").milliseconds == 7 and int(_ulid(a, "n")) & ((1 << 80) - 1) == (1 << 80) - 1
    assert _ulid(b, "n").milliseconds == 8
    assert _ulid(c, "n").milliseconds == 8


def test_unique_over_a_million() -> None:
    ids = CallIds("node-a")
    made = {ids(i) for i in range(1_000_000)}
    assert len(made) == 1_000_000


def _make_ids(node: str, n: int, go: Any, queue: multiprocessing.Queue[list[str]]) -> None:
    ids = CallIds(node)
    go.wait(60)  # both processes start together, so they share milliseconds
    queue.put([ids(i) for i in range(n)])


def _spawn_pair(method: str, n: int) -> tuple[list[str], list[str]]:
    ctx = multiprocessing.get_context(method)
    queue: multiprocessing.Queue[list[str]] = ctx.Queue()
    go = ctx.Barrier(2)
    procs = [ctx.Process(target=_make_ids, args=("node-a", n, go, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=120), queue.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return got[0], got[1]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_two_processes_with_the_same_node_name_never_collide(method: str) -> None:
    # Same node name, same milliseconds (they run concurrently): only the random part keeps them apart.
    a, b = _spawn_pair(method, 100_000)
    assert len(set(a)) == len(a) and len(set(b)) == len(b)
    assert not set(a) & set(b)
    overlap = {_ulid(x).milliseconds for x in a} & {_ulid(x).milliseconds for x in b}
    assert overlap, "the two processes should have shared some milliseconds for this test to mean anything"


def test_a_forked_child_does_not_replay_its_parents_sequence() -> None:
    # The parent has made ids in this millisecond; a fork copies that state. The child must redraw.
    now = [42 * 1_000_000]
    ids = CallIds("n", clock=lambda: now[0])
    ids(1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same frozen clock, same copied state
        try:
            os.write(write, "\n".join(ids(i) for i in range(1000)).encode())
        finally:
            os._exit(0)
    os.close(write)
    parent = [ids(i) for i in range(1000)]
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    child = b"".join(chunks).decode().split("\n")
    assert len(child) == 1000
    assert not set(parent) & set(child)


def test_run_id_is_a_ulid_unique_per_call() -> None:
    before = time.time_ns() // 1_000_000
    runs = [run_id() for _ in range(1000)] + [new_ulid() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    assert len(set(runs)) == len(runs)
    for r in runs:
        assert CROCKFORD.match(r)
        assert before <= ulid.ULID.from_str(r).milliseconds <= after


@pytest.mark.parametrize("bad", ["", "a/b"])
def test_bad_node_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="node name"):
        CallIds(bad)
