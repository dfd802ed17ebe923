"""The capture reader against tshark: same packets, timestamps (ns) and bytes, in every file format.

tshark is the oracle for counts, lengths, timestamps and frame bytes (through its per-frame MD5,
``frame.md5_hash``), dpkt a second, independent one for bytes. The formats are made from real
captures with the real tools (editcap, mergecap, gzip); the few shapes no tool writes on demand
(big-endian pcap, unusual pcapng time resolutions, several sections) are built here byte by byte
and are only trusted because tshark reads them back as intended.

Bad input goes through the CLI, because what a user sees there (exit code 2, one
"podshark: error:" line, no traceback) is the contract; a file cut at its end is not an error but
a warning, with every call before the cut still printed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect.pcapio import CaptureError, CaptureReader
from tests.conftest import CORPUS, FIXTURES, REPO

MAX_FRAME = 64 << 20
#: tshark's WTAP_ENCAP numbers (``frame.encap_type``) to the LINKTYPE numbers we report
ENCAP_TO_LINKTYPE = {1: 1, 7: 101, 15: 0, 25: 113}

# (ts_ns, wire_len, cap_len, md5 of the frame, linktype)
Frame = tuple[int, int, int, str, int]

CAPTURES = sorted(
    p for d in (FIXTURES, CORPUS) for p in d.glob("*.pcap*") if p.suffix in (".pcap", ".pcapng")
)
PIPELINED = FIXTURES / "http1__zeek_pipelined-requests.pcap"  # Ethernet, µs pcap, 5 HTTP calls
SLL_NG = FIXTURES / "http2__ndpi_5g-sbi-json.pcapng"  # Linux SLL, ns pcapng
SLL_PCAP = FIXTURES / "kafka__gosniffer_kafka.pcap"  # Linux SLL, µs pcap
NULL_PCAP = FIXTURES / "http2__arkime_http2-nghttp2.pcap"  # BSD null
ETH_NG = FIXTURES / "http1__ndpi_http_starting_with_reply.pcapng"  # Ethernet pcapng

needs_tshark = pytest.mark.tshark


# -- the two views of a file ---------------------------------------------------------------------


def ours(path: Path) -> tuple[list[Frame], list[str]]:
    """What CaptureReader yields, reduced to the fields tshark can show, plus its warnings."""
    with CaptureReader(path) as r:
        frames = [(ts, wire, len(f), hashlib.md5(f).hexdigest(), lt) for ts, lt, f, wire in r]
        return frames, list(r.stats.warnings)


def _epoch_ns(text: str) -> int:
    """tshark's ``frame.time_epoch`` ("1258577884.822720000") as integer nanoseconds, exactly."""
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_SEEN: dict[str, tuple[Frame, ...]] = {}


def _tshark(path: str) -> tuple[Frame, ...]:
    out = subprocess.run(
        ["tshark", "-r", path, "-o", "frame.generate_md5_hash:TRUE", "-T", "fields"]
        + [
            x
            for f in ("frame.time_epoch", "frame.len", "frame.cap_len", "frame.md5_hash", "frame.encap_type")
            for x in ("-e", f)
        ],
        capture_output=True,
        text=True,
    ).stdout
    frames = []
    for line in out.splitlines():
        ts, wire, cap, md5, encap = line.split("\t")
        frames.append(
            (_epoch_ns(ts), int(wire), int(cap), md5, ENCAP_TO_LINKTYPE.get(int(encap), -int(encap)))
        )
    return tuple(frames)


def theirs(path: Path) -> list[Frame]:
    """tshark's view; an unknown encapsulation shows as its negated WTAP number (so it mismatches).

    Cached by content, so the fixtures (copies of corpus files) cost one tshark run, not two.
    """
    digest = _digest(path)
    if digest not in _SEEN:
        _SEEN[digest] = _tshark(str(path))
    return list(_SEEN[digest])


