"""The TensorRT backend, run against the fake CUDA device and the fake ``tensorrt`` module.

One conformance suite runs the same cases on every backend (ONNX Runtime; TensorRT
on the fake GPU; TensorRT on a real GPU where one is usable, marked ``gpu``).
The rest covers the GPU path's failure modes: build, cache hit, stale and corrupt
plans, shipped plans, memory admission, concurrency, contexts, killed builds.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edge_agent_pb2 as pb2
from edge_agent.backends import OnnxRuntimeProvider, select_provider
from edge_agent.constants import DEFAULT_MAX_BATCH
from edge_agent.engine_cache import EngineCache
from edge_agent.engines.base import Backend
from edge_agent.engines.fakes.cuda import FakeCudaDriver
from edge_agent.engines.onnxruntime import OnnxRuntimeBackend
from edge_agent.engines.tensorrt import (
    BuildOptions,
    EngineBuilder,
    TensorRTBackend,
    TensorRTProvider,
    engine_key,
    fake_gpu_provider,
    parse_bytes,
)
from edge_agent.errors import (
    BackendUnavailableError,
    InferenceError,
    InvalidArgumentError,
    ManifestError,
    ModelLoadError,
    ResourceExhaustedError,
)
from edge_agent.imaging import frame_from_bytes
from edge_agent.inference import ModelRunner
from edge_agent.manifest import Manifest, load_manifest
from edge_agent.models import ModelManager, ModelState
from tests import model_factory
from tests.conftest import start_agent
from tests.gpu.probe import tensorrt_unavailable_reason

MIB = 2**20
# What "matches ONNX Runtime" means. The fake runs ONNX Runtime itself (exact); real TensorRT FP32
# kernels reorder sums, which stays well inside this on these models.
CONFORMANCE_ATOL = 1e-4
CONFORMANCE_RTOL = 1e-4
# FP16 engines keep about three significant digits.
FP16_ATOL = 2e-2
WORKSPACE_BYTES = 16 * MIB
GREY = model_factory.grey_frame(128, 96)
RED_PATCH = model_factory.with_patch(GREY, 16, 16, 32, 24, (255, 0, 0))
GREEN_PATCH = model_factory.with_patch(GREY, 60, 40, 30, 30, (0, 200, 0))


def fake_provider(cache_dir: Path, total: int | str = "512MiB", **options: object) -> TensorRTProvider:
    options.setdefault("build_in_subprocess", False)
    options.setdefault("workspace_bytes", WORKSPACE_BYTES)
    return fake_gpu_provider(total, cache_dir, **options)  # type: ignore[arg-type]


def fake_driver(provider: TensorRTProvider) -> FakeCudaDriver:
    driver = provider.runtime.device.driver
    assert isinstance(driver, FakeCudaDriver)
    return driver


def reference_outputs(manifest: Manifest, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    backend = OnnxRuntimeBackend(manifest.model_file, intra_op_threads=1)
    with backend:
        return backend.infer(feeds)


def random_image(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, size, size), dtype=np.float32)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    model_factory.write_component(directory, "seg", "segmentation")
    model_factory.write_component(directory, "cls", "classification")
    model_factory.write_component(directory, "multi", "multiclass")
    return directory


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[TensorRTProvider]:
    made = fake_provider(tmp_path / "cache")
    yield made
    made.close()


# -- conformance: the same cases on every backend ---------------------------------------------


@pytest.fixture(params=["onnxruntime", "tensorrt-fake", pytest.param("tensorrt-gpu", marks=pytest.mark.gpu)])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Manifest], Backend]]:
    if request.param == "onnxruntime":
        yield OnnxRuntimeProvider(intra_op_threads=1).create
        return
    if request.param == "tensorrt-fake":
        made = fake_provider(tmp_path / "cache")
    else:
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        from edge_agent.engines.tensorrt import tensorrt_provider

        made = tensorrt_provider(cache_dir=tmp_path / "cache", workspace_bytes=64 * MIB,
                                 build_in_subprocess=False)
    yield made.create
    made.close()


@pytest.mark.parametrize("kind", ["segmentation", "classification", "multiclass"])
def test_outputs_match_onnxruntime_when_run_on_each_backend(make_backend, kind: str, tmp_path: Path) -> None:
    component = model_factory.write_component(tmp_path / "models", kind, kind)
    manifest = load_manifest(component)
    backend = make_backend(manifest)
    with backend:
        for seed in range(3):
            feeds = {"image": random_image(seed)}
            got, want = backend.infer(feeds), reference_outputs(manifest, feeds)
            assert set(got) == set(want)
            for name, value in want.items():
                assert got[name].shape == value.shape and got[name].dtype == value.dtype
                np.testing.assert_allclose(got[name], value, atol=CONFORMANCE_ATOL, rtol=CONFORMANCE_RTOL)


@pytest.mark.parametrize("image, anomalous", [(GREY, False), (RED_PATCH, True), (GREEN_PATCH, False)])
def test_detections_agree_with_onnxruntime_when_run_on_each_backend(
    make_backend, models: Path, image: np.ndarray, anomalous: bool,
) -> None:
    manifest = load_manifest(models / "seg")
    frame = frame_from_bytes(image.shape[1], image.shape[0], image.tobytes())
    with make_backend(manifest) as backend, OnnxRuntimeBackend(manifest.model_file) as reference:
        got = ModelRunner(manifest, backend).detect(frame)
        want = ModelRunner(manifest, reference).detect(frame)
    assert got.is_anomalous is want.is_anomalous is anomalous
    assert got.confidence == pytest.approx(want.confidence, abs=CONFORMANCE_ATOL)
    assert got.mask is not None and want.mask is not None
    assert (got.mask != want.mask).mean() < 0.001  # a pixel or two may flip at the threshold on a GPU


# -- build and cache --------------------------------------------------------------------------


class BuildCounter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.count += 1


def test_second_load_deserializes_the_cached_engine_when_the_model_was_built(tmp_path: Path,
                                                                            models: Path) -> None:
    builds = BuildCounter()
    provider = fake_provider(tmp_path / "cache", build_hook=builds)
    manifest = load_manifest(models / "seg")
    first = provider.create(manifest)
    assert first.load().source == "engine-built"
    first.unload()
    second = provider.create(manifest)
    assert second.load().source == "engine-cache"
    second.unload()
    assert builds.count == 1
    entry = provider.cache.lookup(engine_key(provider.runtime, provider.cache, manifest.model_file,
                                             provider.options_for(manifest)))
    assert entry is not None
    meta = json.loads(provider.cache.metadata_path(entry.key).read_text())
    assert meta["key"]["gpu_name"] == "Fake GPU" and meta["key"]["tensorrt_version"] == "10.3.0"
    assert meta["plan_bytes"] == entry.plan_path.stat().st_size and meta["build_seconds"] >= 0
    assert meta["loaded_bytes"] == first.report.memory_bytes  # type: ignore[union-attr]
    assert meta["device_memory_bytes"] > 0


def test_restart_deserializes_instead_of_building_when_the_cache_holds_the_engine(tmp_path: Path,
                                                                                 models: Path) -> None:
    manifest = load_manifest(models / "seg")
    with fake_provider(tmp_path / "cache").create(manifest) as backend:
        assert backend.report.source == "engine-built"  # type: ignore[union-attr]
    builds = BuildCounter()
    restarted = fake_provider(tmp_path / "cache", build_hook=builds)  # a new process: a fresh device
    with restarted.create(manifest) as backend:
        assert backend.report.source == "engine-cache"  # type: ignore[union-attr]
    assert builds.count == 0


def test_build_persists_a_timing_cache_per_device_when_it_builds(provider: TensorRTProvider,
                                                                 models: Path) -> None:
    with provider.create(load_manifest(models / "seg")):
        pass
    files = list((provider.cache.root / "timing").glob("*.cache"))
    assert [f.name for f in files] == ["Fake_GPU-sm8.7-trt10.3.0.cache"]
    with provider.create(load_manifest(models / "cls")):
        pass
    data = json.loads(files[0].read_bytes().split(b"\x00", 1)[1])
    assert len(data["entries"]) == 2  # both models' tactics, merged


def _replace_plan(cache: EngineCache, provider: TensorRTProvider, manifest: Manifest, plan: bytes) -> None:
    """Puts ``plan`` in the model's cache entry, metadata updated so only deserialization can tell."""
    key = engine_key(provider.runtime, cache, manifest.model_file, provider.options_for(manifest))
    entry = cache.lookup(key)
    assert entry is not None
    entry.plan_path.write_bytes(plan)
    cache.update(entry, plan_bytes=len(plan))


