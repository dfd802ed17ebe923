"""hub/store.py on real DuckDB files in temporary directories: dedup, filters, paging, round trips,
retention that frees disk, restart and `kill -9` durability, hostile text."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dissect.filter import ip_to_int, parse
from dissect.model import Call, Endpoint, Flag, Message
from hub import schema
from hub.filter_sql import compile
from hub.store import HOUR, SECOND, Store, StoreError, _Gate, decode_cursor, encode_cursor

NOW = 1_763_700_000_000_000_000  # 2025-11-21T04:40:00Z
BASE = NOW - NOW % HOUR
MS = 1_000_000
ROOT = Path(__file__).resolve().parents[2]


def make_call(i: int, *, ts: int | None = None, id: str | None = None, body: bytes | None = None) -> Call:
    t = BASE + i * MS if ts is None else ts
    status = 503 if i % 5 == 0 else 200
    return Call(
        id=f"cap/{i:09d}" if id is None else id,
        protocol="http" if i % 4 else "grpc",
        tls=i % 3 == 0,
        sni="api.shop.svc" if i % 3 == 0 else None,
        src=Endpoint(
            ip=f"10.0.{i % 4}.{i % 250 + 1}",
            port=40000 + i,
            pod=f"client-{i % 3}",
            namespace="default",
            workload="Deployment/client",
            labels={"app": "client", "ver": str(i % 2)},
        ),
        dst=Endpoint(
            ip="fd00::10" if i % 7 == 0 else "10.96.0.10",
            port=8080,
            pod=f"api-{i % 2}",
            namespace="shop" if i % 2 else "pay",
            workload="Deployment/api",
            service="api",
            node="node-1",
            container="api",
            pid=4242,
            process="python3",
            labels={"app": "api", "tier": "backend"},
        ),
        request_ts=t,
        response_ts=t + 2 * MS + i,
        method="POST" if i % 2 else "GET",
        target=f"/api/v1/items/{i}?q=%27x%27",
        status=status,
        request=Message(
            headers=[
                ("Host", "api"),
                ("X-Id", str(i)),
                ("x-id", "dup"),
                ("Content-Type", "application/json"),
            ],
            trailers=[("grpc-status", "0")] if i % 4 == 0 else [],
            body=b'{"n": %d}' % i if body is None else body,
            body_size=9 if body is None else len(body),
            wire_size=120,
        ),
        response=Message(
            headers=[("Content-Type", "application/json"), ("Server", "gunicorn")],
            body=b"\x00\xff binary \xc3\x28 not utf-8 " + bytes(range(256)),
            body_size=275,
            wire_size=300,
            truncated=i % 6 == 0,
        ),
        info={"http_version": "1.1", "nested": {"k": [1, "two", None, True]}, "i": i},
        flags=[Flag.GAP, Flag.TRUNCATED] if i % 6 == 0 else [],
        flow_id=f"flow-{i // 3}",
    ).finish()


def stamped(c: Call, ingest_ts: int) -> Call:
    c.ingest_ts = ingest_ts
    return c


def ids(rows: list[tuple[object, ...]]) -> list[str]:
    return [Call.from_json(str(r[0])).id for r in rows]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db")
    yield s
    s.close()


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def test_add_stores_a_batch_and_dedups_by_id(store: Store) -> None:
    calls = [make_call(i) for i in range(200)]
    assert store.add(calls, NOW) == 200
    assert store.count() == 200
    # importing the same calls again stores nothing
    assert store.add([make_call(i) for i in range(200)], NOW + SECOND) == 0
    # an overlapping batch, with a duplicate inside it: only the new ids count, once
    again = [make_call(i) for i in range(150, 260)] + [make_call(255)]
    assert store.add(again, NOW + 2 * SECOND) == 60
    assert store.count() == 260
    # in a later partition too: the id is looked up in every partition
    assert store.add([make_call(i) for i in range(250, 270)], NOW + 2 * HOUR) == 10
    assert len(store.partitions()) == 2
    assert store.count() == 270
    assert store.count("id = ?", ["cap/000000255"]) == 1
    assert store.add([], NOW) == 0


def test_add_new_returns_exactly_the_calls_stored_now(store: Store) -> None:
    """What commit listeners see (live, /metrics, the aggregates): a resent batch is not new."""
    first = store.add_new([make_call(i) for i in range(100)], NOW)
    assert [c.id for c in first] == [make_call(i).id for i in range(100)]
    assert store.add_new([make_call(i) for i in range(100)], NOW + SECOND) == []
    again = store.add_new([make_call(i) for i in range(90, 120)] + [make_call(115)], NOW + 2 * SECOND)
    assert sorted(c.id for c in again) == [make_call(i).id for i in range(100, 120)]


def test_dedup_of_calls_without_timestamps(store: Store) -> None:
    half = make_call(1)
    half.request, half.request_ts = None, None
    half.flag(Flag.REQUEST_MISSING)
    half.finish()
    none = make_call(2)
    none.request_ts = none.response_ts = None
    none.finish()
    assert store.add([half, none], NOW) == 2
    assert store.add([make_call(3), half, none], NOW + HOUR) == 1
    assert store.count() == 3


def test_add_sets_ingest_ts(store: Store) -> None:
    c = make_call(1)
    store.add([c], NOW + 123)
    assert c.ingest_ts == NOW + 123
    assert store.count("ingest_ts = ?", [NOW + 123]) == 1


def test_get_returns_the_whole_call(store: Store) -> None:
    originals = [make_call(i) for i in range(12)]
    resp_only = make_call(100, id="resp-only")
    resp_only.request, resp_only.request_ts = None, None
    resp_only.flag(Flag.REQUEST_MISSING)
    resp_only.finish()
    req_only = make_call(101, id="req-only")
    req_only.response, req_only.response_ts, req_only.status = None, None, None
    req_only.flag(Flag.RESPONSE_MISSING)
    req_only.finish()
    empty = make_call(102, id="empty", body=b"")
    store.add([*originals, resp_only, req_only, empty], NOW)
    for c in [*originals, resp_only, req_only, empty]:
        got = store.get(c.id)
        assert got == c
        assert got is not None and got.to_json() == c.to_json()
    assert store.get("nope") is None


def test_query_returns_summaries_without_bodies(store: Store) -> None:
    store.add([make_call(i) for i in range(5)], NOW)
    rows, nxt = store.query()
    assert nxt is None and len(rows) == 5
    for (record,) in rows:
        assert '"body"' not in str(record)
        c = Call.from_json(str(record))
        assert c.request is not None and c.request.body == b""  # summary: no bodies
    rows, _ = store.query(columns=("id", "status", "request_body"))
    assert {r[0] for r in rows} == {f"cap/{i:09d}" for i in range(5)}
    with pytest.raises(StoreError):
        store.query(columns=("id; DROP TABLE calls",))
    with pytest.raises(StoreError):
        store.query(order="sideways")


@pytest.mark.parametrize(
    "text",
    [
        'status >= 500 and dst.namespace == "shop"',
        'method == "POST" and request.headers["x-id"] == "dup"',
        'protocol == "grpc" or tls == true',
        'request.body contains "1}"',
        "src.ip in 10.0.1.0/24",
        "info.i == 7 or (latency >= 2ms and status == 503)",
        'dst.labels["tier"] == "backend" and not ("gap" in flags)',
    ],
)
def test_query_with_a_compiled_filter_matches_the_predicate(store: Store, text: str) -> None:
    calls = [make_call(i) for i in range(60)]
    store.add(calls[:30], NOW)
    store.add(calls[30:], NOW + HOUR)  # two partitions
    f = parse(text, now_ns=NOW)
    where, params = compile(f)
    rows, _ = store.query(where, params, columns=("id",))
    want = {c.id for c in calls if f.matches(c)}
    assert {r[0] for r in rows} == want
    assert 0 < len(want) < 60


def test_paging_newest_first_is_stable_while_calls_arrive(store: Store) -> None:
    calls = [make_call(i) for i in range(50)]
    # ties on the start time are broken by id
    calls[10].request_ts = calls[11].request_ts
    store.add(calls, NOW)
    expect = sorted(calls, key=lambda c: (c.ts, c.id), reverse=True)
    seen: list[str] = []
    cursor: str | None = None
    n = 1000
    while True:
        rows, cursor = store.query(limit=7, cursor=cursor)
        seen += ids(rows)
        # newer calls keep arriving, and old duplicates
        store.add([make_call(n, ts=BASE + HOUR + n), make_call(3)], NOW + SECOND)
        n += 1
        if cursor is None:
            break
    assert seen == [c.id for c in expect]


def test_paging_oldest_first_reaches_the_calls_that_arrive(store: Store) -> None:
    store.add([make_call(i) for i in range(20)], NOW)
    seen: list[str] = []
    rows, cursor = store.query(limit=6, order="asc")
    seen += ids(rows)
    store.add([make_call(i) for i in range(20, 25)], NOW + SECOND)
    while cursor is not None:
        rows, cursor = store.query(limit=6, order="asc", cursor=cursor)
        seen += ids(rows)
    assert seen == [f"cap/{i:09d}" for i in range(25)]


def test_window_and_filter_with_paging(store: Store) -> None:
    store.add([make_call(i) for i in range(100)], NOW)
    where, params = compile(parse("status == 503"))
    got: list[str] = []
    cursor = None
    while True:
        rows, cursor = store.query(
            where, params, from_ns=BASE + 20 * MS, to_ns=BASE + 80 * MS, limit=4, cursor=cursor, order="asc"
        )
        got += ids(rows)
        if cursor is None:
            break
    assert got == [f"cap/{i:09d}" for i in range(20, 80) if i % 5 == 0]
    with pytest.raises(StoreError):
        store.query(limit=0)


def test_cursor_is_opaque_and_checked(store: Store) -> None:
    store.add([make_call(i) for i in range(3)], NOW)
    c = encode_cursor(BASE + 5, "a'b\"c/é")
    assert decode_cursor(c) == (BASE + 5, "a'b\"c/é")
    for bad in ["", "!!!", "bm90IGpzb24", encode_cursor(1, "x")[:-3]]:
        with pytest.raises(StoreError):
            store.query(limit=1, cursor=bad)


def test_hostile_ids_and_text_are_stored_literally(store: Store) -> None:
    nasty = [
        "x'; DROP TABLE calls; --",
        'q"uote\\back',
        "union select * from calls",
        "ünï\u2028cödé 🦈",
        "%_*?[]",
        "' OR 1=1 --",
    ]
    calls = [make_call(i, id=s) for i, s in enumerate(nasty)]
    calls[0].target = "/'); DELETE FROM calls; --"
    calls[1].dst.labels = {"k'\"": "v;--"}
    calls[2].request = Message(headers=[("X-Evil'", "'; DROP TABLE calls; --")], body=b"'; --")
    calls[3].info = {"'": {'"); --': "x"}}
    assert store.add(calls, NOW) == len(nasty)
    assert store.add(calls, NOW) == 0
    for c in calls:
        assert store.get(c.id) == c
    where, params = compile(parse('target == "/\'); DELETE FROM calls; --"'))
    rows, _ = store.query(where, params, columns=("id",))
    assert rows == [(nasty[0],)]
    assert store.count() == len(nasty)


def test_a_root_path_with_quotes(tmp_path: Path) -> None:
    root = tmp_path / 'it\'s a "dir"'
    with Store(root) as s:
        s.add([make_call(1)], NOW)
    with Store(root) as s:
        assert s.count() == 1


def test_reopen_sees_every_partition(tmp_path: Path) -> None:
    root = tmp_path / "db"
    with Store(root) as s:
        for h in range(3):
            s.add([make_call(i) for i in range(h * 10, h * 10 + 10)], NOW + h * HOUR)
    with Store(root) as s:
        assert len(s.partitions()) == 3
        assert s.count() == 30
        assert s.add([make_call(i) for i in range(30)], NOW + 3 * HOUR) == 0
        assert s.get("cap/000000015") == stamped(make_call(15), NOW + HOUR)


def test_retention_by_age_deletes_whole_files(tmp_path: Path) -> None:
    root = tmp_path / "db"
    with Store(root, retain_ns=2 * HOUR) as s:
        for h in range(5):
            s.add([make_call(i) for i in range(h * 100, h * 100 + 100)], NOW + h * HOUR)
        before = dir_bytes(root)
        assert len(list(root.glob("calls-*.duckdb"))) == 5
        now = NOW + 4 * HOUR
        dropped = s.enforce(now)
        # partitions whose whole hour is older than now - 2h are gone: hours 0 and 1 (h2 ends after)
        assert [p.name for p in dropped] == [s.partition_path(BASE + h * HOUR).name for h in (0, 1)]
        assert not any(p.exists() for p in dropped)
        assert len(list(root.glob("calls-*.duckdb"))) == 3
        assert not any(Path(f"{p}.wal").exists() for p in dropped)
        assert dir_bytes(root) < before
        assert s.count() == 300
        assert s.get("cap/000000050") is None
        # a dropped call can be stored again (it is new to the store)
        assert s.add([make_call(50)], now) == 1
    with Store(root) as s:
        assert len(s.partitions()) == 3


def test_retention_by_size_drops_oldest_but_never_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "db"
    with Store(root) as s:
        for h in range(6):
            s.add([make_call(i, body=os.urandom(200_000)) for i in range(h * 5, h * 5 + 5)], NOW + h * HOUR)
        assert s.enforce(NOW + 5 * HOUR) == []  # no limits, nothing dropped
    full = dir_bytes(root)
    assert full > 5_000_000
    with Store(root, max_bytes=4_000_000) as s:
        assert s.size_bytes() == full
        dropped = s.enforce(NOW + 5 * HOUR)
        assert dropped and dropped[0] == s.partition_path(BASE)
        assert s.size_bytes() <= 4_000_000
        assert dir_bytes(root) <= 4_000_000 < full
        left = s.partitions()
        assert left and left[-1].start_ns == BASE + 5 * HOUR
        assert s.count() == 5 * len(left)
        # the newest partition stays even when it alone is over the limit
        s.max_bytes = 1
        s.enforce(NOW + 5 * HOUR)
        assert [p.start_ns for p in s.partitions()] == [BASE + 5 * HOUR]
        assert s.count() == 5


def test_readers_run_beside_the_writer(store: Store) -> None:
    store.max_bytes = 1 << 40  # enforce() takes the exclusive gate (and checkpoints) but keeps all
    errors: list[BaseException] = []
    counts: list[list[int]] = [[], [], []]
    stop = threading.Event()

    def reader(mine: list[int]) -> None:
        try:
            while not stop.is_set():
                mine.append(store.count())
                store.query(limit=5)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(c,)) for c in counts]
    for t in threads:
        t.start()
    for k in range(20):
        store.add([make_call(i) for i in range(k * 50, k * 50 + 50)], NOW + k * (HOUR // 4))
        if k % 7 == 6:
            store.enforce(NOW + k * (HOUR // 4))
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    for mine in counts:  # each read sees committed data, never less than the read before
        assert mine and mine == sorted(mine)
    assert store.count() == 1000


_WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from hub.store import Store, SECOND
from tests.hub.test_store import make_call, NOW
store = Store(Path(sys.argv[1]), partition_ns=60 * SECOND)
n = 0
while True:
    batch = [make_call(i) for i in range(n, n + 500)]
    store.add(batch, NOW + n * SECOND // 100)
    n += 500
    print(n, flush=True)
"""


