"""The lab fixtures of tests/identity (the project's real Kubernetes control plane), shared here.

Tests that use `kube` are marked like tests/identity's (`k8slab`, `root`, `slow`, one xdist group),
so `make test` runs them in the lab phase, one after another, in one lab.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.identity.conftest import kube, namespace
from tests.identity.kube import mark_lab_items

__all__ = ["kube", "namespace"]

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_lab_items(items, HERE)
