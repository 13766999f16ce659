"""Dynamic batching: the batcher itself, the runner's choice of batch size, and batched serving.

The batcher tests hold the engine with an event, so which requests share a batch follows from
the order of events, never from timing. The runner and agent tests use real ONNX models run by
ONNX Runtime (and by the fake GPU's TensorRT), comparing batched answers with answers computed
one image at a time.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import CollectorRegistry

import edge_agent_pb2 as pb2
from edge_agent.backends import OnnxRuntimeProvider
from edge_agent.batching import DynamicBatcher, split_batch
from edge_agent.constants import DEFAULT_MAX_BATCH
from edge_agent.engines.onnxruntime import OnnxRuntimeBackend
from edge_agent.engines.tensorrt import fake_gpu_provider
from edge_agent.errors import InferenceError, ManifestError
from edge_agent.imaging import Frame
from edge_agent.inference import ModelRunner
from edge_agent.manifest import load_manifest, parse_manifest
from edge_agent.metrics import AgentMetrics
from edge_agent.models import ModelManager, ModelState
from tests import model_factory
from tests.conftest import start_agent

# -- the batcher ------------------------------------------------------------------------------


class GatedEngine:
    """Doubles its input; the first run blocks until released, so later requests pile up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[float]] = []
        self._lock = threading.Lock()
        self._first = True

    def __call__(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            first, self._first = self._first, False
            self.batches.append([float(v) for v in tensor.reshape(len(tensor), -1)[:, 0]])
        if first:
            self.entered.set()
            assert self.release.wait(30)
        return {"double": tensor * 2, "first": tensor.reshape(len(tensor), -1)[:, :1]}


def _wait_queued(batcher: DynamicBatcher, count: int) -> None:
    for _ in range(3000):
        if batcher.queued >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"only {batcher.queued} of {count} requests queued")


def _item(value: float) -> np.ndarray:
    return np.full((1, 2, 3), value, dtype=np.float32)


def test_requests_that_queue_behind_a_busy_slot_run_as_batches_in_arrival_order() -> None:
    engine = GatedEngine()
    batcher = DynamicBatcher(engine, max_batch=3, max_delay_s=0.0, concurrency=1, label="m")
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher.infer, _item(0))
        assert engine.entered.wait(30)
        later = []
        for value in range(1, 6):  # queued one at a time, so the arrival order is known
            later.append(pool.submit(batcher.infer, _item(value)))
            _wait_queued(batcher, value)
        engine.release.set()
        results = [first.result(30)] + [f.result(30) for f in later]
    assert engine.batches == [[0.0], [1.0, 2.0, 3.0], [4.0, 5.0]]
    assert [r.batch_size for r in results] == [1, 3, 3, 3, 2, 2]
    for value, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs["double"], _item(value) * 2)
        assert result.outputs["first"].shape == (1, 1)
        assert result.started >= result.enqueued
    assert batcher.queued == 0


def test_max_batch_one_is_a_first_come_first_served_queue() -> None:
    engine = GatedEngine()
    batcher = DynamicBatcher(engine, max_batch=1, max_delay_s=0.0, concurrency=1)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher.infer, _item(0))]
        assert engine.entered.wait(30)
        for value in (1, 2, 3):
            futures.append(pool.submit(batcher.infer, _item(value)))
            _wait_queued(batcher, value)
        engine.release.set()
        sizes = [f.result(30).batch_size for f in futures]
    assert engine.batches == [[0.0], [1.0], [2.0], [3.0]]
    assert sizes == [1, 1, 1, 1]


def test_a_queue_delay_waits_for_the_batch_to_fill() -> None:
    calls: list[int] = []

    def engine(tensor: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(tensor))
        return {"double": tensor * 2}

    # Nothing is busy, yet the first request waits (up to 30 s) until a second one arrives.
    batcher = DynamicBatcher(engine, max_batch=2, max_delay_s=30.0, concurrency=1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.infer, _item(1))
        _wait_queued(batcher, 1)
        second = pool.submit(batcher.infer, _item(2))
        assert first.result(30).batch_size == second.result(30).batch_size == 2
    assert calls == [2]


