"""The model lifecycle under concurrency: leases, draining, one load at a time."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest

from edge_agent.backends import OnnxRuntimeProvider
from edge_agent.engines.base import Backend, MemoryInfo
from edge_agent.engines.onnxruntime import OnnxRuntimeBackend
from edge_agent.errors import InvalidArgumentError, ModelNotFoundError, ResourceExhaustedError, WrongStateError
from edge_agent.imaging import frame_from_bytes
from edge_agent.manifest import Manifest, load_manifest
from edge_agent.models import ModelManager, ModelState
from tests import model_factory

FRAME = frame_from_bytes(64, 64, model_factory.grey_frame(64, 64).tobytes())


class CountingProvider(OnnxRuntimeProvider):
    """ONNX Runtime backends that record loads, unloads and overlapping loads, and can be gated."""

    def __init__(self) -> None:
        super().__init__(intra_op_threads=1, isolate_loads=False)
        self.lock = threading.Lock()
        self.loads: Counter[str] = Counter()
        self.unloads: Counter[str] = Counter()
        self.loading_now: Counter[str] = Counter()
        self.max_parallel_loads: Counter[str] = Counter()
        self.infer_gate: threading.Event | None = None
        self.load_gate: threading.Event | None = None
        self.infer_entered = threading.Event()
        self.errors_after_unload = 0

    def create(self, manifest: Manifest) -> Backend:
        provider = self
        name = manifest.component_dir.name

        class Instrumented(OnnxRuntimeBackend):
            def _load_impl(self):  # type: ignore[no-untyped-def]
                with provider.lock:
                    provider.loading_now[name] += 1
                    provider.max_parallel_loads[name] = max(provider.max_parallel_loads[name],
                                                            provider.loading_now[name])
                try:
                    if provider.load_gate is not None:
                        provider.load_gate.wait(30)
                    return super()._load_impl()
                finally:
                    with provider.lock:
                        provider.loading_now[name] -= 1
                        provider.loads[name] += 1

            def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                provider.infer_entered.set()
                if provider.infer_gate is not None:
                    provider.infer_gate.wait(30)
                if not self.loaded:
                    provider.errors_after_unload += 1
                return super()._infer_impl(feeds)

            def _unload_impl(self) -> None:
                with provider.lock:
                    provider.unloads[name] += 1
                super()._unload_impl()

        return Instrumented(manifest.model_file, label=name, intra_op_threads=1)


@pytest.fixture
def manager(models_dir: Path) -> Iterator[tuple[ModelManager, CountingProvider]]:
    provider = CountingProvider()
    mgr = ModelManager([models_dir], provider)
    try:
        yield mgr, provider
    finally:
        mgr.close()


def start_running(mgr: ModelManager, name: str) -> None:
    assert mgr.start(name) is ModelState.STARTING
    assert mgr.wait_for(name, [ModelState.RUNNING, ModelState.FAILED], 30) is ModelState.RUNNING


def test_stop_waits_for_requests_in_flight_then_returns_stopped(manager: tuple[ModelManager, CountingProvider]) -> None:
    mgr, provider = manager
    start_running(mgr, "redness-seg")
    provider.infer_gate = threading.Event()
    provider.infer_entered.clear()
    outcome: dict[str, object] = {}

    def detect() -> None:
        with mgr.serving("redness-seg") as runner:
            outcome["detection"] = runner.detect(FRAME)

    def stop() -> None:
        outcome["stop"] = mgr.stop("redness-seg")

    detector = threading.Thread(target=detect)
    detector.start()
    assert provider.infer_entered.wait(10)
    stopper = threading.Thread(target=stop)
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive(), "StopModel returned while a request was still running"
    assert mgr.describe("redness-seg").state is ModelState.STOPPING
    with pytest.raises(WrongStateError, match="STOPPING"):
        with mgr.serving("redness-seg"):
            pass
    provider.infer_gate.set()
    detector.join(10)
    stopper.join(10)
    assert outcome["stop"] is ModelState.STOPPED
    assert "detection" in outcome
    assert provider.errors_after_unload == 0
    assert provider.unloads["redness-seg"] == 1


def test_start_loads_once_when_many_threads_start_same_model(manager: tuple[ModelManager, CountingProvider]) -> None:
    mgr, provider = manager
    barrier = threading.Barrier(8)
    results: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(mgr.start("redness-seg"))
        except WrongStateError as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results.count(ModelState.STARTING) == 1
    assert sum(isinstance(r, WrongStateError) for r in results) == 7
    assert mgr.wait_for("redness-seg", [ModelState.RUNNING], 30) is ModelState.RUNNING
    assert provider.loads["redness-seg"] == 1


def test_random_start_stop_detect_keeps_invariants_when_many_threads_race(
    manager: tuple[ModelManager, CountingProvider],
) -> None:
    mgr, provider = manager
    names = ["redness-seg", "colours-seg"]
    unexpected: list[BaseException] = []
    outcomes: Counter[str] = Counter()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            name = rng.choice(names)
            action = rng.choice(["start", "start", "stop", "detect", "detect", "detect", "detect", "describe"])
            try:
                if action == "start":
                    mgr.start(name)
                elif action == "stop":
                    mgr.stop(name)
                elif action == "detect":
                    with mgr.serving(name) as runner:
                        runner.detect(FRAME)
                else:
                    mgr.describe(name)
                outcomes[f"{action}:ok"] += 1
            except WrongStateError:
                outcomes[f"{action}:precondition"] += 1
            except BaseException as exc:  # anything else is a bug
                unexpected.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "deadlock: workers did not finish"
    assert not unexpected, unexpected[:3]
    assert outcomes["start:ok"] > 0
    assert provider.errors_after_unload == 0
    # Whatever the interleaving left behind, both models can still be brought up and used.
    for name in names:
        state = mgr.wait_for(name, [ModelState.RUNNING, ModelState.STOPPED], 30)
        if state is ModelState.STOPPED:
            start_running(mgr, name)
        with mgr.serving(name) as runner:
            assert runner.detect(FRAME).anomalies
    for name in names:
        assert provider.max_parallel_loads[name] <= 1
    mgr.close()
    # Every load was matched by exactly one unload: nothing leaked.
    for name in names:
        assert provider.loads[name] == provider.unloads[name]


def test_close_stops_running_models_and_unloads_them(manager: tuple[ModelManager, CountingProvider]) -> None:
    mgr, provider = manager
    start_running(mgr, "redness-seg")
    start_running(mgr, "redness-cls")
    mgr.close()
    assert provider.unloads["redness-seg"] == 1 and provider.unloads["redness-cls"] == 1
    assert all(info.state is ModelState.STOPPED for info in mgr.list())
    with pytest.raises(WrongStateError, match="shutting down"):
        mgr.start("redness-seg")


def test_serving_rejects_bad_and_unknown_names_without_touching_paths(
    manager: tuple[ModelManager, CountingProvider],
) -> None:
    mgr, _ = manager
    for name in ("../models", "/etc", "a\x00b", "x" * 256, ""):
        with pytest.raises(InvalidArgumentError):
            with mgr.serving(name):
                pass
    with pytest.raises(ModelNotFoundError, match="ghost"):
        mgr.describe("ghost")


def test_listeners_see_every_transition_in_order(manager: tuple[ModelManager, CountingProvider]) -> None:
    mgr, _ = manager
    seen: list[tuple[str, ModelState]] = []
    mgr.add_listener(lambda name, state, _msg: seen.append((name, state)) if name == "redness-seg" else None)
    start_running(mgr, "redness-seg")
    mgr.stop("redness-seg")
    assert [s for _, s in seen] == [ModelState.STOPPED, ModelState.STARTING, ModelState.RUNNING,
                                    ModelState.STOPPING, ModelState.STOPPED]


class MeteredProvider(CountingProvider):
    """A device with a fixed amount of free memory; each model needs what its manifest declares."""

    def __init__(self, free_bytes: int) -> None:
        super().__init__()
        self.free_bytes = free_bytes

    def estimate_bytes(self, manifest: Manifest) -> int:
        return manifest.memory_bytes or 0

    def memory_info(self) -> MemoryInfo:
        return MemoryInfo(total_bytes=self.free_bytes, free_bytes=self.free_bytes, source="test device")


def test_start_returns_resource_exhausted_when_concurrent_loads_reserve_the_memory(models_dir: Path) -> None:
    for name in ("redness-seg", "colours-seg"):
        path = models_dir / name / "manifest.json"
        import json

        data = json.loads(path.read_text())
        data["memory_bytes"] = 600 * 2**20
        path.write_text(json.dumps(data))
    provider = MeteredProvider(free_bytes=1000 * 2**20)
    provider.load_gate = threading.Event()
    mgr = ModelManager([models_dir], provider, memory_headroom_bytes=100 * 2**20)
    try:
        assert mgr.start("redness-seg") is ModelState.STARTING
        assert mgr.describe("redness-seg").memory_bytes == 600 * 2**20
        with pytest.raises(ResourceExhaustedError, match=r"needs about 600.0 MiB.*300.0 MiB is available"):
            mgr.start("colours-seg")
        assert mgr.describe("colours-seg").state is ModelState.STOPPED
        provider.load_gate.set()
        assert mgr.wait_for("redness-seg", [ModelState.RUNNING], 30) is ModelState.RUNNING
        mgr.stop("redness-seg")
        # Nothing reserved any more: the second model now fits.
        assert mgr.start("colours-seg") is ModelState.STARTING
        assert mgr.wait_for("colours-seg", [ModelState.RUNNING], 30) is ModelState.RUNNING
    finally:
        provider.load_gate.set()
        mgr.close()


@pytest.mark.parametrize(("spinning", "entry"), [(False, "1"), (True, "0")])
def test_onnxruntime_threads_stop_spinning_after_each_run_unless_asked(models_dir: Path, spinning: bool,
                                                                       entry: str) -> None:
    from edge_agent.engines.onnxruntime import SPIN_STOP_CONFIG_KEY

    manifest = load_manifest(models_dir / "redness-seg")
    backend = OnnxRuntimeProvider(spinning=spinning, isolate_loads=False).create(manifest)
    with backend:
        session = backend._session  # the session ONNX Runtime made, with the options it really uses
        assert session is not None
        assert session.get_session_options().get_session_config_entry(SPIN_STOP_CONFIG_KEY) == entry
        outputs = backend.infer({backend.inputs[0].name: np.zeros((1, 3, 64, 64), np.float32)})
        assert set(outputs) == {t.name for t in backend.outputs}