def _plan_from(tmp_path: Path, manifest: Manifest, **fake: object) -> bytes:
    other = fake_provider(tmp_path / "other-cache", **fake)
    result = other.build_ahead(manifest)
    return result.plan_path.read_bytes()


@pytest.mark.parametrize("fake, log_text", [
    ({"tensorrt_version": "10.2.0"}, "expecting library version 10.3.0 got 10.2.0"),
    ({"compute_capability": (7, 2)}, "incompatible device, expecting compute 8.7 got compute 7.2"),
])
def test_stale_cache_entry_is_deleted_and_rebuilt_when_the_plan_is_from_elsewhere(
    tmp_path: Path, models: Path, caplog: pytest.LogCaptureFixture, fake: dict[str, object], log_text: str,
) -> None:
    provider = fake_provider(tmp_path / "cache")
    manifest = load_manifest(models / "seg")
    provider.build_ahead(manifest)
    _replace_plan(provider.cache, provider, manifest, _plan_from(tmp_path, manifest, **fake))
    caplog.set_level(logging.WARNING, logger="edge_agent.engine_cache")
    with provider.create(manifest) as backend:
        assert backend.report.source == "engine-built"  # type: ignore[union-attr]
        np.testing.assert_allclose(backend.infer({"image": random_image(1)})["score"],
                                   reference_outputs(manifest, {"image": random_image(1)})["score"])
    assert any("deleting entry" in r.message and log_text in r.message for r in caplog.records), caplog.text


