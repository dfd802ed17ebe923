"""``python -m bench [names...]``: run all or the named benchmarks and update BENCHMARKS.md.

Each benchmark owns one section of BENCHMARKS.md between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``; a run rewrites only the sections of the benchmarks it ran, so running one
benchmark never loses the figures of another. The old section is handed to the benchmark so it can keep
its history lines. Benchmarks are deliberately not tests (no ``test_*.py`` here): they take minutes,
need root for the capture and their outcome is a figure, not pass/fail.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench import (
    dns_kafka_dissect,
    flow_accounting,
    http1_dissect,
    http2_dissect,
    hub_aggregates,
    hub_ingest,
    hub_query,
    k8s_index,
    tls_keylog,
    tls_trace,
    worker_capture,
    worker_stages,
)

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"

#: name -> function(previous section or None, runs, regen) -> new section markdown.
Bench = Callable[..., str]
BENCHES: dict[str, tuple[Bench, str]] = {
    http1_dissect.NAME: (http1_dissect.run, http1_dissect.TITLE),
    http2_dissect.NAME: (http2_dissect.run, http2_dissect.TITLE),
    http2_dissect.GRPC_NAME: (http2_dissect.run_grpc, http2_dissect.GRPC_TITLE),
    dns_kafka_dissect.DNS_NAME: (dns_kafka_dissect.run_dns, dns_kafka_dissect.DNS_TITLE),
    dns_kafka_dissect.KAFKA_NAME: (dns_kafka_dissect.run_kafka, dns_kafka_dissect.KAFKA_TITLE),
    hub_ingest.NAME: (hub_ingest.run, hub_ingest.TITLE),
    hub_query.NAME: (hub_query.run, hub_query.TITLE),
    hub_aggregates.NAME: (hub_aggregates.run, hub_aggregates.TITLE),
    worker_capture.NAME: (worker_capture.run, worker_capture.TITLE),
    worker_stages.NAME: (worker_stages.run, worker_stages.TITLE),
    tls_trace.NAME: (tls_trace.run, tls_trace.TITLE),
    tls_keylog.NAME: (tls_keylog.run, tls_keylog.TITLE),
    k8s_index.NAME: (k8s_index.run, k8s_index.TITLE),
    flow_accounting.NAME: (flow_accounting.run, flow_accounting.TITLE),
}

HEADER = """\
# Benchmarks

Figures written by `python -m bench` (`make bench`); run `python -m bench NAME` to refresh one
benchmark. Each benchmark rewrites only its own section (between `<!-- bench:NAME -->` markers) and keeps
a short history of earlier runs. Captures are cached in `bench/out/` (`--regen` makes new ones).
See `bench/README.md` for what each benchmark measures.
"""


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def get_section(doc: str, name: str) -> str | None:
    """The text between the markers of ``name``, or None when the section does not exist yet."""
    start, end = _markers(name)
    m = re.search(re.escape(start) + r"\n?(.*?)" + re.escape(end), doc, flags=re.S)
    return m.group(1) if m else None


def put_section(doc: str, name: str, body: str) -> str:
    """``doc`` with the section of ``name`` replaced by ``body`` (appended when it is new)."""
    start, end = _markers(name)
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.S)
    if pattern.search(doc):
        return pattern.sub(lambda _m: block, doc, count=1)
    return f"{doc.rstrip()}\n\n{block}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHES)})")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool (median reported)")
    parser.add_argument("--regen", action="store_true", help="make new captures instead of reusing cached")
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave BENCHMARKS.md")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (_, title) in BENCHES.items():
            print(f"{name}\t{title}")
        return 0
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    failed = 0
    for name in args.names or list(BENCHES):
        fn, _ = BENCHES[name]
        doc = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
        try:
            body = fn(get_section(doc, name), runs=args.runs, regen=args.regen)
        except Exception as e:  # one broken benchmark must not stop the others
            print(f"bench {name}: FAILED: {e}", file=sys.stderr)
            failed += 1
            continue
        if not args.no_write:
            doc = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER  # edited meanwhile?
            BENCHMARKS_MD.write_text(put_section(doc, name, body))
            print(f"bench {name}: updated {BENCHMARKS_MD.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
