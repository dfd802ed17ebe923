"""How `podshark worker` treats its Kubernetes options when there is no usable API (no lab needed).

An explicit `--kubeconfig` that cannot be used stops the worker at once with exit code 2 and a line
saying what to do; the in-cluster default (KUBERNETES_SERVICE_HOST set, as in every pod) without a
mounted ServiceAccount only warns, and the worker captures without Kubernetes identity, saying why
in its stats.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.capture.test_worker import PODSHARK, WorkerProc, _worker_state
from tests.hub.test_service import REPO, _env, start_hub

pytestmark = [pytest.mark.root]


def test_an_unusable_kubeconfig_stops_the_worker_with_what_to_do(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: [}\n")
    for path, says in ((tmp_path / "missing", "does not exist"), (bad, "is not usable")):
        r = subprocess.run(
            [PODSHARK, "worker", "--hub", "http://127.0.0.1:9", "--interface", "lo",
             "--state-dir", str(tmp_path / "state"), "--kubeconfig", str(path)],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        error = [x for x in r.stderr.splitlines() if x.startswith("podshark: error:")]
        assert len(error) == 1 and str(path) in error[0] and says in error[0], r.stderr[-2000:]


def test_in_a_pod_without_a_service_account_the_worker_captures_on(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "db", tmp_path / "hub.log")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    worker = WorkerProc(hub, "lo", tmp_path / "state", tmp_path / "worker.log", env=env)
    try:
        deadline = time.monotonic() + 60
        k8s: dict[str, object] = {}
        while time.monotonic() < deadline and not k8s:
            assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
            k8s = ((_worker_state(hub) or {}).get("reported") or {}).get("kubernetes") or {}
            time.sleep(0.3)
        assert k8s.get("enabled") is False, k8s
        assert "in-cluster" in str(k8s.get("reason")) and "--kubeconfig" in str(k8s.get("reason")), k8s
        assert worker.stop() == 0
    finally:
        worker.stop()
        hub.stop()
