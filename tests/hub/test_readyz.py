"""`/readyz`: 503 with the reason while the hub's store cannot commit, 200 again once it can.

The Kubernetes manifests use it as the hub's readiness probe (manifests/hub.yaml), so a hub that
cannot write its directory (a volume owned by another user, a full disk) shows as not ready and
`podshark tap` says so, instead of a Running pod that acknowledges nothing. To make the real store
fail, the hub runs as root without CAP_DAC_OVERRIDE (setpriv drops it from the bounding set) over a
directory that then becomes another user's; giving the directory back lets the next commit
through. `/healthz` (liveness) stays 200 throughout: restarting would not help.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.hub.test_service import FILES, REPO, _env, _free_port, hub_argv

pytestmark = [pytest.mark.root]


def probe(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:  # not listening yet
        return 0, {}


def wait_status(url: str, status: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    got: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < deadline:
        got = probe(url)
        if got[0] == status:
            return got[1]
        time.sleep(0.2)
    raise AssertionError(f"{url}: wanted {status}, last {got}")


def test_readyz_reports_a_store_that_cannot_commit(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed; make test installs it")
    db = tmp_path / "db"
    db.mkdir()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *hub_argv(db, port)]
    log = tmp_path / "hub.log"
    imports: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        hub = subprocess.Popen(argv, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_status(url + "/healthz", 200)
        assert probe(url + "/readyz") == (200, {"ok": True})

        os.chown(
            db, 65534, 65534
        )  # nobody's now, mode 0755: the hub (root without DAC_OVERRIDE) cannot add files
        db.chmod(0o755)
        for path in FILES[:1]:
            imports.append(
                subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "podshark"), "import", str(path),
                     "--hub", url],
                    cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        body = wait_status(url + "/readyz", 503)
        assert (
            body["ok"] is False and "cannot commit" in body["error"] and "ermission denied" in body["error"]
        ), body
        assert probe(url + "/healthz")[0] == 200

        os.chown(db, 0, 0)  # given back: the next commit goes through
        ok = subprocess.run(
            [str(REPO / ".venv" / "bin" / "podshark"), "import", str(FILES[1]), "--hub", url],
            cwd=REPO, env=_env(), capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert wait_status(url + "/readyz", 200) == {"ok": True}
    finally:
        for p in imports:
            p.kill()
            p.wait()
        hub.terminate()
        hub.wait(20)