@pytest.mark.slow
def test_kill_9_loses_nothing_that_add_returned(tmp_path: Path) -> None:
    root = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER.format(tests=str(ROOT)), str(root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    acked = 0
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 20_000:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert acked >= 20_000, "the writer died early"
    assert any(p.name.endswith(".wal") for p in root.iterdir())  # it really was mid-flight
    with Store(root, partition_ns=60 * SECOND) as s:
        assert len(s.partitions()) > 1
        stored = s.count()
        assert stored >= acked
        assert stored % 500 == 0  # whole batches only: each add is one transaction
        assert s.count("id < ?", [f"cap/{acked:09d}"]) == acked
        last = s.get(f"cap/{acked - 1:09d}")
        assert last is not None and last.ingest_ts is not None
        assert last == stamped(make_call(acked - 1), last.ingest_ts)


def test_schema_layout_is_the_one_from_hub_schema(store: Store) -> None:
    store.add([make_call(1)], NOW)
    con = store._db.cursor()
    alias = store.partitions()[0].alias
    got = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = ? AND table_name = 'calls' ORDER BY ordinal_position",
        [alias],
    ).fetchall()
    con.close()
    assert [n for n, _ in got] == list(schema.COLUMN_NAMES)


# ---- the bulk path, `record`, partition spans, the gate

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_I64 = st.integers(-(1 << 63) + 1, (1 << 63) - 1)


