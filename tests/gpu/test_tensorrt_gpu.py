"""TensorRT end to end on a real GPU: build, cache, run, and agree with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.engines.onnxruntime import OnnxRuntimeBackend
from edge_agent.manifest import load_manifest
from tests import model_factory
from tests.gpu.probe import tensorrt_unavailable_reason

# FP32 TensorRT kernels reorder sums; this tiny model stays far inside it.
ATOL = 1e-4


@pytest.fixture(autouse=True)
def _needs_tensorrt() -> None:
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def test_engine_matches_onnxruntime_and_is_cached_when_built_on_the_gpu(tmp_path: Path) -> None:
    from edge_agent.engines.tensorrt import tensorrt_provider

    component = model_factory.write_component(tmp_path / "models", "seg", "segmentation")
    manifest = load_manifest(component)
    provider = tensorrt_provider(cache_dir=tmp_path / "cache", workspace_bytes=64 << 20)
    try:
        result = provider.build_ahead(manifest)
        assert result.built and result.plan_path.is_file()
        backend = provider.create(manifest)
        report = backend.load()
        assert report.source == "engine-cache"
        reference = OnnxRuntimeBackend(manifest.model_file)
        reference.load()
        image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
        got, want = backend.infer({"image": image}), reference.infer({"image": image})
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, atol=ATOL)
        backend.unload()
    finally:
        provider.close()