def test_a_short_queue_delay_runs_a_partial_batch_when_it_expires() -> None:
    calls: list[int] = []

    def engine(tensor: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(tensor))
        return {"double": tensor * 2}

    batcher = DynamicBatcher(engine, max_batch=8, max_delay_s=0.02, concurrency=1)
    result = batcher.infer(_item(3))
    assert result.batch_size == 1 and calls == [1]
    np.testing.assert_array_equal(result.outputs["double"], _item(6))


def test_every_request_of_a_failed_batch_gets_the_error_and_the_batcher_recovers() -> None:
    release = threading.Event()
    entered = threading.Event()
    state = {"calls": 0}

    def engine(tensor: np.ndarray) -> dict[str, np.ndarray]:
        state["calls"] += 1
        if state["calls"] == 1:
            entered.set()
            assert release.wait(30)
            return {"double": tensor * 2}
        if state["calls"] == 2:
            raise InferenceError("the engine broke")
        return {"double": tensor * 2}

    batcher = DynamicBatcher(engine, max_batch=4, max_delay_s=0.0, concurrency=1)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.infer, _item(0))
        assert entered.wait(30)
        failing = [pool.submit(batcher.infer, _item(v)) for v in (1, 2)]
        _wait_queued(batcher, 2)
        release.set()
        assert first.result(30).batch_size == 1
        for future in failing:
            with pytest.raises(InferenceError, match="the engine broke"):
                future.result(30)
    assert batcher.infer(_item(5)).outputs["double"][0, 0, 0] == 10.0


def test_two_slots_run_two_batches_side_by_side() -> None:
    both_running = threading.Barrier(2, timeout=30)
    sizes: list[int] = []

    def engine(tensor: np.ndarray) -> dict[str, np.ndarray]:
        sizes.append(len(tensor))
        if len(sizes) <= 2:
            both_running.wait()  # only returns if two inferences run at once
        return {"double": tensor * 2}

    batcher = DynamicBatcher(engine, max_batch=4, max_delay_s=0.0, concurrency=2)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(batcher.infer, [_item(1), _item(2)]))
    assert [r.outputs["double"][0, 0, 0] for r in results] == [2.0, 4.0]


@pytest.mark.parametrize("attempt", range(5))
def test_a_thread_only_runs_batches_holding_its_own_request_so_no_slot_idles(attempt: int) -> None:
    # Two slots, batches of one. R0 and R1 hold both slots; A then X queue. When R0 ends, only A's
    # thread may take A (were X's thread to run A, X would then wait for A's whole inference while
    # R1's slot, once free, had no thread to lead X). When R1 ends too, X starts while A still runs.
    gates = {item: threading.Event() for item in (0, 1, 10)}
    entered = {item: threading.Event() for item in (0, 1, 10, 20)}
    ran_by: dict[int, str] = {}

    def engine(tensor: np.ndarray) -> dict[str, np.ndarray]:
        item = int(tensor.reshape(-1)[0])
        ran_by[item] = threading.current_thread().name
        entered[item].set()
        if item in gates:
            assert gates[item].wait(30)
        return {"y": tensor.copy()}

    batcher = DynamicBatcher(engine, max_batch=1, max_delay_s=0.0, concurrency=2)
    threads = []

    def start(item: int) -> None:
        thread = threading.Thread(target=batcher.infer, args=(_item(item),), name=f"client{item}")
        thread.start()
        threads.append(thread)

    try:
        start(0)
        assert entered[0].wait(30)
        start(1)
        assert entered[1].wait(30)
        start(10)
        _wait_queued(batcher, 1)
        start(20)
        _wait_queued(batcher, 2)
        gates[0].set()
        assert entered[10].wait(30)
        gates[1].set()
        assert entered[20].wait(30), "X stayed queued with a slot free"
        assert not gates[10].is_set()  # A is still running
    finally:
        for gate in gates.values():
            gate.set()
        for thread in threads:
            thread.join(30)
    assert ran_by == {item: f"client{item}" for item in (0, 1, 10, 20)}
    assert batcher.queued == 0