def assert_same(mine: list[Frame], ref: list[Frame], what: str) -> None:
    """Frame by frame, naming the first difference (a plain list diff of 1000 frames is unreadable)."""
    for i, (m, t) in enumerate(zip(mine, ref)):
        assert m == t, f"{what}: frame {i + 1} differs: ours (ts, wire, cap, md5, lt) {m}, tshark {t}"
    assert len(mine) == len(ref), f"{what}: {len(mine)} packets, tshark {len(ref)}"


@pytest.fixture(scope="module")
def warm_tshark() -> None:
    """Run tshark over every corpus file in parallel once: serially this is most of the module's time."""
    if shutil.which("tshark") is None:
        return
    unique = {_digest(p): p for p in CAPTURES}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(theirs, unique.values()))


# -- every real capture ----------------------------------------------------------------------------


@needs_tshark
@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_capture_matches_tshark(path: Path, warm_tshark: None) -> None:
    mine, warnings = ours(path)
    assert_same(mine, theirs(path), path.name)
    assert warnings == [], "a well-formed capture must read without warnings"


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_capture_bytes_match_dpkt(path: Path) -> None:
    """A second oracle for the frame bytes and lengths, independent of tshark."""
    with path.open("rb") as f:
        reader = dpkt.pcapng.Reader(f) if path.suffix == ".pcapng" else dpkt.pcap.Reader(f)
        ref = [bytes(buf) for _ts, buf in reader]
    with CaptureReader(path) as r:
        mine = [frame for _ts, _lt, frame, _wire in r]
    assert mine == ref


# -- the same packets in other formats -----------------------------------------------------------


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _pcap_big_endian(src: bytes) -> bytes:
    """Byte-swap the headers of a little-endian pcap (no tool writes big-endian pcap on demand)."""
    magic, ma, mi, tz, sig, snap, net = struct.unpack_from("<IHHiIII", src, 0)
    out = [struct.pack(">IHHiIII", magic, ma, mi, tz, sig, snap, net)]
    p = 24
    while p < len(src):
        sec, frac, incl, orig = struct.unpack_from("<IIII", src, p)
        out.append(struct.pack(">IIII", sec, frac, incl, orig) + src[p + 16 : p + 16 + incl])
        p += 16 + incl
    return b"".join(out)


def _derive(src: Path, kind: str, d: Path) -> Path:
    """One conversion of a real capture, made with the tool a user would use."""
    out = d / f"{src.stem}.{kind}"
    if kind == "pcapng":
        _run("editcap", "-F", "pcapng", str(src), str(out))
    elif kind == "pcap":
        _run("editcap", "-F", "pcap", str(src), str(out))
    elif kind == "nsecpcap":
        _run("editcap", "-F", "nsecpcap", str(src), str(out))
    elif kind in ("be-pcap", "be-nsecpcap"):
        le = _derive(src, kind.removeprefix("be-"), d)
        out.write_bytes(_pcap_big_endian(le.read_bytes()))
    elif kind.endswith(".gz"):
        base = src if kind == "orig.gz" else _derive(src, kind.removesuffix(".gz"), d)
        copy = d / f"{base.name}.copy"
        shutil.copyfile(base, copy)
        _run("gzip", "-kf", str(copy))
        out = copy.with_name(copy.name + ".gz")
    else:
        raise AssertionError(kind)
    return out


KINDS = ["pcapng", "pcap", "nsecpcap", "be-pcap", "be-nsecpcap", "orig.gz", "pcapng.gz", "be-nsecpcap.gz"]
SOURCES = [PIPELINED, SLL_NG, NULL_PCAP]  # Ethernet µs, SLL ns pcapng, NULL; the rest in mergecap below


