"""`podshark` as a user runs it: a real subprocess, real files, exit codes and output streams."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dissect.model import Call
from tests.conftest import FIXTURES, REPO

PIPELINED = FIXTURES / "http1__zeek_pipelined-requests.pcap"


def podshark(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "podshark", *args], cwd=REPO, capture_output=True, input=stdin, timeout=120
    )


def test_help_lists_commands_and_options() -> None:
    top = podshark("--help")
    assert top.returncode == 0 and b"dissect" in top.stdout
    sub = podshark("dissect", "--help")
    assert sub.returncode == 0
    for opt in (b"--json", b"--no-bodies", b"--progress", b"--max-body"):
        assert opt in sub.stdout


def test_no_command_prints_usage_and_exits_2() -> None:
    r = podshark()
    assert r.returncode == 2 and b"usage: podshark" in r.stderr


def test_table_shows_one_line_per_call() -> None:
    r = podshark("dissect", str(PIPELINED))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[:5] == ["TIME", "PROTO", "METHOD", "TARGET", "STATUS"]
    rows = [line for line in lines[1:] if not line.startswith("#")]
    # the Zeek capture's five pipelined GETs (see fixtures/pcaps/PROVENANCE.tsv), all answered 200
    assert len(rows) == 5
    assert all(" GET " in row and " 200 " in row for row in rows)
    assert "/style/enhanced.css" in rows[0]


def test_json_lines_are_call_records() -> None:
    r = podshark("dissect", str(PIPELINED), "--json")
    assert r.returncode == 0, r.stderr
    calls = [Call.from_json(line) for line in r.stdout.splitlines()]
    assert len(calls) == 5
    assert all(c.response is not None and c.response.body for c in calls)
    nb = podshark("dissect", str(PIPELINED), "--json", "--no-bodies")
    assert b'"body"' not in nb.stdout and nb.stdout.count(b"\n") == 5


def test_progress_bar_goes_to_stderr_only() -> None:
    r = podshark("dissect", str(FIXTURES / "http1__zeek_206_example_b.pcap"), "--progress", "always")
    assert r.returncode == 0
    assert b"\r" not in r.stdout
    assert b"calls from" in r.stderr


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`podshark dissect big.pcap | head -1` ends quietly."""
    cmd = f"{sys.executable} -m podshark dissect {FIXTURES / 'http1__zeek_bro.org.pcap'} --json | head -c 10"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, capture_output=True, timeout=120)
    assert b"Traceback" not in r.stderr
    assert r.returncode == 0, r.stderr


def test_bad_size_argument_says_what_to_write() -> None:
    r = podshark("dissect", str(PIPELINED), "--max-body", "lots")
    assert r.returncode == 2 and b"not a size" in r.stderr


def test_table_fits_targets_to_a_terminal_and_keeps_columns_aligned() -> None:
    import io

    from dissect.engine import dissect_path
    from podshark.dissect_cmd import TableWriter

    calls = list(dissect_path(FIXTURES / "http1__zeek_zero-length-bodies-with-drops.pcap"))
    assert any(len(c.target or "") > 200 for c in calls)  # the capture's ad-server URLs are long
    buf = io.StringIO()
    w = TableWriter(buf, target_width=30)
    for c in calls:
        w.write(c)
    w.close()
    rows = [r for r in buf.getvalue().splitlines() if not r.startswith("#")]
    status_col = rows[0].index("STATUS")
    for r in rows[1:]:
        assert r[status_col : status_col + 6].strip().isdigit(), r  # STATUS sits under its heading
    assert any("…" in r for r in rows)
    whole = io.StringIO()
    w = TableWriter(whole)  # a pipe: targets whole, for grep
    for c in calls:
        w.write(c)
    w.close()
    assert all((c.target or "-") in whole.getvalue() for c in calls)
