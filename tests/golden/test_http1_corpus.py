"""Differential test: podshark's HTTP/1 calls on the corpus captures equal what tshark sees.

The truth is tshark (through pyshark, `tshark_oracle`), never podshark's own earlier output: for each
HTTP/1 fixture the multiset of ``(method, target, status)`` from `dissect.engine.dissect_path` must
equal tshark's, and the number of calls flagged ``response-missing`` / ``request-missing`` must equal
the number of requests / responses tshark could not pair.

Where podshark and tshark disagree on purpose, the disagreement is written down per file in `SPECS`,
with the frame numbers and the reason (tshark is wrong, or podshark's model differs by design). The
table is checked too: an entry that tshark no longer produces fails `test_expected_differences_are_real`,
so the table cannot quietly hide a regression.

Design rule applied to every file (see design.md): interim 1xx responses (not 101) are folded into
the final call (``info["interim"]``), so a tshark transaction ``(POST, /x, 100)`` that tshark paired
with its request has no podshark counterpart (`fold_interim`). An Upgrade shows as the 101 call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.tshark_oracle import (
    Transaction,
    fold_interim,
    frame_table,
    http1_oracle,
    is_interim,
    requires_pyshark,
    requires_tshark,
    time_span,
)

pytestmark = [pytest.mark.tshark, requires_tshark, requires_pyshark, pytest.mark.timeout(120)]


def http1_fixtures() -> list[Path]:
    """Every HTTP/1 capture in fixtures/pcaps: new fixtures are tested without touching this file."""
    return sorted(
        p
        for p in FIXTURES.glob("*")
        if p.suffix in (".pcap", ".pcapng")
        and (
            p.name.startswith("http1__")
            or p.name in ("mixed__zeek_wikipedia.pcap", "demo__podshark_demo.pcap")
        )
    )


@dataclass(frozen=True)
class Difference:
    """One explained disagreement: tuples tshark reports that podshark must not, and vice versa."""

    reason: str
    only_tshark: tuple[Transaction, ...] = ()
    only_podshark: tuple[Transaction, ...] = ()


@dataclass(frozen=True)
class FileSpec:
    """How to run the oracle on one file, and the differences from it that are expected."""

    override_prefs: dict[str, str] = field(default_factory=dict)
    decode_as: dict[str, str] = field(default_factory=dict)
    differences: tuple[Difference, ...] = ()


_BRO_CYCLE = "/js/jquery.cycle.all.min.js"

SPECS: dict[str, FileSpec] = {
    "http1__zeek_100-continue.pcap": FileSpec(
        differences=(
            Difference(
                reason=(
                    "frame 6 is 'HTTP/1.1 100 Continue' answering the POST whose headers are in frame 4; "
                    "tshark only dissects the POST at frame 10, once its 2001-byte body is reassembled, so "
                    "when it meets the 100 the request is unknown and it reports an unpaired response. "
                    "podshark pairs the 100 with the POST and folds it into the (POST, /, 200) call "
                    "(info['interim']) by design"
                ),
                only_tshark=((None, None, 100),),
            ),
        )
    ),
    "http1__zeek_206_example_b.pcap": FileSpec(
        # Frames 217-262 retransmit server bytes 136936..181736 at boundaries shifted against the
        # originals (same bytes, checked); tshark's default reassembly then gives up on the first
        # 816896-byte 206 response (frames 5..953, Content-Length complete, no hole), so the GET in
        # frame 4 looks unanswered. With tcp.reassemble_out_of_order tshark reassembles it and pairs
        # 4->953, 956->1213, 1306->1543, which is the truth podshark must match.
        override_prefs={"tcp.reassemble_out_of_order": "TRUE"},
    ),
    "http1__zeek_bro.org.pcap": FileSpec(
        differences=(
            Difference(
                reason=(
                    "tcp.stream 2: the response to the GET in frame 58 starts in frame 97 with complete "
                    "headers ('HTTP/1.1 200 OK', Content-Length: 31052) but server bytes 7241..14481 were "
                    "never captured (frame 179: 'previous segment not captured'), so tshark cannot "
                    "reassemble the PDU and drops the response. podshark reports the status it saw, with "
                    "the body marked as cut by a gap"
                ),
                only_tshark=(("GET", _BRO_CYCLE, None),),
                only_podshark=(("GET", _BRO_CYCLE, 200),),
            ),
        )
    ),
}


@cache
def podshark_calls(path: str) -> tuple:
    """podshark's HTTP/1 calls for one file (cached: several tests look at the same file)."""
    from dissect.engine import dissect_path

    return tuple(c for c in dissect_path(path) if c.protocol == "http")


def podshark_transactions(path: Path) -> Counter[Transaction]:
    return Counter((c.method, c.target, c.status) for c in podshark_calls(str(path)))


def expected_transactions(path: Path) -> Counter[Transaction]:
    """tshark's transactions with the design's interim fold and this file's explained differences."""
    spec = SPECS.get(path.name, FileSpec())
    oracle = http1_oracle(path, decode_as=spec.decode_as, override_prefs=spec.override_prefs)
    want = fold_interim(oracle.transactions)
    for d in spec.differences:
        for t in d.only_tshark:
            assert want[t] > 0, f"{path.name}: expected-difference entry {t} is not in tshark's output"
            want[t] -= 1
        for t in d.only_podshark:
            want[t] += 1
    return +want