def test_each_request_of_a_failed_batch_raises_its_own_copy_of_the_error() -> None:
    entered, release = threading.Event(), threading.Event()
    state = {"calls": 0}

    def engine(tensor: np.ndarray) -> dict[str, np.ndarray]:
        state["calls"] += 1
        if state["calls"] == 1:
            entered.set()
            assert release.wait(30)
            return {"y": tensor}
        raise InferenceError("model m: the engine broke")

    batcher = DynamicBatcher(engine, max_batch=4, max_delay_s=0.0, concurrency=1)
    errors: list[BaseException] = []

    def call(value: float) -> None:
        try:
            batcher.infer(_item(value))
        except InferenceError as exc:
            errors.append(exc)

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.infer, _item(0))
        assert entered.wait(30)
        failing = [pool.submit(call, v) for v in (1, 2, 3)]
        _wait_queued(batcher, 3)
        release.set()
        first.result(30)
        for future in failing:
            future.result(30)
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3
    assert {str(e) for e in errors} == {"model m: the engine broke"}
    assert all(type(e) is InferenceError for e in errors)


def test_split_batch_refuses_outputs_without_the_batch_first() -> None:
    outputs = {"score": np.zeros((3,), np.float32), "total": np.float32(1.0) * np.ones(())}
    with pytest.raises(InferenceError, match="'total' has shape \\[\\] for a batch of 3"):
        split_batch(outputs, 3, "m")
    parts = split_batch({"score": np.arange(3, dtype=np.float32)}, 3)
    assert [p["score"].tolist() for p in parts] == [[0.0], [1.0], [2.0]]


# -- the manifest -----------------------------------------------------------------------------


def _parse(tmp_path: Path, **fields: object) -> object:
    data = {**model_factory.base_manifest(), **fields}
    return parse_manifest(tmp_path, data).batching


def test_a_negative_zero_delay_reads_as_zero(tmp_path: Path) -> None:
    delay = _parse(tmp_path, batching={"max_queue_delay_ms": -0.0}).max_queue_delay_ms
    assert delay == 0.0 and str(delay) == "0.0"


def test_manifest_batching_defaults_and_forms(tmp_path: Path) -> None:
    default = _parse(tmp_path)
    assert (default.max_batch, default.max_queue_delay_ms, default.explicit) == (DEFAULT_MAX_BATCH, 0.0, False)
    assert _parse(tmp_path, batching=False).max_batch == 1
    assert _parse(tmp_path, batching=True).max_batch == DEFAULT_MAX_BATCH
    spec = _parse(tmp_path, batching={"max_batch": 8, "max_queue_delay_ms": 2.5})
    assert (spec.max_batch, spec.max_queue_delay_ms, spec.explicit) == (8, 2.5, True)


@pytest.mark.parametrize(("value", "message"), [
    ({"max_batch": 0}, "batching.max_batch' must be an integer from 1 to 64 (1: no batching)"),
    ({"max_batch": 65}, "batching.max_batch' must be an integer from 1 to 64"),
    ({"max_batch": 2.5}, "batching.max_batch' must be an integer"),
    ({"max_batch": True}, "batching.max_batch' must be an integer"),
    ({"max_queue_delay_ms": -1}, "batching.max_queue_delay_ms' must be a number of milliseconds from 0"),
    ({"max_queue_delay_ms": "soon"}, "batching.max_queue_delay_ms' must be a finite number"),
    ({"size": 4}, "'batching' may only hold max_batch and max_queue_delay_ms"),
    ("yes", "'batching' must be true, false or {\"max_batch\": N, \"max_queue_delay_ms\": D}"),
    (4, "'batching' must be true, false or"),
])
def test_manifest_batching_errors_name_the_field(tmp_path: Path, value: object, message: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(message)):
        _parse(tmp_path, batching=value)