@pytest.mark.parametrize("corrupt", [
    pytest.param(lambda plan: b"", id="empty"),
    pytest.param(lambda plan: plan[: len(plan) // 2], id="truncated"),
    pytest.param(lambda plan: bytes(len(plan)), id="zeros"),
    pytest.param(lambda plan: plan[:-7] + b"garbage", id="tail-garbage"),
])
def test_corrupt_cache_entry_is_rebuilt_when_loaded(tmp_path: Path, models: Path,
                                                    corrupt: Callable[[bytes], bytes]) -> None:
    provider = fake_provider(tmp_path / "cache")
    manifest = load_manifest(models / "seg")
    result = provider.build_ahead(manifest)
    plan = result.plan_path.read_bytes()
    result.plan_path.write_bytes(corrupt(plan))  # metadata still says the old size
    with provider.create(manifest) as backend:
        assert backend.report.source == "engine-built"  # type: ignore[union-attr]
    # Now the sizes agree: only TensorRT can tell.
    _replace_plan(provider.cache, provider, manifest, corrupt(plan))
    with provider.create(manifest) as backend:
        assert backend.report.source == "engine-built"  # type: ignore[union-attr]
        assert backend.infer({"image": random_image(2)})["anomaly_map"].shape == (1, 1, 64, 64)


def test_shipped_plan_loads_when_it_was_built_for_this_device(tmp_path: Path, models: Path) -> None:
    provider = fake_provider(tmp_path / "cache")
    manifest = load_manifest(models / "seg")
    shutil.copy(provider.build_ahead(manifest).plan_path, models / "seg" / "model.plan")
    data = json.loads((models / "seg" / "manifest.json").read_text())
    data["model_file"] = "model.plan"
    (models / "seg" / "manifest.json").write_text(json.dumps(data))
    shipped = load_manifest(models / "seg")
    assert provider.build_ahead(shipped).built is False
    with provider.create(shipped) as backend:
        assert backend.report.source == "engine-shipped"  # type: ignore[union-attr]
        feeds = {"image": random_image(3)}
        np.testing.assert_allclose(backend.infer(feeds)["anomaly_map"],
                                   reference_outputs(manifest, feeds)["anomaly_map"])


@pytest.mark.parametrize("fake, expected", [
    ({"tensorrt_version": "8.6.1"}, r"expecting library version 10\.3\.0 got 8\.6\.1"),
    ({"compute_capability": (8, 6), "gpu_name": "RTX 3090"}, r"expecting compute 8\.7 got compute 8\.6"),
])
def test_shipped_plan_fails_with_versions_and_advice_when_built_elsewhere(
    tmp_path: Path, models: Path, fake: dict[str, object], expected: str,
) -> None:
    manifest = load_manifest(models / "seg")
    (models / "seg" / "model.engine").write_bytes(_plan_from(tmp_path, manifest, **fake))
    data = json.loads((models / "seg" / "manifest.json").read_text())
    data["model_file"] = "model.engine"
    (models / "seg" / "manifest.json").write_text(json.dumps(data))
    provider = fake_provider(tmp_path / "cache")
    manager = ModelManager([models], provider)
    try:
        manager.start("seg")
        assert manager.wait_for("seg", [ModelState.RUNNING, ModelState.FAILED], 30) is ModelState.FAILED
        message = manager.describe("seg").status_message
    finally:
        manager.close()
    assert "TensorRT 10.3.0 cannot load this engine plan" in message
    assert "Rebuild the plan on this device" in message
    assert __import__("re").search(expected, message), message
    assert fake_driver(provider).snapshot() == (0, 0, 0, 0)


def test_load_fails_naming_the_parser_error_when_the_onnx_file_is_garbage(provider: TensorRTProvider,
                                                                          models: Path) -> None:
    (models / "seg" / "model.onnx").write_bytes(b"\x08\x07not an onnx model at all")
    with pytest.raises(ModelLoadError, match="ONNX parser rejects this model"):
        provider.create(load_manifest(models / "seg")).load()


def test_load_fails_when_a_dynamic_height_has_no_size_to_take(provider: TensorRTProvider,
                                                              tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["image"], ["out"])], "dyn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, "h", "w"])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    backend = TensorRTBackend(path, runtime=provider.runtime, builder=provider.builder,
                              options=BuildOptions())
    with pytest.raises(ModelLoadError, match="dimension 2 is dynamic"):
        backend.load()
    hinted = TensorRTBackend(path, runtime=provider.runtime, builder=provider.builder,
                             options=BuildOptions(input_shape=(1, 3, 32, 48)))
    with hinted:
        out = hinted.infer({"image": np.ones((1, 3, 32, 48), np.float32)})["out"]
    assert out.shape == (1, 3, 32, 48)