def _fmt(c: Counter[Transaction]) -> str:
    def short(t: Transaction) -> str:
        m, u, s = t
        u = u if u is None or len(u) <= 90 else u[:87] + "..."
        return f"({m!r}, {u!r}, {s!r})"

    return "\n".join(f"    {n} x {short(t)}" for t, n in sorted(c.items(), key=repr)) or "    (none)"


PARAMS = [pytest.param(p, id=p.name) for p in http1_fixtures()]


def test_fixtures_present() -> None:
    """The corpus was copied: an empty parametrisation would pass vacuously."""
    assert len(PARAMS) >= 17, f"expected the HTTP/1 corpus in {FIXTURES}"


def test_specs_name_existing_files() -> None:
    """A spec for a file that is gone is a stale explanation."""
    names = {p.name for p in http1_fixtures()}
    assert set(SPECS) <= names, sorted(set(SPECS) - names)


@pytest.mark.parametrize("path", PARAMS)
def test_expected_differences_are_real(path: Path) -> None:
    """Every tuple the table says only tshark reports is really in tshark's output (table not stale)."""
    spec = SPECS.get(path.name, FileSpec())
    oracle = http1_oracle(path, decode_as=spec.decode_as, override_prefs=spec.override_prefs)
    have = fold_interim(oracle.transactions)
    need = Counter(t for d in spec.differences for t in d.only_tshark)
    missing = need - have
    assert not missing, f"{path.name}: table entries tshark does not produce:\n{_fmt(missing)}"


@pytest.mark.parametrize("path", PARAMS)
def test_transactions_match_tshark(path: Path) -> None:
    """podshark's multiset of (method, target, status) equals tshark's, up to the explained table."""
    want = expected_transactions(path)
    got = podshark_transactions(path)
    only_podshark = got - want
    only_tshark = want - got
    assert not only_podshark and not only_tshark, (
        f"{path.name}: podshark and tshark disagree\n"
        f"  podshark only:\n{_fmt(only_podshark)}\n  tshark only:\n{_fmt(only_tshark)}"
    )


@pytest.mark.parametrize("path", PARAMS)
def test_missing_flags_match_tshark(path: Path) -> None:
    """Baseline: one ``response-missing`` per request tshark left unanswered, one ``request-missing``
    per response it could not pair (after the table), and the flags agree with the record's shape."""
    want = expected_transactions(path)
    want_resp_missing = sum(n for (m, _u, s), n in want.items() if m is not None and s is None)
    want_req_missing = sum(n for (m, _u, _s), n in want.items() if m is None)
    calls = podshark_calls(str(path))
    resp_missing = [c for c in calls if "response-missing" in c.flags]
    req_missing = [c for c in calls if "request-missing" in c.flags]
    problems = []
    if len(resp_missing) != want_resp_missing:
        problems.append(f"response-missing: podshark {len(resp_missing)}, tshark implies {want_resp_missing}")
    if len(req_missing) != want_req_missing:
        problems.append(f"request-missing: podshark {len(req_missing)}, tshark implies {want_req_missing}")
    for c in resp_missing:
        if c.response is not None or c.status is not None:
            problems.append(f"{c.id}: flagged response-missing but has a response (status {c.status})")
    for c in req_missing:
        if c.request is not None or c.method is not None or c.target is not None:
            problems.append(f"{c.id}: flagged request-missing but has a request ({c.method} {c.target})")
    for c in calls:
        if c.response is None and "response-missing" not in c.flags:
            problems.append(f"{c.id}: no response but not flagged response-missing ({c.method} {c.target})")
        if c.request is None and "request-missing" not in c.flags:
            problems.append(f"{c.id}: no request but not flagged request-missing (status {c.status})")
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", PARAMS)
def test_pairing_matches_tshark(path: Path) -> None:
    """Each complete call pairs the same request and response tshark pairs, not just equal tuples.

    The multiset test cannot see a pairing shifted by one between responses with the same status
    (every call still reads (GET, /x, 200)). Here a call must match a tshark pair with its tuple
    whose request frames span ``request_ts`` and whose response frames span ``response_ts`` — true
    whichever instant of a message podshark stamps (first byte, last byte, headers complete).
    Calls the table says only podshark reports have no tshark pair to match and are skipped.
    """
    spec = SPECS.get(path.name, FileSpec())
    oracle = http1_oracle(path, decode_as=spec.decode_as, override_prefs=spec.override_prefs)
    frames = frame_table(path)
    pool = [(q, r) for q, r in oracle.pairs if q is not None and r is not None and not is_interim(r.status)]
    exempt = Counter(t for d in spec.differences for t in d.only_podshark)
    wrong: list[str] = []
    for c in podshark_calls(str(path)):
        if c.request is None or c.response is None:
            continue
        t = (c.method, c.target, c.status)
        if exempt[t] > 0:
            exempt[t] -= 1
            continue
        hit = None
        for i, (q, r) in enumerate(pool):
            if (q.method, q.target, r.status) != t:
                continue
            q0, q1 = time_span(q, frames)
            r0, r1 = time_span(r, frames)
            if (
                c.request_ts is not None
                and c.response_ts is not None
                and q0 <= c.request_ts <= q1
                and r0 <= c.response_ts <= r1
            ):
                hit = i
                break
        if hit is None:
            wrong.append(
                f"({c.method}, {(c.target or '')[:60]!r}, {c.status}) request_ts={c.request_ts} "
                f"response_ts={c.response_ts}: no tshark pair with these request/response frames"
            )
        else:
            pool.pop(hit)
    assert not wrong, f"{path.name}: calls paired differently from tshark\n  " + "\n  ".join(wrong)
