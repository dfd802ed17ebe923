"""tui/format.py, tui/quick_filters.py and tui/filter_history.py: the pure parts of the main
screen, without an app. Quick filters are checked by what they select, with the filter language's
own predicate over real captures' calls, not by their text alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dissect.engine import dissect_path
from dissect.filter import ERRORS, parse
from dissect.model import Call, Endpoint, Message
from tests.tui.conftest import FILES
from tui import format as fmt
from tui.filter_history import FilterHistory
from tui.quick_filters import combine, same_server, same_target


@pytest.fixture(autouse=True)
def _utc() -> None:
    os.environ["TZ"] = "UTC"
    time.tzset()


def test_time_is_local_to_the_millisecond_with_the_date() -> None:
    ns = 1258577884844956000  # 2009-11-18T20:58:04.844956Z
    assert fmt.format_time(ns) == "2009-11-18 20:58:04.844"
    assert fmt.format_time(ns, date=False) == "20:58:04.844"
    assert fmt.format_time(None) == fmt.MISSING
    assert fmt.zone_name() == "UTC"


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (None, "—"),
        (0, "0ns"),
        (999, "999ns"),
        (1_000, "1.00µs"),
        (9_999, "10.0µs"),
        (99_999, "100µs"),
        (850_000, "850µs"),
        (999_999, "1.00ms"),
        (12_345_678, "12.3ms"),
        (123_456_789, "123ms"),
        (1_250_000_000, "1.25s"),
        (59_999_999_999, "1m00s"),
        (123_000_000_000, "2m03s"),
        (3_725_000_000_000, "1h02m"),
    ],
)
def test_latency_reads_in_the_unit_that_fits(ns: int | None, text: str) -> None:
    assert fmt.format_latency(ns) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "—"),
        (0, "0B"),
        (946, "946B"),
        (1024, "1.0KiB"),
        (2675, "2.6KiB"),
        (12 << 10, "12KiB"),
        (12 << 20, "12MiB"),
        (3 << 29, "1.5GiB"),
    ],
)
def test_sizes(n: int | None, text: str) -> None:
    assert fmt.format_size(n) == text


def _call(**kw: object) -> Call:
    base: dict[str, object] = {"id": "t/1", "protocol": "http", "src": Endpoint(), "dst": Endpoint()}
    base.update(kw)
    return Call(**base)  # type: ignore[arg-type]


def test_size_is_the_response_body_or_the_request_body_without_a_response() -> None:
    assert fmt.body_size(_call(request=Message(body_size=5), response=Message(body_size=7))) == 7
    assert fmt.body_size(_call(request=Message(body_size=5))) == 5
    assert fmt.body_size(_call(response=Message(body_size=0))) == 0
    assert fmt.body_size(_call()) is None


def test_endpoint_label_workload_or_pod_with_namespace_else_address() -> None:
    assert (
        fmt.endpoint_label(Endpoint(workload="Deployment/api", pod="api-1", namespace="shop")) == "shop/api"
    )
    assert (
        fmt.endpoint_label(Endpoint(pod="api-7f9-xyz", namespace="shop", ip="10.0.0.2")) == "shop/api-7f9-xyz"
    )
    assert fmt.endpoint_label(Endpoint(workload="StatefulSet/db")) == "db"
    assert fmt.endpoint_label(Endpoint(ip="10.0.0.2", port=8080)) == "10.0.0.2:8080"
    assert fmt.endpoint_label(Endpoint(ip="2001:db8::1", port=53)) == "[2001:db8::1]:53"


def test_status_class_and_text() -> None:
    assert fmt.status_style(_call(status=503)) == "5xx"
    assert fmt.status_style(_call(protocol="dns", status=3)) == "error"
    assert fmt.status_style(_call(protocol="grpc", status=0)) == "ok"
    assert fmt.status_style(_call(status=None)) == "none"
    assert fmt.format_status(_call(status=None)) == "—"


def test_cells_of_a_call_keep_control_characters_out() -> None:
    cells = fmt.cells(_call(method="GET", target="/a\x1b[31m\nb", status=200, request_ts=0))
    assert cells["target"] == "/a·[31m·b" and cells["method"] == "GET" and cells["status"] == "200"


@pytest.mark.parametrize("width", [60, 80, 100, 113, 114, 120, 160, 200, 300])
def test_layout_fills_the_width_and_keeps_the_target_readable(width: int) -> None:
    cols = fmt.layout(width, "UTC")
    assert [c.key for c in cols] == [
        "time",
        "proto",
        "method",
        "target",
        "status",
        "latency",
        "src",
        "dst",
        "size",
    ]
    total = sum(c.width for c in cols) + fmt.GAP * (len(cols) - 1)
    target = next(c for c in cols if c.key == "target")
    assert target.width >= fmt.TARGET_MIN
    if width >= 100:
        assert total == width
    assert fmt.has_date(cols) == (width >= 114)
    assert cols[0].title == ("time (UTC)" if fmt.has_date(cols) else "time")


def test_fit_cuts_with_an_ellipsis_and_counts_wide_characters() -> None:
    assert fmt.fit("abcdef", 4) == "abc…"
    assert fmt.fit("ab", 4) == "ab  " and fmt.fit("ab", 4, right=True) == "  ab"
    assert fmt.fit("日本語", 4) == "日 …"  # a wide character never straddles the cut
    from rich.cells import cell_len

    assert cell_len(fmt.fit("日本語です", 7)) == 7


def test_the_caret_points_at_the_position_in_short_and_long_filters() -> None:
    assert fmt.caret_lines("http and status >=", 18, 80) == ("http and status >=", " " * 18 + "^")
    text = "src.workload == " + '"' + "x" * 80 + '" and status >= ' + "y" * 60
    for position in range(0, len(text) + 1, 7):
        line, caret = fmt.caret_lines(text, position, 40)
        assert len(line) <= 40
        col = caret.index("^")
        if position < len(text):
            assert line[col] == text[position], (position, line, caret)
        else:
            assert col == len(line)


# ---- quick filters, judged by what they select


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return [c for f in FILES for c in dissect_path(f)]


def _select(calls: list[Call], text: str) -> list[str]:
    f = parse(text)
    return [c.id for c in calls if f.matches(c)]


def test_same_server_and_same_target_select_what_they_say(calls: list[Call]) -> None:
    for call in calls[::7]:
        server = same_server(call)
        assert server is not None
        assert call.id in _select(calls, server)
        assert _select(calls, server) == [
            c.id for c in calls if (c.dst.ip, c.dst.port) == (call.dst.ip, call.dst.port)
        ]
        target = same_target(call)
        if call.target is None:
            assert target is None
            continue
        assert target is not None
        assert _select(calls, target) == [
            c.id for c in calls if c.protocol == call.protocol and c.target == call.target
        ]


def test_quick_filters_quote_any_value() -> None:
    odd = 'we"ird \\ name\n'
    call = _call(target=odd, dst=Endpoint(workload=f"Deployment/{odd}", namespace="n s"))
    other = _call(id="t/2", target="x", dst=Endpoint(workload="Deployment/x", namespace="n s"))
    for text in (same_server(call), same_target(call)):
        assert text is not None
        f = parse(text)
        assert f.matches(call) and not f.matches(other)


def test_combine_is_the_conjunction(calls: list[Call]) -> None:
    for current in ("", "http or dns", "not kafka", "(grpc)", 'target ~ "a|b"'):
        for extra in (ERRORS, "dns", "status == 0"):
            text = combine(current, extra)
            want = set(_select(calls, current)) & set(_select(calls, extra))
            assert set(_select(calls, text)) == want, text
    assert combine("http", "http") == "http"
    assert combine("a == 1 and b == 2", "b == 2") == "a == 1 and b == 2"
    assert combine("http", ERRORS) == f"http and ({ERRORS})"
    assert combine(f"http and ({ERRORS})", ERRORS) == f"http and ({ERRORS})"
    assert combine('target == "x or y"', "dns") == 'target == "x or y" and dns'


# ---- filter history


def test_history_walks_back_and_forth_and_returns_to_the_draft() -> None:
    h = FilterHistory()
    for t in ("a", "b", "c", "b"):
        h.add(t)
    assert h.entries == ["a", "c", "b"]
    assert [h.previous("draft"), h.previous("x"), h.previous("x"), h.previous("x")] == ["b", "c", "a", None]
    assert [h.next(), h.next(), h.next(), h.next()] == ["c", "b", "draft", None]


def test_history_is_bounded_and_persisted(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "filter_history"
    h = FilterHistory(path, limit=5)
    for i in range(40):
        h.add(f"status == {i}")
    assert h.entries == [f"status == {i}" for i in range(35, 40)]
    again = FilterHistory(path, limit=5)
    assert again.entries == h.entries and again.problem is None
    for i in range(40, 400):
        h.add(f"status == {i}")
    assert path.stat().st_size < 2 * 5 * 200 + 100  # rewritten when it grew past the bound


def test_an_unusable_history_file_costs_only_the_persistence(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    h = FilterHistory(tmp_path / "dir")  # a directory: cannot be read or appended to
    assert h.problem is not None and "filter history" in h.problem
    h.add("dns")
    assert h.entries == ["dns"]