# -- TensorRT versions and FP16 ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["8.5.2", "8.6.1", "10.0.1", "10.3.0", "11.0.0"])
def test_engine_runs_when_the_tensorrt_api_is_that_of(version: str, tmp_path: Path, models: Path) -> None:
    provider = fake_provider(tmp_path / "cache", tensorrt_version=version)
    manifest = load_manifest(models / "multi")
    trt = provider.runtime.trt
    assert hasattr(trt.BuilderFlag, "FP16") is (int(version.split(".")[0]) < 11)
    with provider.create(manifest) as backend:
        feeds = {"image": random_image(4)}
        want = reference_outputs(manifest, feeds)["classes"]
        np.testing.assert_allclose(backend.infer(feeds)["classes"], want)
        assert backend.report.memory_bytes > 0  # type: ignore[union-attr]


def _with_fp16(models: Path, value: object) -> Manifest:
    data = json.loads((models / "seg" / "manifest.json").read_text())
    data["fp16"] = value
    (models / "seg" / "manifest.json").write_text(json.dumps(data))
    return load_manifest(models / "seg")


@pytest.mark.parametrize("version, fast_fp16, expect_fp16", [
    ("10.3.0", True, True), ("10.3.0", False, False), ("11.0.0", True, False),
])
def test_fp16_is_used_only_when_allowed_and_supported(tmp_path: Path, models: Path, version: str,
                                                      fast_fp16: bool, expect_fp16: bool) -> None:
    manifest = _with_fp16(models, True)
    provider = fake_provider(tmp_path / "cache", tensorrt_version=version, fast_fp16=fast_fp16)
    result = provider.build_ahead(manifest)
    assert result.metadata is not None and result.metadata.fp16 is expect_fp16
    with provider.create(manifest) as backend:
        feeds = {"image": random_image(5)}
        np.testing.assert_allclose(backend.infer(feeds)["anomaly_map"], reference_outputs(manifest, feeds)[
            "anomaly_map"], atol=FP16_ATOL)