# -- the runner on real models ----------------------------------------------------------------


def _component(models_dir: Path, name: str, batching: object = None, *, fixed_batch: bool = False,
               model: Callable[[Path], Path] | None = None) -> Path:
    directory = model_factory.write_component(models_dir, name, "segmentation")
    if fixed_batch:
        _fixed_batch_model(directory / "model.onnx")
    if model is not None:
        model(directory / "model.onnx")
    if batching is not None:
        data = json.loads((directory / "manifest.json").read_text())
        data["batching"] = batching
        (directory / "manifest.json").write_text(json.dumps(data))
    return directory


def _fixed_batch_model(path: Path) -> None:
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))


def _mixing_model(path: Path, size: int = 64) -> Path:
    """Batch-first outputs, but each image's map is shifted by the batch's mean: images mix."""
    weight = numpy_helper.from_array(model_factory.REDNESS.reshape(1, 3, 1, 1), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["redness"]),
        helper.make_node("ReduceMean", ["redness"], ["batch_mean"], axes=[0], keepdims=1),
        helper.make_node("Add", ["redness", "batch_mean"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, size, size])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])]
    graph = helper.make_graph(nodes, "mixing", inputs, outputs, initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _runner(directory: Path) -> ModelRunner:
    manifest = load_manifest(directory)
    backend = OnnxRuntimeBackend(manifest.model_file, intra_op_threads=1)
    backend.load()
    runner = ModelRunner(manifest, backend)
    runner.warm_up()
    return runner


def _frames(count: int, size: int = 64) -> list[Frame]:
    frames = []
    for index in range(count):
        pixels = model_factory.grey_frame(size, size, 100 + 10 * index)
        pixels = model_factory.with_patch(pixels, 4 * index, 8, 12, 10, (250, 20 + 5 * index, 30))
        frames.append(Frame(size, size, size * 3, pixels.reshape(-1)))
    return frames


def test_a_dynamic_batch_model_batches_and_answers_as_it_does_alone(tmp_path: Path) -> None:
    runner = _runner(_component(tmp_path, "batched", {"max_batch": 4, "max_queue_delay_ms": 1000}))
    alone = _runner(_component(tmp_path / "alone", "alone", False))
    assert runner.max_batch == 4
    assert "Dynamic batching up to 4 images (queue delay 1000 ms)" in runner.batching_note
    frames = _frames(4)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(runner.detect, frames))
    # The delay holds the first request until all four queued, so they ran as one batch.
    assert [d.times.batch_size for d in together] == [4, 4, 4, 4]
    for frame, batched in zip(frames, together, strict=True):
        single = alone.detect(frame)
        assert single.times.batch_size == 1
        assert batched.is_anomalous == single.is_anomalous
        assert batched.raw_score == pytest.approx(single.raw_score, abs=1e-5)
        assert batched.anomalies == single.anomalies
        np.testing.assert_array_equal(batched.mask, single.mask)
    assert runner.queued == 0
    runner.backend.unload()
    alone.backend.unload()


def test_a_fixed_batch_model_is_served_without_batching(tmp_path: Path) -> None:
    runner = _runner(_component(tmp_path, "fixed", {"max_batch": 8}, fixed_batch=True))
    assert runner.max_batch == 1
    assert "fixed batch of 1" in runner.batching_note and "batching\": false" in runner.batching_note
    quiet = _runner(_component(tmp_path / "b", "fixed-default", fixed_batch=True))
    assert quiet.max_batch == 1 and "fixed batch of 1" in quiet.batching_note
    assert "batching\": false" not in quiet.batching_note  # the manifest asked for nothing
    with ThreadPoolExecutor(3) as pool:
        sizes = [d.times.batch_size for d in pool.map(quiet.detect, _frames(3))]
    assert sizes == [1, 1, 1]


