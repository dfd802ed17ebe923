"""Fixtures for identity tests against the project's real Kubernetes lab (see tests/k8slab/README.md).

Every test under tests/identity/ that uses the lab (the `kube` fixture, directly or through `sim`
or `namespace`) is marked here, so a new test file cannot forget:
  * ``k8slab``: `make test` runs these in their own phase, after the main suite, in one process;
  * ``root`` and ``slow``: the lab runs etcd and the control plane as root;
  * ``xdist_group("identity")``: one xdist worker runs them all, in one lab, one after another;
  * ``timeout(300, func_only=True)`` unless the test sets its own: the timeout covers the test
    body only, because the session fixture's first `up` may build the lab for 5-7 minutes. That
    setup is bounded by its own timeout instead (K8S_LAB_UP_TIMEOUT, default 1200 s) and fails
    with the build log's tail, never hangs.

Environment: K8S_LAB_DIR (default /var/tmp/k8s-lab: the build cache is reused between runs),
K8S_LAB_KEEP=1 leaves the lab running after the session (the next session reuses it in ~1 s).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.identity.kube import Lab, SimKubelet, create_namespace, lab_session, mark_lab_items

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_lab_items(items, HERE)


@pytest.fixture(scope="session")
def kube() -> Iterator[Lab]:
    """The running lab (control plane only), shared by the session; `down` at the end unless K8S_LAB_KEEP=1.

    Not os.environ: KUBECONFIG is passed explicitly (lab.env(), lab.kubeconfig) so that tests of other
    groups that later run in this xdist worker never see a cluster they did not ask for.
    """
    with lab_session() as lab:
        print(f"k8s lab up in {lab.up_seconds:.1f}s: {lab.api_url}", file=sys.stderr)
        yield lab


@pytest.fixture(scope="session")
def sim(kube: Lab) -> Iterator[SimKubelet]:
    """Two fake Ready nodes (InternalIPs 10.0.0.11/12) and a simulated kubelet (pod IPs from 10.244.0.0/16).

    Pods reach these nodes only with ``nodeSelector=sim.node_selector`` (kube.deployment() etc. take it).
    """
    kubelet = SimKubelet(kube).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture
def namespace(kube: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, deleted (without waiting) afterwards."""
    ns = create_namespace(kube, "t-" + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()))
    yield ns
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