def test_fp16_stays_off_when_the_manifest_does_not_allow_it(provider: TensorRTProvider, models: Path) -> None:
    result = provider.build_ahead(load_manifest(models / "seg"))
    assert result.metadata is not None and result.metadata.fp16 is False


def test_manifest_fp16_must_be_a_boolean(provider: TensorRTProvider, models: Path) -> None:
    with pytest.raises(ManifestError, match="'fp16' must be true or false"):
        provider.create(_with_fp16(models, "yes"))


# -- memory --------------------------------------------------------------------------------------


def test_unload_frees_every_allocation_when_the_model_stops(provider: TensorRTProvider, models: Path) -> None:
    driver = fake_driver(provider)
    baseline = driver.snapshot()
    for _ in range(3):
        backend = provider.create(load_manifest(models / "seg"))
        report = backend.load()
        used = driver.snapshot()
        assert used[0] > 0 and used[3] == provider.contexts_per_model  # one stream per execution context
        assert report.memory_bytes >= used[0]
        backend.unload()
        assert driver.snapshot() == baseline
    backend.unload()  # harmless twice


def test_load_fails_and_frees_what_it_took_when_the_gpu_runs_out(tmp_path: Path, models: Path) -> None:
    manifest = load_manifest(models / "seg")
    fake_provider(tmp_path / "cache").build_ahead(manifest)  # built on a roomy device
    small = fake_provider(tmp_path / "cache", total=300 * 1024, contexts_per_model=2)
    driver = fake_driver(small)
    with pytest.raises(ModelLoadError, match="(?i)memory"):
        small.create(manifest).load()
    assert driver.snapshot() == (0, 0, 0, 0)
    assert small.cache.lookup(engine_key(small.runtime, small.cache, manifest.model_file,
                                         small.options_for(manifest))) is not None  # not the plan's fault


def test_build_fails_naming_memory_when_the_workspace_cannot_fit(tmp_path: Path, models: Path) -> None:
    tiny = fake_provider(tmp_path / "cache", total=512 * 1024)
    with pytest.raises(ModelLoadError, match="not enough GPU memory"):
        tiny.build_ahead(load_manifest(models / "seg"))


def test_estimate_comes_from_the_cache_then_the_manifest_then_file_sizes(provider: TensorRTProvider,
                                                                         models: Path) -> None:
    manifest = load_manifest(models / "seg")
    onnx_size = manifest.model_file.stat().st_size
    assert provider.estimate_bytes(manifest) == onnx_size + WORKSPACE_BYTES
    data = json.loads((models / "seg" / "manifest.json").read_text())
    data["memory_bytes"] = 5 * MIB
    (models / "seg" / "manifest.json").write_text(json.dumps(data))
    declared = load_manifest(models / "seg")
    assert provider.estimate_bytes(declared) == 5 * MIB
    with provider.create(declared) as backend:
        held = backend.report.memory_bytes  # type: ignore[union-attr]
    assert provider.estimate_bytes(declared) == held


def test_memory_info_reports_the_fake_device_when_asked(tmp_path: Path) -> None:
    provider = fake_provider(tmp_path / "cache", total="128MiB")
    info = provider.memory_info()
    assert (info.total_bytes, info.free_bytes, info.source) == (128 * MIB, 128 * MIB, "cuMemGetInfo")