def _endpoints() -> st.SearchStrategy[Endpoint]:
    return st.builds(
        Endpoint,
        ip=st.none() | st.sampled_from(["10.1.0.7", "fd00::1", "::ffff:10.0.0.1", "01.2.3.4", "nope", ""]),
        port=st.none() | st.integers(0, 65535),
        pod=st.none() | _TEXT,
        namespace=st.none() | _TEXT,
        pid=st.none() | _I64,
        process=st.none() | _TEXT,
        labels=st.dictionaries(_TEXT, _TEXT, max_size=3),
    )


def _messages() -> st.SearchStrategy[Message | None]:
    pairs = st.lists(st.tuples(_TEXT, _TEXT), max_size=3)
    return st.none() | st.builds(
        Message,
        headers=pairs,
        trailers=pairs,
        body=st.binary(max_size=16),
        body_size=_I64,
        wire_size=_I64,
        truncated=st.booleans(),
    )


@st.composite
def _calls(draw: st.DrawFn) -> list[Call]:
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        out.append(
            Call(
                id=f"h/{i}-" + draw(_TEXT),
                protocol=draw(st.sampled_from(["http", "grpc", "dns", "tls"])),
                tls=draw(st.booleans()),
                sni=draw(st.none() | _TEXT),
                src=draw(_endpoints()),
                dst=draw(_endpoints()),
                request_ts=draw(st.none() | st.integers(0, 1 << 62)),
                response_ts=draw(st.none() | st.integers(0, 1 << 62)),
                latency_ns=draw(st.none() | _I64),
                method=draw(st.none() | _TEXT),
                target=draw(st.none() | _TEXT),
                status=draw(st.none() | _I64),
                request=draw(_messages()),
                response=draw(_messages()),
                info=draw(
                    st.dictionaries(
                        _TEXT,
                        st.none() | st.booleans() | _I64 | _TEXT | st.lists(st.integers(), max_size=2),
                        max_size=3,
                    )
                ),
                flags=draw(st.lists(st.sampled_from(Flag.ALL), max_size=3, unique=True)),
                flow_id=draw(st.none() | _TEXT),
            )
        )
    return out


