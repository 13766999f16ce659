"""Tests in this directory need a real NVIDIA GPU: they are marked ``gpu`` and skipped without one."""

from __future__ import annotations

import pytest

from tests.gpu.probe import cuda_unavailable_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/gpu/" not in item.nodeid.replace("\\", "/"):
            continue
        item.add_marker(pytest.mark.gpu)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None or "tests/gpu/" not in item.nodeid.replace("\\", "/"):
        return
    reason = cuda_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