def test_concurrent_start_models_answer_resource_exhausted_when_the_gpu_is_full(tmp_path: Path) -> None:
    models = tmp_path / "models"
    manifest = model_factory.base_manifest()
    manifest["memory_bytes"] = 20 * MIB
    names = [f"m{i}" for i in range(5)]
    for name in names:
        model_factory.write_component(models, name, manifest=manifest)
    gate = threading.Event()
    provider = fake_provider(tmp_path / "cache", total="64MiB", build_hook=lambda: gate.wait(30))
    manager = ModelManager([models], provider, loader_threads=2)
    try:
        def start(name: str) -> str:
            try:
                manager.start(name)
                return "started"
            except ResourceExhaustedError as exc:
                return str(exc)

        with ThreadPoolExecutor(max_workers=5) as pool:
            outcomes = dict(zip(names, pool.map(start, names), strict=True))
        started = [n for n, o in outcomes.items() if o == "started"]
        refused = {n: o for n, o in outcomes.items() if o != "started"}
        assert len(started) == 3, outcomes  # 3 x 20 MiB fit in 64 MiB; a 4th does not
        for name, message in refused.items():
            assert "needs about 20.0 MiB" in message and "reserved by models starting" in message
            assert manager.describe(name).state is ModelState.STOPPED  # unchanged
        gate.set()
        for name in started:
            assert manager.wait_for(name, [ModelState.RUNNING, ModelState.FAILED], 30) is ModelState.RUNNING
        late = next(iter(refused))
        manager.start(late)  # the loaded models hold far less than they reserved
        assert manager.wait_for(late, [ModelState.RUNNING, ModelState.FAILED], 30) is ModelState.RUNNING
        for name in [*started, late]:
            manager.stop(name)
        assert fake_driver(provider).snapshot() == (0, 0, 0, 0)
    finally:
        gate.set()
        manager.close()


# -- concurrency and CUDA contexts -------------------------------------------------------------


def test_concurrent_infers_get_their_own_results_when_many_threads_share_a_model(provider: TensorRTProvider,
                                                                               models: Path) -> None:
    manifest = load_manifest(models / "seg")
    images = [random_image(seed) for seed in range(12)]
    expected = [reference_outputs(manifest, {"image": image}) for image in images]
    with provider.create(manifest) as backend:
        def run(index: int) -> None:
            for _ in range(5):
                got = backend.infer({"image": images[index]})
                for name, value in expected[index].items():
                    np.testing.assert_allclose(got[name], value, atol=CONFORMANCE_ATOL)

        with ThreadPoolExecutor(max_workers=12) as pool:
            list(pool.map(run, range(12)))