@settings(max_examples=40, deadline=None)
@given(batch=_calls())
def test_the_arrow_batch_holds_the_values_of_rows(batch: list[Call]) -> None:
    """The store's bulk path and the plain one (`rows`, checked against the filter language by
    tests/hub/test_filter_sql.py) give DuckDB the same rows."""
    for c in batch:
        c.ingest_ts = NOW
    con = duckdb.connect()
    try:
        con.execute(schema.create_table_sql("plain"))
        con.execute(schema.create_table_sql("bulk"))
        con.execute(schema.insert_sql("plain", len(batch)), schema.insert_params(schema.rows(batch)))
        table = schema.arrow_table(batch)
        con.register("batch", table)
        con.execute("INSERT INTO bulk SELECT * FROM batch")
        plain = con.execute("SELECT * FROM plain ORDER BY id").fetchall()
        bulk = con.execute("SELECT * FROM bulk ORDER BY id").fetchall()
    finally:
        con.close()
    assert bulk == plain


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=_calls())
def test_record_is_the_json_without_bodies_and_get_the_whole_call(tmp_path: Path, batch: list[Call]) -> None:
    with Store(tmp_path / f"db-{next(_DIRS)}") as s:
        s.add(batch, NOW)
        rows, _ = s.query(columns=("id", "record", "ts"))
        got = {r[0]: (r[1], r[2]) for r in rows}
        assert len(got) == len({c.id for c in batch})
        for c in batch:
            record, ts = got[c.id]
            assert record == c.to_json(bodies=False)
            assert ts == c.ts
            assert s.get(c.id) == c


_DIRS = itertools.count()


@pytest.mark.parametrize(
    "text",
    ["10.1.2.3", "0.0.0.0", "255.255.255.255", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1", "١.2.3.4",
     "1.2.3.+4", " 1.2.3.4", "1_0.2.3.4", "::1", "::ffff:1.2.3.4", "1.2.3.4 ", "", "...", "0.0.0.00"],
)  # fmt: skip
def test_the_ipv4_fast_path_agrees_with_ipaddress(text: str) -> None:
    fast = schema.ipv4_to_int(text)
    slow = ip_to_int(text)
    assert fast is None or fast == slow
    assert schema._ip_halves(text) == ((None, None) if slow is None else (slow >> 64, slow & (2**64 - 1)))


@given(st.text(alphabet="0123456789.x ", max_size=16))
def test_the_ipv4_fast_path_never_disagrees(text: str) -> None:
    fast = schema.ipv4_to_int(text)
    assert fast is None or fast == ip_to_int(text)
    if fast is None and ip_to_int(text) is not None:
        assert "." not in text or ":" in text  # only IPv6 is left to ipaddress


def test_pages_are_right_when_partitions_overlap_in_time(tmp_path: Path) -> None:
    """A partition is keyed by ingest time, so late calls land in newer partitions: the search that
    stops early at partition spans must still give exactly the sorted calls, page after page, both
    ways, with windows and filters, and again after reopening (spans read back from the files)."""
    rnd = random.Random(7)
    calls = [make_call(i, ts=BASE + rnd.randrange(3 * HOUR)) for i in range(400)]
    calls[5].request_ts = calls[6].request_ts  # a tie on the start time
    root = tmp_path / "db"
    with Store(root) as s:
        for k in range(0, 400, 40):  # ten batches, stored at random hours: spans overlap
            s.add(calls[k : k + 40], NOW + rnd.randrange(5) * HOUR)
        assert len(s.partitions()) > 2
    where, params = compile(parse("status == 503"))
    for reopened in (False, True):
        s = Store(root)
        try:
            if not reopened:
                s.add([make_call(999, ts=BASE - HOUR)], NOW + 7 * HOUR)  # an old call in a new partition
                calls.append(make_call(999, ts=BASE - HOUR))
            for order in ("desc", "asc"):
                for flt, want_calls in (("", calls), (where, [c for c in calls if c.status == 503])):
                    for window in ((None, None), (BASE + HOUR, BASE + 2 * HOUR)):
                        want = sorted(
                            (c for c in want_calls if _inside(c.ts, *window)),
                            key=lambda c: (c.ts, c.id),
                            reverse=order == "desc",
                        )
                        seen: list[str] = []
                        cursor = None
                        while True:
                            rows, cursor = s.query(
                                flt,
                                params if flt else (),
                                from_ns=window[0],
                                to_ns=window[1],
                                limit=7,
                                order=order,
                                cursor=cursor,
                                columns=("id",),
                            )
                            seen += [r[0] for r in rows]
                            if cursor is None:
                                break
                        assert seen == [c.id for c in want], (order, flt, window, reopened)
        finally:
            s.close()


