"""``podshark open FILE --keylog KEYS --no-ui``: the embedded hub serves the decrypted calls.

A real ``podshark open`` process on the committed captures (fixtures/pcaps/tls/, made by
`tests.tlskeys.lab.write_fixtures`): it prints the hub's URL and token, and ``podshark calls --json``
against it must give the decrypted calls — the transactions tshark finds with the same key log, the
bodies the lab served — as ``podshark dissect`` would. The pcapng with a Decryption Secrets Block
opens decrypted without ``--keylog``. Runs without root (the captures are files).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, REPO
from tests.tlskeys.lab import FIXTURES as TLS_FIXTURES
from tests.tlskeys.lab import Fixture, plan
from tests.tlskeys.oracle import check_decrypted, check_variant, tls_oracle, tshark_missing_reason

pytestmark = [
    pytest.mark.tshark,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.xdist_group("tlskeys"),
    pytest.mark.skipif(tshark_missing_reason() is not None, reason=tshark_missing_reason() or ""),
]

TLS_DIR = FIXTURES / "tls"
KEYED = next(f for f in TLS_FIXTURES if f.keys is not None and f.variant.endswith("-h2"))
DSB = next(f for f in TLS_FIXTURES if f.dsb)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PODSHARK_TOKEN"}


class OpenProc:
    """``podshark open FILE [--keylog KEYS] --db DIR --no-ui``, read until it printed hub and token;
    stopped with SIGINT (Ctrl-C) on exit, as a user stops it."""

    def __init__(self, pcap: Path, keys: Path | None, db: Path) -> None:
        args = [sys.executable, "-m", "podshark", "open", str(pcap), "--db", str(db), "--no-ui"]
        if keys is not None:
            args += ["--keylog", str(keys)]
        self.proc = subprocess.Popen(
            args, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.seen: dict[str, str] = {}

    def __enter__(self) -> OpenProc:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while "token" not in self.seen:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"podshark open ended early ({self.proc.wait()}): {err.strip()[-1200:]}")
            key, _, value = line.partition(":")
            self.seen[key.strip()] = value.strip()
            assert time.monotonic() < deadline, "podshark open printed no token within 120 s"
        return self

    def calls(self) -> list[dict[str, Any]]:
        res = subprocess.run(
            [sys.executable, "-m", "podshark", "calls", "--hub", self.seen["hub"], "--json"],
            cwd=REPO,
            env={**_env(), "PODSHARK_TOKEN": self.seen["token"]},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise
        if exc[0] is None:
            assert code == 0, f"podshark open exited {code} on Ctrl-C"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "db"


@pytest.mark.parametrize("fx", [KEYED, DSB], ids=lambda f: f.file)
def test_open_serves_the_decrypted_calls(fx: Fixture, db: Path) -> None:
    pcap = TLS_DIR / fx.file
    keys = None if fx.keys is None else TLS_DIR / fx.keys
    oracle = tls_oracle(pcap, keys)
    truth = plan(small=True)
    check_variant(oracle, fx.find_variant(), truth)
    with OpenProc(pcap, keys, db) as op:
        assert op.seen["hub"].startswith("http://127.0.0.1:")
        calls = op.calls()
    for t in truth:
        check_decrypted(calls, oracle.one(t.sni), t, f"podshark open {fx.file}")
    assert len(calls) == sum(len(t.exchanges) for t in truth)


def test_open_with_a_missing_keylog_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.keys"
    res = subprocess.run(
        [sys.executable, "-m", "podshark", "open", str(TLS_DIR / KEYED.file), "--keylog", str(missing),
         "--db", str(tmp_path / "db"), "--no-ui"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert str(missing) in res.stderr
    assert "token" not in res.stdout  # it never served