@needs_tshark
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_converted_capture_gives_the_same_packets(src: Path, kind: str, tmp_path: Path) -> None:
    """Same frames as the original; timestamps as tshark reads the converted file (µs pcap rounds)."""
    derived = _derive(src, kind, tmp_path)
    mine, warnings = ours(derived)
    assert warnings == []
    assert_same(mine, theirs(derived), f"{src.name} as {kind}")
    orig, _ = ours(src)
    assert [m[1:] for m in mine] == [o[1:] for o in orig], "frames or link types changed in conversion"
    for (ts, *_), (ts0, *_) in zip(mine, orig):
        assert abs(ts - ts0) < 1000
    if kind in ("pcapng", "nsecpcap", "be-nsecpcap", "orig.gz", "pcapng.gz", "be-nsecpcap.gz"):
        assert [m[0] for m in mine] == [o[0] for o in orig], "a lossless conversion changed timestamps"


@needs_tshark
def test_mergecap_of_several_link_types_and_resolutions(tmp_path: Path) -> None:
    """One pcapng, four interfaces: Ethernet µs, SLL ns (if_tsresol=9), NULL µs, SLL µs."""
    merged = tmp_path / "merged.pcapng"
    srcs = [PIPELINED, SLL_NG, NULL_PCAP, SLL_PCAP]
    _run("mergecap", "-w", str(merged), *map(str, srcs))
    mine, warnings = ours(merged)
    assert warnings == []
    assert_same(mine, theirs(merged), "merged")
    union = sorted(f for s in srcs for f in ours(s)[0])
    assert sorted(mine) == union, "merging must keep every packet's time, bytes and link type"
    assert {f[4] for f in mine} == {0, 1, 113}


# -- pcapng shapes built by hand (and checked against tshark) ---------------------------------------


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def _opt(e: str, code: int, val: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(val)) + val + b"\0" * (-len(val) % 4)