def _inside(ts: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or ts >= lo) and (hi is None or ts < hi)


def test_retention_forgets_the_spans_of_dropped_partitions(tmp_path: Path) -> None:
    with Store(tmp_path / "db", retain_ns=HOUR) as s:
        s.add([make_call(i) for i in range(10)], NOW)
        s.add([make_call(i) for i in range(10, 20)], NOW + 3 * HOUR)
        s.enforce(NOW + 3 * HOUR)
        assert len(s.partitions()) == 1
        # the same calls again, now in a new partition: they are new to the store
        assert s.add([make_call(i) for i in range(10)], NOW + 4 * HOUR) == 10
        rows, _ = s.query(columns=("id",), order="asc")
        assert [r[0] for r in rows] == [f"cap/{i:09d}" for i in range(20)]
        assert set(s._span) == {p.alias for p in s.partitions()}


def test_a_waiting_writer_goes_before_new_readers() -> None:
    """Readers arriving back to back must not keep the writer (a new partition, retention) out."""
    gate = _Gate()
    events: list[str] = []
    first_in, release_first = threading.Event(), threading.Event()

    def first_reader() -> None:
        with gate.shared():
            first_in.set()
            release_first.wait(10)
            events.append("first reader out")

    def writer() -> None:
        with gate.exclusive():
            events.append("writer")

    def late_reader() -> None:
        with gate.shared():
            events.append("late reader")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    assert first_in.wait(10)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    while gate._waiting == 0:  # the writer is queued behind the first reader
        threading.Event().wait(0.001)
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    threads[2].join(0.2)
    assert threads[2].is_alive()  # the late reader waits behind the writer
    release_first.set()
    for t in threads:
        t.join(10)
    assert events == ["first reader out", "writer", "late reader"]
