"""`podshark open FILE --no-ui`: an embedded hub loaded from a capture, used as a user would.

A real `podshark open` process: it prints the hub's URL and token, `podshark calls` against that
URL gives exactly the dissector's calls for the capture, Ctrl-C (SIGINT) stops it cleanly, and
opening the same file again with the same store finds everything already there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dissect.engine import dissect_path
from tests.conftest import FIXTURES, REPO

CAPTURE = FIXTURES / "http1__zeek_pipelined-requests.pcap"


def _open(db: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "PODSHARK_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "podshark", "open", str(CAPTURE), "--db", str(db), "--no-ui"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while "token" not in seen:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"open ended early ({proc.wait()}): {err}")
        key, _, value = line.partition(":")
        seen[key.strip()] = value.strip()
        assert time.monotonic() < deadline
    return proc, seen


def _calls(url: str, token: str) -> list[dict[str, object]]:
    r = subprocess.run(
        [sys.executable, "-m", "podshark", "calls", "--hub", url, "--json"],
        cwd=REPO,
        env={**os.environ, "PODSHARK_TOKEN": token},
        capture_output=True,
        timeout=120,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_open_no_ui_serves_the_capture_until_ctrl_c(tmp_path: Path) -> None:
    expect = sorted(c.id for c in dissect_path(CAPTURE))
    db = tmp_path / "db"
    for attempt in range(2):  # the second open finds the calls already stored
        proc, seen = _open(db)
        try:
            assert seen["hub"].startswith("http://127.0.0.1:")
            assert len(seen["token"]) >= 20
            got = _calls(seen["hub"], seen["token"])
            assert sorted(str(c["id"]) for c in got) == expect, attempt
            # the token is required
            r = subprocess.run(
                [sys.executable, "-m", "podshark", "calls", "--hub", seen["hub"]],
                cwd=REPO,
                env={**os.environ, "PODSHARK_TOKEN": "wrong"},
                capture_output=True,
                timeout=60,
            )
            assert r.returncode != 0
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
    assert any(p.name.startswith("calls-") for p in db.iterdir())


def test_open_a_missing_file_says_so(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "podshark", "open", str(tmp_path / "nope.pcap"), "--no-ui"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert r.returncode == 2 and "no such capture file" in r.stderr
