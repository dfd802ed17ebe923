"""tshark as the differential oracle for HTTP/1: what transactions does Wireshark see in a capture?

podshark's dissectors are checked against an independent implementation, never against their own
earlier output (a baseline written from podshark itself would only prove that podshark agrees with
podshark). tshark is that implementation; pyshark drives it, as the design brief says.

The unit of comparison is a *transaction*: a ``(method, target, status)`` tuple.

- A request is paired with a response through tshark's own pairing: the response's
  ``http.request_in`` names the frame of its request (tshark is run two-pass, ``-2``, so the
  request's ``http.response_in`` is filled in as well and exposed in the raw lists).
- A request no response points to is ``(method, target, None)``.
- A response whose request tshark never saw is ``(None, None, status)``.
- Interim 1xx responses (other than 101) are reported by tshark as responses of their own; each
  one that points to a request becomes a separate ``(method, target, 1xx)`` tuple next to the final
  ``(method, target, final)`` one. podshark folds them into the final call by design, so callers
  decide what to do with them (see `fold_interim`).

One frame can carry several HTTP messages (pipelining): every ``http`` layer of a packet is read
with ``get_multiple_layers`` and, when several requests share a frame, the responses pointing to
that frame are matched to them in order (HTTP/1 answers in request order).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

Transaction = tuple[str | None, str | None, int | None]

TSHARK: str | None = shutil.which("tshark")

#: Mark for tests that need tshark; combine with `requires_tshark` so they skip cleanly without it.
tshark_mark = pytest.mark.tshark
requires_tshark = pytest.mark.skipif(
    TSHARK is None, reason="tshark is not on PATH (apt-get install tshark): the differential oracle needs it"
)


def _has_pyshark() -> bool:
    try:
        import pyshark  # noqa: F401
    except ImportError:
        return False
    return True


requires_pyshark = pytest.mark.skipif(
    not _has_pyshark(), reason="pyshark is not installed (pip install pyshark): it drives the tshark oracle"
)


@dataclass(frozen=True, slots=True)
class HttpMessage:
    """One HTTP/1 message as tshark dissected it (request or response)."""

    frame: int
    index: int  # position among the http layers of its frame (pipelined messages share a frame)
    stream: int | None  # tcp.stream
    is_request: bool
    method: str | None = None
    target: str | None = None
    status: int | None = None
    request_in: int | None = None  # responses: frame of the request tshark paired it with
    response_in: int | None = None  # requests: frame of the response (two-pass only)
    #: every frame whose bytes went into this message's reassembled PDU (just `frame` when unsegmented);
    #: for pipelined messages sharing a frame it is the union for that frame
    frames: tuple[int, ...] = ()


@dataclass(slots=True)
class OracleResult:
    """Everything the oracle learnt from one capture; `transactions` is what tests compare."""

    path: str
    requests: list[HttpMessage] = field(default_factory=list)
    responses: list[HttpMessage] = field(default_factory=list)
    #: one entry per response (paired or not) plus one per request no response points to
    pairs: list[tuple[HttpMessage | None, HttpMessage | None]] = field(default_factory=list)
    #: http layers that were neither request nor response (e.g. continuation data); kept for debugging
    other: list[tuple[int, int]] = field(default_factory=list)

    @property
    def transactions(self) -> Counter[Transaction]:
        """Multiset of (method, target, status), the unit the golden tests compare."""
        return Counter(_tuple(req, resp) for req, resp in self.pairs)

    @property
    def unpaired_requests(self) -> int:
        """Requests tshark saw no response for: podshark should flag these ``response-missing``."""
        return sum(1 for req, resp in self.pairs if resp is None)

    @property
    def unpaired_responses(self) -> int:
        """Responses tshark saw no request for: podshark should flag these ``request-missing``."""
        return sum(1 for req, resp in self.pairs if req is None)


def _tuple(req: HttpMessage | None, resp: HttpMessage | None) -> Transaction:
    return (
        None if req is None else req.method,
        None if req is None else req.target,
        None if resp is None else resp.status,
    )


def is_interim(status: int | None) -> bool:
    """1xx responses that precede a final response; 101 Switching Protocols is final."""
    return status is not None and 100 <= status < 200 and status != 101


def fold_interim(transactions: Counter[Transaction]) -> Counter[Transaction]:
    """Drop paired interim (1xx, not 101) tuples, the way podshark folds them into the final call.

    Only tuples whose request tshark knows are dropped: an interim response tshark could not pair
    is a different situation (the golden tests list those per file, with the frame numbers).
    """
    out: Counter[Transaction] = Counter()
    for t, n in transactions.items():
        if t[0] is not None and is_interim(t[2]):
            continue
        out[t] += n
    return out


def _int(v: Any) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(str(v))
    except ValueError:
        return None


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _field(layer: Any, name: str) -> str | None:
    """The value of the first occurrence of field `name` in `layer`, None when absent.

    pyshark's string form of a field falls back to its *showname* ("Request URI: ") when the value
    is empty, and tshark's ``show`` escapes non-printable bytes, so the value is taken from the raw
    bytes when tshark gives them (decoded as UTF-8, else Latin-1), otherwise from ``show``.
    """
    container = layer.get_field(name)
    if container is None:
        return None
    f = container.all_fields[0] if getattr(container, "all_fields", None) else container
    raw = getattr(f, "raw_value", None)
    show = getattr(f, "show", None)
    if raw and name in _RAW_STRING_FIELDS:
        try:
            data = bytes.fromhex(raw)
        except ValueError:
            data = None
        if data is not None:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data.decode("latin-1")
    return str(show) if show is not None else str(container)


# string fields whose exact bytes matter for the comparison
_RAW_STRING_FIELDS = frozenset({"request_method", "request_uri"})


def _segment_frames(pkt: Any) -> tuple[int, ...]:
    """Frames tshark reassembled into this packet's PDU(s), from its ``tcp.segment`` fields."""
    frames: set[int] = set()
    for layer in pkt.layers:
        container = layer.get_field("tcp_segment")
        if container is None:
            continue
        for f in getattr(container, "all_fields", [container]):
            n = _int(getattr(f, "show", f))
            if n is not None:
                frames.add(n)
    return tuple(sorted(frames))


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What tshark says about one frame: captured and original length, and its time in ns."""

    cap_len: int
    length: int
    ts_ns: int

    @property
    def cut(self) -> bool:
        """The snap length cut this frame (captured fewer bytes than were on the wire)."""
        return self.cap_len < self.length


def _epoch_ns(text: str) -> int:
    # exact: frame.time_epoch is "seconds.nanoseconds"; going through float would lose nanoseconds
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def frame_table(path: str | os.PathLike[str]) -> dict[int, FrameInfo]:
    """frame number -> FrameInfo, from tshark's fields output.

    Plain ``tshark -T fields`` because pyshark would build a full object per packet just to read
    three numbers. Used to tell which frames a snap length cut and when a message was on the wire.
    """
    if TSHARK is None:
        pytest.skip("tshark is not on PATH")
    res = subprocess.run(
        [TSHARK, "-n", "-r", os.fspath(path), "-T", "fields", "-e", "frame.number", "-e", "frame.cap_len",
         "-e", "frame.len", "-e", "frame.time_epoch"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out: dict[int, FrameInfo] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and all(p.isdigit() for p in parts[:3]):
            out[int(parts[0])] = FrameInfo(int(parts[1]), int(parts[2]), _epoch_ns(parts[3]))
    return out


def time_span(msg: HttpMessage, frames: Mapping[int, FrameInfo]) -> tuple[int, int]:
    """First and last wire time of the frames that make up `msg` (any timestamp convention fits)."""
    ts = [frames[f].ts_ns for f in msg.frames if f in frames] or [frames[msg.frame].ts_ns]
    return min(ts), max(ts)


F = TypeVar("F", bound=Callable[..., Any])


def tshark_retry(fn: F) -> F:
    """One more try when pyshark's tshark child exits 255. It has been seen now and then on a loaded
    machine (rarely, with the same file read fine before and after, the only error line tshark's
    "Running as user root" notice); a second failure is raised as it is, so a tshark that really
    cannot read a file still fails the test."""

    @functools.wraps(fn)
    def once_more(*args: Any, **kwargs: Any) -> Any:
        from pyshark.capture.capture import TSharkCrashException

        try:
            return fn(*args, **kwargs)
        except TSharkCrashException:
            return fn(*args, **kwargs)

    return cast(F, once_more)


@tshark_retry
def _read_messages(
    path: str,
    decode_as: Mapping[str, str] | None,
    override_prefs: Mapping[str, str] | None,
) -> tuple[list[HttpMessage], list[tuple[int, int]]]:
    import pyshark  # imported lazily so collecting tests without pyshark still works

    messages: list[HttpMessage] = []
    other: list[tuple[int, int]] = []
    cap = pyshark.FileCapture(
        path,
        display_filter="http",
        keep_packets=False,
        decode_as=dict(decode_as) if decode_as else None,
        override_prefs=dict(override_prefs) if override_prefs else None,
        # two-pass so requests carry http.response_in (it points forward in the file)
        custom_parameters=["-2"],
        tshark_path=TSHARK,
    )
    try:
        for pkt in cap:
            frame = int(pkt.number)
            stream = _int(pkt.tcp.stream) if hasattr(pkt, "tcp") else None
            frames = _segment_frames(pkt) or (frame,)
            for index, layer in enumerate(pkt.get_multiple_layers("http")):
                method = _field(layer, "request_method")
                code = _field(layer, "response_code")
                if method is not None or (_field(layer, "request") is not None and code is None):
                    uri = _field(layer, "request_uri")
                    messages.append(
                        HttpMessage(
                            frame=frame,
                            index=index,
                            stream=stream,
                            is_request=True,
                            method=_str(method),
                            # tshark omits http.request.uri for a request line without one
                            target=_str(uri) if uri is not None else None,
                            response_in=_int(_field(layer, "response_in")),
                            frames=frames,
                        )
                    )
                elif code is not None:
                    messages.append(
                        HttpMessage(
                            frame=frame,
                            index=index,
                            stream=stream,
                            is_request=False,
                            status=_int(code),
                            request_in=_int(_field(layer, "request_in")),
                            frames=frames,
                        )
                    )
                else:
                    other.append((frame, index))
    finally:
        cap.close()
    return messages, other


def _pair(messages: list[HttpMessage]) -> list[tuple[HttpMessage | None, HttpMessage | None]]:
    requests_by_frame: dict[int, list[HttpMessage]] = defaultdict(list)
    for m in messages:
        if m.is_request:
            requests_by_frame[m.frame].append(m)
    # cursor into each frame's requests: responses pointing to one frame take its requests in order
    cursor: dict[int, int] = defaultdict(int)
    answered: set[tuple[int, int]] = set()
    pairs: list[tuple[HttpMessage | None, HttpMessage | None]] = []
    last_request_frame: dict[int | None, int] = {}  # per tcp.stream: the request frame last answered
    for m in messages:
        if m.is_request:
            continue
        key = m.request_in or -1
        reqs = requests_by_frame.get(key)
        if not reqs and m.request_in is None and m.stream in last_request_frame:
            # tshark pairs by frame: when several requests share one frame it points all of them at
            # the first response and leaves the later responses without http.request_in. HTTP/1
            # answers in order, so such a response belongs to the next unanswered request of the
            # frame the previous response on this connection answered.
            prev = last_request_frame[m.stream]
            if cursor[prev] < len(requests_by_frame[prev]):
                key, reqs = prev, requests_by_frame[prev]
        if not reqs:
            pairs.append((None, m))
            continue
        last_request_frame[m.stream] = key
        i = min(cursor[key], len(reqs) - 1)
        req = reqs[i]
        pairs.append((req, m))
        answered.add((req.frame, req.index))
        if not is_interim(m.status):  # an interim response leaves its request waiting for the final one
            cursor[key] = i + 1
    for m in messages:
        if m.is_request and (m.frame, m.index) not in answered:
            pairs.append((m, None))
    return pairs


@lru_cache(maxsize=64)
def _oracle_cached(
    path: str,
    stamp: tuple[int, int],
    decode_as: tuple[tuple[str, str], ...],
    override_prefs: tuple[tuple[str, str], ...],
) -> OracleResult:
    del stamp  # only part of the cache key: a rewritten file is dissected again
    messages, other = _read_messages(path, dict(decode_as), dict(override_prefs))
    return OracleResult(
        path=path,
        requests=[m for m in messages if m.is_request],
        responses=[m for m in messages if not m.is_request],
        pairs=_pair(messages),
        other=other,
    )


def http1_oracle(
    path: str | os.PathLike[str],
    *,
    decode_as: Mapping[str, str] | None = None,
    override_prefs: Mapping[str, str] | None = None,
) -> OracleResult:
    """Dissect `path` with tshark and return its HTTP/1 messages and transactions (cached per file).

    `decode_as` ({"tcp.port==8080": "http"}) and `override_prefs` ({"http.tcp.port": "80,8080"}) are
    passed to tshark for captures whose HTTP runs where tshark would not look for it.
    """
    if TSHARK is None:
        pytest.skip("tshark is not on PATH: the differential oracle needs it")
    p = Path(path).resolve()
    st = p.stat()
    return _oracle_cached(
        str(p),
        (st.st_mtime_ns, st.st_size),
        tuple(sorted((decode_as or {}).items())),
        tuple(sorted((override_prefs or {}).items())),
    )


def http1_transactions(
    path: str | os.PathLike[str],
    *,
    decode_as: Mapping[str, str] | None = None,
    override_prefs: Mapping[str, str] | None = None,
) -> Counter[Transaction]:
    """The multiset of (method, target, status) tshark sees in `path` (interim 1xx included)."""
    return http1_oracle(path, decode_as=decode_as, override_prefs=override_prefs).transactions


# ---------------------------------------------------------------------- TCP resends, as tshark sees them

Connection = frozenset[tuple[str, int]]
RESEND_ANALYSES = ("retransmission", "fast_retransmission", "spurious_retransmission")


def resent_connections(path: Path) -> set[Connection]:
    """The TCP connections ({(ip, port), (ip, port)}) in which tshark's TCP analysis finds a resend.

    Real traffic on a loaded machine is sometimes resent (a tail loss probe fires when an ACK is
    late), and podshark then rightly flags the call `retransmission`; tests of real traffic expect
    that flag exactly where tshark sees a resend, instead of demanding clean TCP."""
    assert TSHARK is not None, "tshark is not installed"
    flt = " or ".join(f"tcp.analysis.{k}" for k in RESEND_ANALYSES)
    fields = ("ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport")
    out = subprocess.run(
        [TSHARK, "-r", str(path), "-Y", flt, "-T", "fields", "-E", "separator=,",
         *(arg for f in fields for arg in ("-e", f))],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    found: set[Connection] = set()
    for line in out.splitlines():
        src4, src6, sport, dst4, dst6, dport = line.split(",")[:6]
        found.add(frozenset({(src4 or src6, int(sport)), (dst4 or dst6, int(dport))}))
    return found


def resend_flags(call: Any, resent: set[Connection]) -> set[str]:
    """{"retransmission"} when tshark saw a resend in `call`'s connection, else nothing."""
    key = frozenset({(call.src.ip, call.src.port), (call.dst.ip, call.dst.port)})
    return {"retransmission"} if key in resent else set()
