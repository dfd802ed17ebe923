"""The packet spool (`capture.spool`): bounded, time-indexed raw frames on the node.

Expected values come from construction: what a test added (kept in a plain list) filtered by brute
force, and the byte sizes of the files the kernel reports. Nothing is compared with the spool's own
earlier output except where a test is about restarts (the same frames must come back).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import signal
import struct
import tempfile
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture.spool import MAX_FRAME, PacketSpool, SpoolReadStats, read_spool

Frame = tuple[int, int, int, bytes, str]  # (ts, linktype, orig_len, data, flow_id), as read_spool yields

SMALL = {"max_bytes": 1 << 30, "segment_bytes": 8192 + 4096 * 4, "flush_bytes": 4096}


def _add(spool: PacketSpool, frames: Iterable[Frame]) -> None:
    for ts, linktype, orig_len, data, flow in frames:
        spool.add(ts, linktype, data, orig_len, flow)


def _expected(
    frames: list[Frame], lo: int | None, hi: int | None, flows: Iterable[str] | None
) -> list[Frame]:
    """Brute force: the frames in the window and flow set, stably sorted by time."""
    wanted = None if flows is None else set(flows)
    keep = [
        f
        for f in frames
        if (lo is None or f[0] >= lo) and (hi is None or f[0] <= hi) and (wanted is None or f[4] in wanted)
    ]
    return sorted(keep, key=lambda f: f[0])


def _segment_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".pks", ".open"))


def _disk_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in _segment_files(directory))


def _frames(
    rnd: random.Random, n: int, flows: int = 8, start: int = 1_700_000_000_000_000_000
) -> list[Frame]:
    out = []
    ts = start
    for _ in range(n):
        ts += rnd.randint(0, 2_000_000)
        data = rnd.randbytes(rnd.randint(40, 400))
        out.append(
            (ts, 1, len(data) + rnd.choice((0, 0, 0, 100)), data, f"node-a/run/f{rnd.randrange(flows)}")
        )
    return out


# -- round trip --------------------------------------------------------------------------------------

_frame = st.tuples(
    st.integers(0, 400),  # time step (may go backwards: see below)
    st.sampled_from([1, 101, 276]),
    st.integers(0, 70_000),  # bytes cut off (orig_len beyond the data)
    st.binary(max_size=600),
    st.sampled_from([f"n/r/f{i}" for i in range(6)] + ["ünïcode/flow", ""]),
    st.booleans(),  # flush after this frame
    st.booleans(),  # this frame is late (a timestamp behind the previous one)
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    ops=st.lists(_frame, max_size=120),
    window=st.tuples(st.none() | st.integers(-100, 30_000), st.none() | st.integers(-100, 30_000)),
    flows=st.none() | st.sets(st.sampled_from([f"n/r/f{i}" for i in range(7)] + ["ünïcode/flow", ""])),
    close=st.booleans(),
)
def test_round_trip_equals_brute_force(
    ops: list[tuple[int, int, int, bytes, str, bool, bool]],
    window: tuple[int | None, int | None],
    flows: set[str] | None,
    close: bool,
) -> None:
    added: list[Frame] = []
    ts = 1000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spool = PacketSpool(root / "w0", segment_seconds=0.000_002, **SMALL)  # 2 µs: rotate by time too
        try:
            for step, linktype, cut, data, flow, flush, late in ops:
                ts += step
                at = ts - 700 if late else ts
                spool.add(at, linktype, data, len(data) + cut, flow)
                added.append((at, linktype, len(data) + cut, data, flow))
                if flush:
                    spool.flush()
            spool.flush()
            if close:  # sealed segments: read through their index; else the open one is walked
                spool.close()
            stats = SpoolReadStats()
            got = list(read_spool(root, window[0], window[1], flows, stats=stats))
            assert got == _expected(added, window[0], window[1], flows)
            assert stats.corrupt == 0 and stats.torn == 0 and stats.vanished == 0
            assert stats.frames == len(got)
        finally:
            spool.close()


def test_big_and_cut_frames_round_trip(tmp_path: Path) -> None:
    rnd = random.Random(7)
    gso = [
        (1_000 + i, 1, size + extra, rnd.randbytes(size), f"n/r/f{i % 3}")
        for i, (size, extra) in enumerate([(65_536 + 66, 0), (1500, 64_000), (0, 60), (200_000, 0), (64, 0)])
    ]
    with PacketSpool(tmp_path / "w", segment_bytes=16 << 20, max_bytes=64 << 20) as spool:
        _add(spool, gso)
        huge = rnd.randbytes(MAX_FRAME + 5000)
        spool.add(2_000, 1, huge, len(huge), "n/r/huge")
        spool.flush()
        assert spool.stats()["cut_frames"] == 1
    got = list(read_spool(tmp_path, None, None, None))
    assert got[:-1] == gso
    # a frame longer than the spool keeps is cut, its original length kept (as a snap length would)
    assert got[-1] == (2_000, 1, len(huge), huge[:MAX_FRAME], "n/r/huge")


def test_flow_set_and_window_skip_segments_without_reading_them(tmp_path: Path) -> None:
    # Each flush ends a segment (segment_seconds is 1 ns), so segment k holds exactly flow k's frames.
    rnd = random.Random(3)
    added = []
    with PacketSpool(tmp_path / "w", segment_seconds=1e-9, **SMALL) as spool:
        for k in range(10):
            batch = [(k * 1000 + i, 1, 60, rnd.randbytes(60), f"n/r/f{k}") for i in range(5)]
            _add(spool, batch)
            spool.flush()
            added += batch
    assert len(_segment_files(tmp_path / "w")) == 10
    stats = SpoolReadStats()
    got = list(read_spool(tmp_path, None, None, ["n/r/f4", "n/r/f7"], stats=stats))
    assert got == _expected(added, None, None, ["n/r/f4", "n/r/f7"])
    assert (stats.segments, stats.segments_skipped, stats.blocks) == (10, 8, 2)
    stats = SpoolReadStats()
    got = list(read_spool(tmp_path, 3000, 5004, None, stats=stats))
    assert got == _expected(added, 3000, 5004, None)
    assert (stats.segments_skipped, stats.blocks) == (7, 3)  # 0-2 and 6-9 by their names alone
    assert list(read_spool(tmp_path, None, None, [])) == []  # no flows asked for: nothing


# -- bounds ------------------------------------------------------------------------------------------


def test_eviction_keeps_bytes_under_the_bound_and_drops_the_oldest_first(tmp_path: Path) -> None:
    bound = 96 << 10
    rnd = random.Random(11)
    frames = _frames(rnd, 3000)
    directory = tmp_path / "w"
    with PacketSpool(directory, max_bytes=bound, segment_bytes=24 << 10, flush_bytes=4096) as spool:
        for i, f in enumerate(frames):
            _add(spool, [f])
            if i % 50 == 0:
                spool.flush()
                on_disk = _disk_bytes(directory)
                assert on_disk <= bound
                assert spool.stats()["bytes"] == on_disk
        spool.flush()
        stats = spool.stats()
        assert stats["evicted_segments"] > 0
        assert stats["frames"] + stats["evicted_frames"] == len(frames) == stats["added_frames"]
        assert stats["segments"] == len(_segment_files(directory))
        kept = list(read_spool(tmp_path, None, None, None))
        # the newest frames survive, in full, and nothing older than the oldest kept one
        assert kept == frames[len(frames) - len(kept) :]
        assert stats["oldest_ts"] == kept[0][0]
        assert stats["bytes"] > bound // 2  # it used the room it had
    assert _disk_bytes(directory) <= bound


def test_segment_count_is_bounded_too(tmp_path: Path) -> None:
    with PacketSpool(tmp_path, segment_seconds=1e-9, max_segments=5, **SMALL) as spool:
        for k in range(20):
            spool.add(k, 1, b"x" * 10, 10, "f")
            spool.flush()
            assert len(_segment_files(tmp_path)) <= 5
        assert spool.stats()["evicted_segments"] == 15
    assert [f[0] for f in read_spool(tmp_path, None, None, None)] == list(range(15, 20))


def test_restart_reuses_the_directory_within_a_new_bound(tmp_path: Path) -> None:
    rnd = random.Random(5)
    first, second = _frames(rnd, 400), _frames(rnd, 100, start=1_800_000_000_000_000_000)
    directory = tmp_path / "w"
    with PacketSpool(directory, **SMALL) as spool:
        _add(spool, first)
    assert list(read_spool(tmp_path, None, None, None)) == first
    with PacketSpool(directory, **SMALL) as spool:
        assert spool.stats()["frames"] == len(first)
        _add(spool, second)
    assert list(read_spool(tmp_path, None, None, None)) == first + second
    # a restart with a smaller bound evicts the oldest segments at once
    bound = 48 << 10
    with PacketSpool(directory, max_bytes=bound, segment_bytes=24 << 10, flush_bytes=4096) as spool:
        assert _disk_bytes(directory) <= bound
        assert spool.stats()["evicted_segments"] > 0
    kept = list(read_spool(tmp_path, None, None, None))
    assert kept and kept == (first + second)[-len(kept) :]


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    with PacketSpool(tmp_path, **SMALL), pytest.raises(RuntimeError, match="its own directory"):
        PacketSpool(tmp_path, **SMALL)
    with PacketSpool(tmp_path, **SMALL) as spool:  # released on close
        spool.add(1, 1, b"x", 1, "f")
    with pytest.raises(RuntimeError, match="closed"):
        spool.add(2, 1, b"y", 1, "f")
    assert list(read_spool(tmp_path, None, None, None)) == [(1, 1, 1, b"x", "f")]


def test_impossible_sizes_are_refused_with_what_to_use() -> None:
    with pytest.raises(ValueError, match="at least"):
        PacketSpool(Path("/nonexistent"), max_bytes=1 << 20, segment_bytes=1 << 20)
    with pytest.raises(ValueError, match="at least"):
        PacketSpool(Path("/nonexistent"), segment_bytes=1 << 20, flush_bytes=1 << 20)


# -- several writers ---------------------------------------------------------------------------------


def test_two_writer_directories_merge_in_time_order(tmp_path: Path) -> None:
    rnd = random.Random(9)
    a = _frames(rnd, 500, flows=3)
    b = [(ts + rnd.choice((0, 1, -1)), lt, ol, d, fl.replace("node-a", "node-a2")) for ts, lt, ol, d, fl in a]
    b.sort(key=lambda f: f[0])
    with PacketSpool(tmp_path / "cap0", **SMALL) as s0, PacketSpool(tmp_path / "cap1", **SMALL) as s1:
        for x, y in zip(a, b):  # interleaved, as two fanout members would write
            _add(s0, [x])
            _add(s1, [y])
        s0.flush()
        s1.flush()
        got = list(read_spool(tmp_path, None, None, None))
    # ties (equal timestamps, which the ±1 ns above makes common) go to the first directory
    assert got == sorted(a + b, key=lambda f: f[0])
    lo, hi = a[100][0], a[300][0]
    flows = {"node-a/run/f1", "node-a2/run/f2"}
    assert list(read_spool(tmp_path, lo, hi, flows)) == _expected(a + b, lo, hi, flows)


# -- damage ------------------------------------------------------------------------------------------


def test_torn_tail_is_ignored_and_recovered_on_restart(tmp_path: Path) -> None:
    rnd = random.Random(1)
    frames = _frames(rnd, 200)
    directory = tmp_path / "w"
    spool = PacketSpool(directory, **SMALL)
    _add(spool, frames)
    spool.flush()
    (open_seg,) = [p for p in _segment_files(directory) if p.suffix == ".open"]
    # a block cut mid-write: a header that promises more bytes than follow
    header = struct.pack("<4sHHIIIqqI", b"PSKB", 1, 0, 8, 5000, 3, 1, 2, 0)
    with open(open_seg, "ab") as f:
        f.write(header + b"\x01\x00\x00\x00\x00\x00" + b"partial frame bytes")
    stats = SpoolReadStats()
    assert list(read_spool(tmp_path, None, None, None, stats=stats)) == frames
    assert stats.torn == 1 and stats.corrupt == 0
    # the writer "crashes" (never closed: its files and lock die with it) and a new one takes over
    assert spool._active is not None
    os.close(spool._active.fd)
    os.close(spool._lock_fd)
    spool._closed = True
    again = PacketSpool(directory, **SMALL)
    assert again.stats()["recovered_segments"] == 1
    assert all(p.suffix == ".pks" for p in _segment_files(directory))
    more = _frames(rnd, 50, start=frames[-1][0] + 1)
    _add(again, more)
    again.close()
    stats = SpoolReadStats()
    assert list(read_spool(tmp_path, None, None, None, stats=stats)) == frames + more
    assert stats.torn == 0 and stats.corrupt == 0


def _crash_after_writing(directory: str, frames: list[Frame]) -> None:
    spool = PacketSpool(Path(directory), **SMALL)
    _add(spool, frames)
    spool.flush()
    os._exit(0)  # no close: the open segment has no index, as after a crash


def test_a_crashed_writer_process_leaves_a_readable_spool(tmp_path: Path) -> None:
    frames = _frames(random.Random(2), 300)
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_crash_after_writing, args=(str(tmp_path / "w"), frames))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert any(p.suffix == ".open" for p in _segment_files(tmp_path / "w"))
    assert list(read_spool(tmp_path, None, None, None)) == frames
    with PacketSpool(tmp_path / "w", **SMALL) as spool:
        assert spool.stats()["frames"] == len(frames)
    assert list(read_spool(tmp_path, None, None, None)) == frames


def _valid_block(frames: list[tuple[int, bytes, int]], flows: list[str], tamper: int = 0) -> bytes:
    """A block built by hand from the documented layout; ``tamper`` shifts each frame's flow index."""
    table = struct.pack("<I", len(flows)) + b"".join(struct.pack("<H", len(f)) + f.encode() for f in flows)
    payload = b"".join(struct.pack("<qHIII", ts, 1, len(d), len(d), fl + tamper) + d for ts, d, fl in frames)
    head = struct.pack(
        "<4sHHIIIqq", b"PSKB", 1, 0, len(table), len(payload), len(frames), frames[0][0], frames[-1][0]
    )
    crc = zlib.crc32(payload, zlib.crc32(table, zlib.crc32(head)))
    return head + struct.pack("<I", crc) + table + payload