def test_batching_false_turns_it_off(tmp_path: Path) -> None:
    runner = _runner(_component(tmp_path, "off", False))
    assert runner.max_batch == 1 and "off (the manifest's batching)" in runner.batching_note


def test_a_model_that_mixes_images_in_a_batch_is_caught_at_load_and_served_one_by_one(tmp_path: Path) -> None:
    runner = _runner(_component(tmp_path, "mixing", model=_mixing_model))
    assert runner.max_batch == 1
    assert "differs from the same image alone" in runner.batching_note
    with ThreadPoolExecutor(3) as pool:
        detections = list(pool.map(runner.detect, _frames(3)))
    assert {d.times.batch_size for d in detections} == {1}


def test_an_output_without_the_batch_first_turns_batching_off(tmp_path: Path) -> None:
    def scalar_score(path: Path) -> Path:
        model = onnx.load(str(path))
        reduce = model.graph.node[1]
        reduce.ClearField("attribute")
        reduce.attribute.extend([helper.make_attribute("keepdims", 0)])  # over every axis: a scalar
        del model.graph.output[0].type.tensor_type.shape.dim[:]
        onnx.save(model, str(path))
        return path

    runner = _runner(_component(tmp_path, "scalar", model=scalar_score))
    assert runner.max_batch == 1
    assert "output 'score' is [] for a batch of 4 ([] for one image), not batch-first" in runner.batching_note
    assert "Set \"batching\": false in the manifest: the model then also loads without buffers" in (
        runner.batching_note)


# -- serving --------------------------------------------------------------------------------------


def test_concurrent_clients_share_batches_over_grpc_and_get_their_own_answers(tmp_path: Path,
                                                                             short_tmp: Path) -> None:
    models = tmp_path / "models"
    _component(models, "batched", {"max_batch": 4, "max_queue_delay_ms": 1000})
    _component(models, "alone", False)
    registry = CollectorRegistry()
    manager = ModelManager([models], OnnxRuntimeProvider(intra_op_threads=1, isolate_loads=False))
    running = start_agent([models], short_tmp, manager=manager,
                          metrics=AgentMetrics(registry, manager, manager.provider))
    try:
        description = running.start_and_wait("batched")
        assert description.status == pb2.RUNNING
        assert "Dynamic batching up to 4 images" in description.status_message
        assert "off (the manifest's batching)" in running.start_and_wait("alone").status_message
        frames = [f.data.reshape(64, 64, 3) for f in _frames(4)]

        def detect(model: str, pixels: np.ndarray) -> pb2.DetectAnomalyResult:
            request = pb2.DetectAnomaliesRequest(model_component=model, bitmap=pb2.Bitmap(
                width=64, height=64, byte_data=pixels.tobytes()))
            return running.stub.DetectAnomalies(request, timeout=60).detect_anomaly_result

        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda pixels: detect("batched", pixels), frames))
        for pixels, batched in zip(frames, together, strict=True):
            single = detect("alone", pixels)
            assert batched.is_anomalous == single.is_anomalous
            assert batched.confidence == pytest.approx(single.confidence, abs=1e-5)
            assert batched.anomaly_mask.byte_data == single.anomaly_mask.byte_data
            assert [a.name for a in batched.anomalies] == [a.name for a in single.anomalies]
            assert [a.pixel_anomaly.total_percentage_area for a in batched.anomalies] == pytest.approx(
                [a.pixel_anomaly.total_percentage_area for a in single.anomalies])
        assert {a.name for a in together[0].anomalies} == {"background", "redness"}
        # The four calls ran as one batch of four; each counts the batch it was part of.
        sample = registry.get_sample_value
        labels = {"model_component": "batched"}
        assert sample("edge_agent_detect_batch_size_count", labels) == 4
        assert sample("edge_agent_detect_batch_size_sum", labels) == 16
        assert sample("edge_agent_detect_batch_size_sum", {"model_component": "alone"}) == 4
    finally:
        running.channel.close()
        running.agent.stop(grace_s=1.0)