def _section(e: str, ifaces: list[tuple[int, bytes]], packets: Iterable[tuple[int, int, bytes]]) -> bytes:
    """A pcapng section: ``ifaces`` are (linktype, options), packets (iface, ts in units, frame)."""
    out = [_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for lt, opts in ifaces:
        out.append(
            _block(e, 1, struct.pack(e + "HHI", lt, 0, 262144) + opts + (_opt(e, 0, b"") if opts else b""))
        )
    for iid, units, frame in packets:
        hdr = struct.pack(e + "IIIII", iid, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
        out.append(_block(e, 6, hdr + frame))
    return b"".join(out)


def _real_frames() -> list[tuple[int, int, bytes]]:
    with CaptureReader(PIPELINED) as r:
        return [(ts, lt, f) for ts, lt, f, _ in r]


# if_tsresol values: 10^-6 (default, no option), 10^-3, 2^-20, 10^-9, 10^-7
_RESOLUTIONS: list[tuple[bytes, int, int]] = [
    (b"", 1_000_000, 1),
    (bytes([3]), 1_000, 1),
    (bytes([0x80 | 20]), 1 << 20, 1),
    (bytes([9]), 1_000_000_000, 1),
    (bytes([7]), 10_000_000, 1),
]


def _units(ts_ns: int, per_second: int) -> int:
    return ts_ns * per_second // 1_000_000_000


@needs_tshark
@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian", "big-endian"])
def test_pcapng_interfaces_with_different_tsresol(endian: str, tmp_path: Path) -> None:
    ifaces = [(1, _opt(endian, 9, r) if r else b"") for r, _, _ in _RESOLUTIONS]
    packets = [
        (i % len(ifaces), _units(ts, _RESOLUTIONS[i % len(ifaces)][1]), f)
        for i, (ts, _lt, f) in enumerate(_real_frames())
    ]
    path = tmp_path / "tsresol.pcapng"
    path.write_bytes(_section(endian, ifaces, packets))
    mine, warnings = ours(path)
    assert warnings == []
    ref = theirs(path)
    assert len(ref) == len(packets), "tshark did not read the hand-built file: the test is wrong"
    assert_same(mine, ref, "tsresol variety")


@needs_tshark
def test_pcapng_several_sections_of_both_byte_orders(tmp_path: Path) -> None:
    """A new section resets the interface list: interface 0 is Ethernet, then raw IP."""
    frames = _real_frames()
    half = len(frames) // 2
    first = _section("<", [(1, b"")], [(0, _units(ts, 10**6), f) for ts, _, f in frames[:half]])
    second = _section(">", [(101, _opt(">", 9, bytes([9])))], [(0, ts, f[14:]) for ts, _, f in frames[half:]])
    path = tmp_path / "sections.pcapng"
    path.write_bytes(first + second)
    mine, warnings = ours(path)
    assert warnings == []
    ref = theirs(path)
    assert len(ref) == len(frames)
    assert_same(mine, ref, "two sections")
    assert [m[4] for m in mine] == [1] * half + [101] * (len(frames) - half)


@needs_tshark
def test_pcapng_if_tsoffset_is_added(tmp_path: Path) -> None:
    """if_tsoffset (option 14) is seconds to add to every timestamp of the interface (pcapng spec)."""
    frames = _real_frames()[:5]
    opts = _opt("<", 14, struct.pack("<q", 1000)) + _opt("<", 9, bytes([9]))
    path = tmp_path / "tsoffset.pcapng"
    path.write_bytes(_section("<", [(1, opts)], [(0, ts, f) for ts, _, f in frames]))
    ref = theirs(path)
    assert [t[0] for t in ref] == [ts + 1000 * 10**9 for ts, _, _ in frames]
    mine, _ = ours(path)
    assert_same(mine, ref, "if_tsoffset")


# -- bad files through the CLI ----------------------------------------------------------------------


def cli(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podshark", "dissect", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _gzip_corrupt(d: Path) -> Path:
    """A real gzip file whose deflate stream is overwritten right after the 10-byte header."""
    data = bytearray(gzip.compress(PIPELINED.read_bytes()))
    data[10:80] = b"\xff" * 70
    p = d / "corrupt.pcap.gz"
    p.write_bytes(bytes(data))
    return p


def _make_bad(kind: str, d: Path) -> Path:
    p = d / f"{kind}.pcap"
    if kind == "missing":
        return d / "no-such-file.pcap"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    elif kind == "directory":
        p.mkdir()
    elif kind == "3-bytes":
        p.write_bytes(b"\xd4\xc3\xb2")
    elif kind == "pcap-header-cut":
        p.write_bytes(PIPELINED.read_bytes()[:13])
    elif kind == "pcapng-shb-cut":
        p = d / f"{kind}.pcapng"
        p.write_bytes(ETH_NG.read_bytes()[:20])
    elif kind == "gzip-garbage":
        p = d / f"{kind}.pcap.gz"
        p.write_bytes(b"\x1f\x8b" + bytes(range(7, 200)))
    elif kind == "gzip-corrupt":
        p = _gzip_corrupt(d)
    else:
        raise AssertionError(kind)
    return p


BAD = {
    "missing": "no such file",
    "empty": "empty",
    "text": "not a pcap or pcapng file",
    "directory": "directory",
    "3-bytes": "too short",
    "pcap-header-cut": "pcap file header is cut short",
    "pcapng-shb-cut": "section header is cut short",
    "gzip-garbage": "gzip",
    "gzip-corrupt": "gzip",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_file_is_one_error_line(kind: str, tmp_path: Path) -> None:
    path = _make_bad(kind, tmp_path)
    res = cli(path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("podshark: error:"), lines[0]
    assert BAD[kind] in lines[0], lines[0]
    assert path.name in lines[0], "the message names the file"
    assert res.stdout == ""


@pytest.mark.parametrize("n", [4, 10, 16, 23])
def test_pcap_header_cut_anywhere_is_an_error(n: int, tmp_path: Path) -> None:
    p = tmp_path / "cut.pcap"
    p.write_bytes(PIPELINED.read_bytes()[:n])
    with pytest.raises(CaptureError, match="pcap file header is cut short"):
        CaptureReader(p)


@pytest.mark.parametrize("n", [4, 8, 11, 12, 20, -1])
def test_pcapng_section_header_cut_anywhere_is_an_error(n: int, tmp_path: Path) -> None:
    data = ETH_NG.read_bytes()
    shb_len = struct.unpack_from("<I", data, 4)[0]
    p = tmp_path / "cut.pcapng"
    p.write_bytes(data[: n if n > 0 else shb_len - 1])
    with pytest.raises(CaptureError, match="section header is cut short"):
        CaptureReader(p)


# -- a capture cut at its end: warn, keep everything before the cut ---------------------------------


def _cut_variants(d: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (cut file, the same packets before the cut as a valid file, expected warning text)."""
    ng = d / "pipelined.pcapng"
    _run("editcap", "-F", "pcapng", str(PIPELINED), str(ng))
    out = {}
    for src in (PIPELINED, ng):
        data = src.read_bytes()
        n = len(theirs(src))
        before = d / f"before-{src.name}"
        _run("editcap", "-F", "pcapng" if src is ng else "pcap", "-r", str(src), str(before), f"1-{n - 1}")
        if src is ng:
            last = len(data) - struct.unpack_from("<I", data, len(data) - 4)[0]
            cuts = {
                "pcapng-in-block": (last + 40, "inside a block"),
                "pcapng-in-header": (last + 6, "block header"),
            }
        else:
            last = len(data) - 16 - theirs(src)[-1][2]
            cuts = {
                "pcap-in-packet": (last + 16 + 20, "inside packet"),
                "pcap-in-header": (last + 9, "record header"),
            }
        for name, (at, text) in cuts.items():
            cut = d / f"{name}{src.suffix}"
            cut.write_bytes(data[:at])
            out[name] = (cut, before, text)
    return out


@needs_tshark
@pytest.mark.parametrize("name", ["pcap-in-packet", "pcap-in-header", "pcapng-in-block", "pcapng-in-header"])
def test_capture_cut_at_the_end_warns_and_keeps_the_calls(name: str, tmp_path: Path) -> None:
    cut, before, text = _cut_variants(tmp_path)[name]
    res = cli(cut)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    expected = cli(before)
    assert expected.returncode == 0 and expected.stderr == ""
    assert res.stdout == expected.stdout, "the calls before the cut must all be printed"
    assert sum(" http " in line for line in res.stdout.splitlines()) >= 4
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("podshark: warning:")]
    assert len(warnings) == 1 and "cut short" in warnings[0] and text in warnings[0], res.stderr


@needs_tshark
def test_gzip_capture_cut_at_the_end_keeps_the_packets_before_the_cut(tmp_path: Path) -> None:
    """A .gz cut mid-stream (a download or copy that stopped) reads like a cut pcap, as tshark does."""
    big = FIXTURES / "http1__zeek_206_example_b.pcap"  # 1.5 MB, so the cut is past the first 1 MiB chunk too
    gz = gzip.compress(big.read_bytes())
    for frac in (0.25, 0.9):
        cut = tmp_path / f"cut-{frac}.pcap.gz"
        cut.write_bytes(gz[: int(len(gz) * frac)])
        ref = theirs(cut)
        assert len(ref) > 100
        try:
            mine, warnings = ours(cut)
        except CaptureError as e:
            raise AssertionError(
                f"cut at {frac:.0%} of the gzip stream: {e}; tshark reads {len(ref)} packets"
            ) from e
        assert len(mine) >= len(ref) - 1, f"read {len(mine)} packets, tshark {len(ref)}"
        assert_same(mine, ref[: len(mine)], f"gzip cut at {frac:.0%}")
        assert warnings, "the cut must be reported"


# -- memory bounds and corrupt records ----------------------------------------------------------------


def _pcap_header(snaplen: int = 65535, magic: int = 0xA1B2C3D4) -> bytes:
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)


@pytest.mark.parametrize("snaplen", [0, 65535, 0xFFFFFFFF])
def test_pcap_record_with_absurd_length_stops_with_a_warning(snaplen: int, tmp_path: Path) -> None:
    frame = PIPELINED.read_bytes()[24 + 16 : 24 + 16 + 60]
    good = struct.pack("<IIII", 1, 2, len(frame), len(frame)) + frame
    bad = struct.pack("<IIII", 1, 3, 0xFFFFFFF0, 0xFFFFFFF0) + b"x" * 100
    p = tmp_path / "absurd.pcap"
    p.write_bytes(_pcap_header(snaplen) + good + bad)
    with CaptureReader(p) as r:
        got = list(r)
        assert [f for _, _, f, _ in got] == [frame]
        assert len(r.stats.warnings) == 1


def test_pcapng_block_with_absurd_length_stops_with_a_warning(tmp_path: Path) -> None:
    frame = PIPELINED.read_bytes()[40:100]
    data = _section("<", [(1, b"")], [(0, 5, frame)]) + struct.pack("<II", 6, 0xFFFFFFF0) + b"\0" * 64
    p = tmp_path / "absurd.pcapng"
    p.write_bytes(data)
    with CaptureReader(p) as r:
        assert [f for _, _, f, _ in r] == [frame]
        assert len(r.stats.warnings) == 1


@pytest.mark.parametrize("blen", [12, 16, 20, 28])
def test_pcapng_packet_block_too_short_for_its_header_at_the_end(blen: int, tmp_path: Path) -> None:
    """An EPB needs 32 bytes; a shorter one (last in the file) is corrupt, not a crash."""
    frame = PIPELINED.read_bytes()[40:100]
    short = struct.pack("<II", 6, blen) + b"\0" * (blen - 12) + struct.pack("<I", blen)
    p = tmp_path / "short-epb.pcapng"
    p.write_bytes(_section("<", [(1, b"")], [(0, 5, frame)]) + short)
    with CaptureReader(p) as r:
        assert [f for _, _, f, _ in r] == [frame]
        assert r.stats.warnings


# -- Hypothesis: nothing but CaptureError, ever ------------------------------------------------------


def read_everything(path: Path) -> int:
    """The reader contract on any file: CaptureError from the constructor or a clean iteration."""
    try:
        r = CaptureReader(path)
    except CaptureError as e:
        assert "\n" not in str(e), "an error is one line"
        return -1
    n = 0
    with r:
        for ts, lt, frame, wire in r:
            assert isinstance(frame, bytes) and len(frame) <= MAX_FRAME
            assert isinstance(ts, int) and isinstance(lt, int) and isinstance(wire, int)
            n += 1
        assert all(isinstance(w, str) and "\n" not in w for w in r.stats.warnings)
    return n


_MAGICS = [
    b"",
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\x0a\x0d\x0d\x0a",
    b"\x1f\x8b",
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "input"


@given(magic=st.sampled_from(_MAGICS), rest=st.binary(max_size=600), compress=st.booleans())
def test_arbitrary_bytes_never_crash_the_reader(
    magic: bytes, rest: bytes, compress: bool, scratch: Path
) -> None:
    data = magic + rest
    scratch.write_bytes(gzip.compress(data) if compress else data)
    read_everything(scratch)


_SEEDS = [PIPELINED.read_bytes(), ETH_NG.read_bytes()] + ([SLL_NG.read_bytes()] if SLL_NG.exists() else [])


@given(
    seed=st.sampled_from(range(len(_SEEDS))),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=8),
    mode=st.sampled_from(["plain", "gzip", "flip-gzip"]),
)
def test_mutated_real_captures_never_crash_the_reader(
    seed: int, cut: float, flips: list[tuple[float, int]], mode: str, scratch: Path
) -> None:
    data = bytearray(_SEEDS[seed])
    if mode == "gzip":
        data = bytearray(gzip.compress(bytes(data)))
    for where, x in flips:
        data[int(where * len(data))] ^= x
    if mode == "flip-gzip":
        data = bytearray(gzip.compress(bytes(data)))
    scratch.write_bytes(bytes(data[: int(cut * len(data))]))
    read_everything(scratch)