def test_garbage_and_hostile_files_are_skipped_with_counted_warnings(tmp_path: Path) -> None:
    rnd = random.Random(4)
    good = _frames(rnd, 100)
    w = tmp_path / "w"
    with PacketSpool(w, **SMALL) as spool:
        _add(spool, good)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "0000000001_0_99999999999999999999.pks").write_bytes(rnd.randbytes(5000))  # noise, sealed name
    (evil / "0000000002.open").write_bytes(b"\0" * 4096)  # zeros (delayed allocation after a crash)
    # a block header that claims 100 MiB of table
    (evil / "0000000003.open").write_bytes(
        struct.pack("<4sHHIIIqqI", b"PSKB", 1, 0, 100 << 20, 0, 0, 0, 0, 0)
    )
    # a well-formed block whose CRC checks out but whose frames name a flow the table lacks
    (evil / "0000000004.open").write_bytes(_valid_block([(5, b"abc", 0)], ["x"], tamper=7))
    # a good block, then a bit flip in a second one: the first is kept
    hand = [(good[0][0] - 1, b"hand-made", 0)]
    flipped = bytearray(_valid_block([(good[1][0], b"flip me", 0)], ["hand"]))
    flipped[-3] ^= 0x20
    (evil / "0000000005.open").write_bytes(_valid_block(hand, ["hand"]) + bytes(flipped))
    (evil / "README").write_text("not a segment: ignored")
    (evil / "0000000006.open").mkdir()  # a directory with a segment's name: not a file, ignored

    stats = SpoolReadStats()
    got = list(read_spool(tmp_path, None, None, None, stats=stats))
    assert got == [(good[0][0] - 1, 1, 9, b"hand-made", "hand"), *good]
    assert stats.corrupt == 5, stats.warnings
    assert len(stats.warnings) == 5

    # a writer taking over the hostile directory keeps the good block and deletes what is unreadable
    with PacketSpool(evil, **SMALL) as spool:
        s = spool.stats()
        assert (s["discarded_segments"], s["recovered_segments"], s["frames"]) == (4, 1, 1)
    kept = f"0000000005_{good[0][0] - 1}_{good[0][0] - 1}.pks"
    assert sorted(p.name for p in evil.iterdir()) == [".lock", kept, "0000000006.open", "README"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_segments_never_raise_and_never_invent_frames(data: st.DataObject) -> None:
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    frames = _frames(rnd, 40, flows=3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with PacketSpool(root / "w", **SMALL) as spool:
            for i, f in enumerate(frames):
                _add(spool, [f])
                if i % 15 == 14:
                    spool.flush()
        (seg,) = _segment_files(root / "w")
        raw = bytearray(seg.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            kind = data.draw(st.sampled_from(["flip", "cut", "splice"]))
            pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
            if kind == "flip" and raw:
                raw[pos] ^= data.draw(st.integers(1, 255))
            elif kind == "cut":
                del raw[pos:]
            else:
                raw[pos:pos] = data.draw(st.binary(max_size=64))
        seg.write_bytes(bytes(raw))
        got = list(read_spool(root, None, None, None))
        assert [f[0] for f in got] == sorted(f[0] for f in got)
        remaining = list(frames)
        for f in got:  # every frame read is one that was written (CRC-32 catches the damage)
            remaining.remove(f)


def test_write_errors_drop_frames_but_keep_the_spool_readable(tmp_path: Path) -> None:
    """A real EFBIG: the writer runs under RLIMIT_FSIZE in a child process (a full disk, in effect)."""
    frames = _frames(random.Random(8), 600)
    ctx = multiprocessing.get_context("fork")
    queue: Any = ctx.Queue()
    proc = ctx.Process(target=_write_limited, args=(str(tmp_path / "w"), frames, queue))
    proc.start()
    stats = queue.get(timeout=60)
    proc.join(60)
    assert proc.exitcode == 0
    assert stats["write_errors"] > 0 and stats["dropped_frames"] > 0
    assert stats["frames"] + stats["dropped_frames"] == len(frames)
    got = list(read_spool(tmp_path, None, None, None))
    assert len(got) == stats["frames"]
    assert all(f in frames for f in got)
    assert all(p.stat().st_size <= 20_000 for p in _segment_files(tmp_path / "w"))


def _write_limited(directory: str, frames: list[Frame], queue: Any) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    spool = PacketSpool(Path(directory), **SMALL)
    _add(spool, frames)
    spool.close()
    queue.put(spool.stats())


# -- readers elsewhere -------------------------------------------------------------------------------


def _read_in_child(root: str, queue: Any) -> None:
    queue.put(list(read_spool(Path(root), None, None, None)))


def test_a_reader_in_another_process_sees_flushed_frames(tmp_path: Path) -> None:
    rnd = random.Random(6)
    frames = _frames(rnd, 300)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing shared but the disk
    spool = PacketSpool(tmp_path / "w", **SMALL)
    try:
        _add(spool, frames[:200])
        spool.flush()
        _add(spool, frames[200:])  # full blocks are written as they fill; the rest waits for a flush
        pending = spool.stats()["pending_frames"]
        assert 0 < pending < 100
        for expected in (frames[: len(frames) - pending], frames):
            queue: Any = ctx.Queue()
            proc = ctx.Process(target=_read_in_child, args=(str(tmp_path), queue))
            proc.start()
            assert queue.get(timeout=120) == expected
            proc.join(30)
            spool.flush()
    finally:
        spool.close()


def test_reading_while_the_writer_seals_the_open_segment(tmp_path: Path) -> None:
    rnd = random.Random(13)
    frames = _frames(rnd, 700)
    with PacketSpool(tmp_path / "w", **SMALL) as spool:
        _add(spool, frames[:500])
        spool.flush()
        (open_seg,) = [p for p in _segment_files(tmp_path / "w") if p.suffix == ".open"]
        stats = SpoolReadStats()
        reader = read_spool(tmp_path, None, None, None, stats=stats)
        got = [next(reader)]  # planned: the open segment's blocks are known by its old name
        _add(spool, frames[500:])  # fills it up: it is sealed and renamed, a new one opened
        spool.flush()
        assert not open_seg.exists()
        got += list(reader)
    assert got == frames[:500]  # a snapshot of what was flushed when the read began
    assert stats.vanished == 0 and stats.corrupt == 0


def test_reading_while_the_writer_evicts(tmp_path: Path) -> None:
    rnd = random.Random(12)
    frames = _frames(rnd, 4000)
    spool = PacketSpool(tmp_path / "w", max_bytes=64 << 10, segment_bytes=24 << 10, flush_bytes=4096)
    try:
        _add(spool, frames[:500])
        spool.flush()
        stats = SpoolReadStats()
        reader = read_spool(tmp_path, None, None, None, stats=stats)
        got = [next(reader)]
        pos = 500
        for f in reader:  # the writer keeps going between the reader's steps, evicting what it planned
            got.append(f)
            if pos < len(frames):
                _add(spool, frames[pos : pos + 20])
                spool.flush()
                pos += 20
        assert stats.vanished > 0 and stats.corrupt == 0
        assert [f[0] for f in got] == sorted(f[0] for f in got)
        assert all(f in frames[:500] for f in got)  # what was there when the read began, nothing else
    finally:
        spool.close()


def test_add_cost(tmp_path: Path, record_property: Any) -> None:
    """Measures `add` (reported, not asserted: benchmarks are separate)."""
    frame = random.Random(0).randbytes(300)
    n = 200_000
    with PacketSpool(tmp_path / "w") as spool:
        add = spool.add
        t0 = time.perf_counter()
        for i in range(n):
            add(1_700_000_000_000_000_000 + i * 1000, 1, frame, 300, "node-a/01JD3Q4X9ZK2M8R5T7V0W1Y2Z3/f17")
        spool.flush()
        elapsed = time.perf_counter() - t0
        assert spool.stats()["frames"] == n
    us = elapsed / n * 1e6
    record_property("spool_add_us_per_frame", round(us, 3))
    print(f"\nPacketSpool.add: {us:.2f} µs/frame (300-byte frames, flushes included)")