def test_the_fake_gpu_builds_the_profile_for_the_manifests_batch_and_batches(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _component(models, "batched", {"max_batch": 3, "max_queue_delay_ms": 1000})
    provider = fake_gpu_provider("1GiB", tmp_path / "cache", build_in_subprocess=False)
    manager = ModelManager([models], provider)
    try:
        manager.start("batched")
        assert manager.wait_for("batched", [ModelState.RUNNING, ModelState.FAILED], 120) is ModelState.RUNNING
        with manager.serving("batched") as runner:
            assert runner.backend.max_batch_size == 3 and runner.max_batch == 3
        frames = _frames(3)

        def detect(frame: Frame) -> object:
            with manager.serving("batched") as runner:
                return runner.detect(frame)

        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(detect, frames))
        cpu = _runner(_component(tmp_path / "cpu", "batched", False))
        for frame, batched in zip(frames, together, strict=True):
            single = cpu.detect(frame)
            assert batched.times.batch_size == 3  # type: ignore[attr-defined]
            assert batched.raw_score == pytest.approx(single.raw_score, abs=1e-5)  # type: ignore[attr-defined]
            np.testing.assert_array_equal(batched.mask, single.mask)  # type: ignore[attr-defined]
    finally:
        manager.close()
        provider.close()


def test_a_shipped_engine_with_a_smaller_profile_caps_the_batch(tmp_path: Path) -> None:
    models = tmp_path / "models"
    source = _component(models, "built", {"max_batch": 2})
    provider = fake_gpu_provider("1GiB", tmp_path / "cache", build_in_subprocess=False)
    try:
        manifest = load_manifest(source)
        assert provider.options_for(manifest).max_batch == 2
        plan = provider.build_ahead(manifest).plan_path
        shipped = _component(models, "shipped", {"max_batch": 8})
        (shipped / "model.onnx").unlink()
        (shipped / "model.plan").write_bytes(plan.read_bytes())
        data = json.loads((shipped / "manifest.json").read_text())
        (shipped / "manifest.json").write_text(json.dumps({**data, "model_file": "model.plan"}))
        backend = provider.create(load_manifest(shipped))
        backend.load()
        try:
            runner = ModelRunner(load_manifest(shipped), backend)
            runner.warm_up()
            assert backend.max_batch_size == 2 and runner.max_batch == 2
            assert "Dynamic batching up to 2 images" in runner.batching_note
        finally:
            backend.unload()
    finally:
        provider.close()


def test_the_batch_is_capped_by_the_calls_the_agent_can_hand_a_model_at_once(tmp_path: Path,
                                                                            short_tmp: Path) -> None:
    models = tmp_path / "models"
    _component(models, "wide", {"max_batch": 16, "max_queue_delay_ms": 100})
    manager = ModelManager([models], OnnxRuntimeProvider(intra_op_threads=1, isolate_loads=False),
                           max_requests_per_model=12)
    running = start_agent([models], short_tmp, manager=manager)  # 8 worker threads
    try:
        description = running.start_and_wait("wide")
        assert "Dynamic batching up to 8 images (queue delay 100 ms; the agent hands a model at most 8 calls" in (
            description.status_message)
    finally:
        running.channel.close()
        running.agent.stop(grace_s=1.0)


def test_default_provider_serves_default_batching(models_dir: Path) -> None:
    manager = ModelManager([models_dir], OnnxRuntimeProvider(intra_op_threads=1, isolate_loads=False))
    try:
        manager.start("redness-seg")
        assert manager.wait_for("redness-seg", [ModelState.RUNNING, ModelState.FAILED], 60) is ModelState.RUNNING
        info = manager.describe("redness-seg")
        assert f"Dynamic batching up to {DEFAULT_MAX_BATCH} images (queue delay 0 ms)" in info.status_message
    finally:
        manager.close()
