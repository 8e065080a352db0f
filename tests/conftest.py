"""Shared fixtures. Format-specific builders live in the library (mcard.formats.*)."""

from __future__ import annotations

import pytest

from mcard.core.arch import tiny_config


@pytest.fixture
def tiny_cfg() -> dict:
    """A small llama config whose dimensions every format can quantize."""
    return tiny_config()


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` unless CuPy sees a CUDA device."""
    try:
        import cupy

        has_gpu = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