def test_infer_fails_with_invalid_context_when_the_context_is_not_made_current(
    provider: TensorRTProvider, models: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import contextlib

    backend = provider.create(load_manifest(models / "seg"))
    with backend:
        device = provider.runtime.device
        monkeypatch.setattr(device, "activate", lambda: contextlib.nullcontext(device))  # the bug: no push
        with pytest.raises(InferenceError, match="CUDA_ERROR_INVALID_CONTEXT"):
            backend.infer({"image": random_image(0)})
        monkeypatch.undo()
        assert backend.infer({"image": random_image(0)})["score"].shape == (1,)


def test_execute_fails_like_tensorrt_when_no_context_is_current(provider: TensorRTProvider,
                                                                models: Path) -> None:
    trt, device = provider.runtime.trt, provider.runtime.device
    plan = provider.build_ahead(load_manifest(models / "seg")).plan_path.read_bytes()
    logged: list[str] = []

    class Recorder(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: object, msg: str) -> None:
            logged.append(msg)

    runtime = trt.Runtime(Recorder())
    assert runtime.deserialize_cuda_engine(plan) is None  # no current context
    assert "invalid device context" in logged[-1]
    with device.activate():
        engine = runtime.deserialize_cuda_engine(plan)
        context = engine.create_execution_context()
        stream = device.stream_create()
        buffers = {engine.get_tensor_name(i): device.malloc(1 << 16) for i in range(engine.num_io_tensors)}
        assert context.set_input_shape("image", (1, 3, 64, 64))
        assert not context.execute_async_v3(device.stream_handle(stream))  # addresses not set
        assert "Address is not set for input tensor image" in logged[-1]
        for name, buffer in buffers.items():
            assert context.set_tensor_address(name, buffer.address)
        beyond = DEFAULT_MAX_BATCH + 1  # the profile's batch goes up to the manifest's batching.max_batch
        assert not context.set_input_shape("image", (beyond, 3, 64, 64))  # outside the profile
        assert "does not satisfy any optimization profiles" in logged[-1]
        assert context.execute_async_v3(device.stream_handle(stream))
    assert not context.execute_async_v3(device.stream_handle(stream))  # outside activate()
    assert "invalid device context" in logged[-1]
    with device.activate():
        for buffer in buffers.values():
            device.free(buffer)
        device.stream_destroy(stream)
        del context, engine
    assert fake_driver(provider).snapshot() == (0, 0, 0, 0)


# -- building in a child process ----------------------------------------------------------------


def test_build_ahead_builds_in_a_child_process_and_the_load_only_deserializes(tmp_path: Path,
                                                                            models: Path) -> None:
    provider = fake_provider(tmp_path / "cache", build_in_subprocess=True)
    manifest = load_manifest(models / "seg")
    assert provider.needs_build(manifest)
    result = provider.build_ahead(manifest)
    assert result.built and result.plan_path.is_file() and result.metadata is not None
    assert result.metadata.device_memory_bytes > 0  # the child measured it
    assert not provider.needs_build(manifest)
    assert provider.build_ahead(manifest).built is False
    builds = BuildCounter()
    provider.runtime.trt.Builder._world.build_hook = builds  # type: ignore[attr-defined]
    with provider.create(manifest) as backend:
        assert backend.report.source == "engine-cache"  # type: ignore[union-attr]
    assert builds.count == 0


def test_start_model_fails_naming_sigkill_when_the_build_child_is_killed(tmp_path: Path,
                                                                        models: Path) -> None:
    fake_provider(tmp_path / "cache").build_ahead(load_manifest(models / "seg"))  # seg is cached already
    provider = fake_provider(tmp_path / "cache", build_in_subprocess=True,
                             kill_build_child_with=signal.SIGKILL)
    manager = ModelManager([models], provider)
    try:
        manager.start("seg")
        manager.start("cls")
        assert manager.wait_for("cls", [ModelState.RUNNING, ModelState.FAILED], 60) is ModelState.FAILED
        message = manager.describe("cls").status_message
        assert "killed by SIGKILL" in message and "OOM killer" in message
        assert manager.wait_for("seg", [ModelState.RUNNING, ModelState.FAILED], 30) is ModelState.RUNNING
        with manager.serving("seg") as runner:  # the agent keeps serving the others
            frame = frame_from_bytes(128, 96, RED_PATCH.tobytes())
            assert runner.detect(frame).is_anomalous
    finally:
        manager.close()


def test_prebuild_async_shares_one_build_when_asked_twice(tmp_path: Path, models: Path) -> None:
    gate = threading.Event()
    builds = BuildCounter()

    def hook() -> None:
        builds()
        gate.wait(30)

    provider = fake_provider(tmp_path / "cache", build_hook=hook)
    manifest = load_manifest(models / "seg")
    first, second = provider.prebuild_async(manifest), provider.prebuild_async(manifest)
    assert first is second
    gate.set()
    assert first.result(30).built
    assert builds.count == 1
    provider.close()


def test_build_engines_reports_each_component_when_run_over_a_models_dir(provider: TensorRTProvider,
                                                                         models: Path) -> None:
    from edge_agent.engines.tensorrt import build_engines

    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{")
    outcomes = dict(build_engines(provider, [models]))
    assert sorted(outcomes) == ["broken", "cls", "multi", "seg"]
    assert isinstance(outcomes["broken"], ManifestError)
    assert all(getattr(outcomes[name], "built", False) for name in ("cls", "multi", "seg"))


def test_engine_builder_refuses_an_unwritable_cache_with_advice(provider: TensorRTProvider, models: Path,
                                                                tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("file")
    builder = EngineBuilder(provider.runtime, EngineCache(blocker / "cache"), in_subprocess=False)
    with pytest.raises(ModelLoadError, match="--cache-dir"):
        builder.build(models / "seg" / "model.onnx", BuildOptions(input_shape=(1, 3, 64, 64)), "seg")


# -- choosing the backend, sizes, versions -------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("512MiB", 512 * MIB), ("2GiB", 2 << 30), ("1.5G", int(1.5 * 2**30)), ("300MB", 300_000_000),
    ("4096", 4096), ("64k", 65536), (" 8 MiB ", 8 * MIB), (1234, 1234),
])
def test_parse_bytes_reads_sizes_when_written_with_units(text: str | int, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "lots", "12XB", "-5MiB"])
def test_parse_bytes_rejects_text_that_is_not_a_size(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_bytes(text)


def test_select_provider_falls_back_to_onnxruntime_when_tensorrt_is_not_usable() -> None:
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT is usable here")
    provider = select_provider("auto", intra_op_threads=1)
    assert provider.kind == "onnxruntime"
    assert "TensorRT is not usable here" in provider.description  # type: ignore[attr-defined]
    with pytest.raises(BackendUnavailableError, match=r"edge-agent\[gpu\]|NVIDIA driver|CUDA"):
        select_provider("tensorrt")


def test_auto_serves_on_onnxruntime_when_neither_tensorrt_nor_a_cuda_binding_imports(
    monkeypatch: pytest.MonkeyPatch, models: Path,
) -> None:
    import sys

    for module in ("tensorrt", "pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.driver",
                   "cuda.cuda"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail, as if not installed
    provider = select_provider("auto", intra_op_threads=1)
    assert provider.kind == "onnxruntime"
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-agent\[gpu\]'"):
        select_provider("tensorrt")
    manager = ModelManager([models], provider)
    try:
        manager.start("seg")
        assert manager.wait_for("seg", [ModelState.RUNNING, ModelState.FAILED], 30) is ModelState.RUNNING
    finally:
        manager.close()


def test_select_provider_runs_tensorrt_on_the_fake_gpu_when_fake_memory_is_given(tmp_path: Path) -> None:
    provider = select_provider("auto", fake_gpu_memory="128MiB", cache_dir=tmp_path / "cache")
    assert isinstance(provider, TensorRTProvider)
    assert provider.memory_info().total_bytes == 128 * MIB
    expected = {"tensorrt", "cuda_driver", "cuda_runtime", "gpu", "compute_capability"}
    assert set(provider.versions()) >= expected
    with pytest.raises(BackendUnavailableError, match="drop one"):
        select_provider("onnxruntime", fake_gpu_memory="128MiB")
    with pytest.raises(BackendUnavailableError, match="Unknown backend 'cuda'"):
        select_provider("cuda")


def test_detect_anomalies_runs_on_the_fake_gpu_when_served_over_grpc(models: Path, short_tmp: Path,
                                                                     tmp_path: Path) -> None:
    provider = fake_provider(tmp_path / "cache")
    agent = start_agent([models], short_tmp, provider=provider)
    try:
        description = agent.start_and_wait("seg")
        assert description.status == pb2.RUNNING, description.status_message
        assert "tensorrt" in description.status_message
        request = pb2.DetectAnomaliesRequest(model_component="seg", bitmap=pb2.Bitmap(
            width=128, height=96, byte_data=RED_PATCH.tobytes()))
        result = agent.stub.DetectAnomalies(request).detect_anomaly_result
        assert result.is_anomalous and 0.5 <= result.confidence <= 1.0
        mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8).reshape(96, 128, 3)
        assert np.all(mask[20:36, 20:44] == (255, 0, 0))
        request.bitmap.byte_data = GREY.tobytes()
        assert not agent.stub.DetectAnomalies(request).detect_anomaly_result.is_anomalous
        agent.stub.StopModel(pb2.StopModelRequest(model_component="seg"))
        assert fake_driver(provider).snapshot() == (0, 0, 0, 0)
    finally:
        agent.channel.close()
        agent.agent.stop(grace_s=1.0)
        provider.close()
