"""Shared test configuration: Hypothesis profiles and markers that skip with a reason.

HYPOTHESIS_PROFILE=ci (set by `make test`) bounds example counts so the whole suite fits the
45-minute budget on a 2-core machine; `dev` is the default for quick local runs; `deep` is for
hunting bugs by hand.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures" / "pcaps"
CORPUS = REPO.parent / "shared" / "corpus"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_tshark = shutil.which("tshark") is None
    not_root = os.geteuid() != 0
    for item in items:
        if no_tshark and "tshark" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="tshark is not installed (make test installs it)"))
        if not_root and "root" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root for network namespaces and capture"))


@pytest.fixture(autouse=True)
def _main_thread_event_loop() -> Iterator[None]:
    """pyshark asks for the main thread's event loop with `asyncio.get_event_loop()`. After any test
    that used `asyncio.run()` (the hub tests) there is none, and that call raises; give each test one
    if the previous test in this worker left none."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield
