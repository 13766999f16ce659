"""The TensorRT path wired into the agent: prebuilds, the serve and build-engines commands, GPU metrics."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.backends import Prebuilder
from edge_agent.cli import main
from edge_agent.engines.tensorrt import TensorRTProvider, fake_gpu_provider
from edge_agent.metrics import AgentMetrics
from edge_agent.models import ModelManager, ModelState
from tests import model_factory
from tests.conftest import spawn_serve, start_agent, wait_model, wait_ready

FRAME = model_factory.with_patch(model_factory.grey_frame(96, 80), 8, 8, 24, 24, (255, 0, 0))
GPU_BYTES = 512 * 2**20


def _allocated(provider: TensorRTProvider) -> int:
    return int(provider.runtime.device.driver.allocated_bytes)  # type: ignore[attr-defined]


@pytest.fixture
def fake_provider(tmp_path: Path) -> Iterator[TensorRTProvider]:
    provider = fake_gpu_provider(GPU_BYTES, tmp_path / "engines", build_in_subprocess=True)
    try:
        yield provider
    finally:
        provider.close()


def test_prebuilder_builds_engines_when_components_are_discovered_so_start_only_deserializes(
    models_dir: Path, fake_provider: TensorRTProvider
) -> None:
    manager = ModelManager([models_dir], fake_provider)
    try:
        Prebuilder(manager, fake_provider).attach()
        deadline = time.monotonic() + 120
        while "Engine built ahead" not in manager.describe("redness-seg").status_message:
            assert time.monotonic() < deadline, manager.describe("redness-seg")
            time.sleep(0.1)
        assert manager.describe("redness-seg").state is ModelState.STOPPED
        manager.start("redness-seg")
        assert manager.wait_for("redness-seg", [ModelState.RUNNING, ModelState.FAILED], 60) is ModelState.RUNNING
        assert manager.describe("redness-seg").load_source == "engine-cache"
    finally:
        manager.close()


def test_prebuild_killed_by_the_kernel_leaves_the_model_failed_and_others_serving(
    models_dir: Path, tmp_path: Path
) -> None:
    provider = fake_gpu_provider(GPU_BYTES, tmp_path / "engines", build_in_subprocess=True,
                                 kill_build_child_with=signal.SIGKILL)
    manager = ModelManager([models_dir], provider)
    try:
        Prebuilder(manager, provider).attach()
        deadline = time.monotonic() + 120
        while manager.describe("redness-cls").state is not ModelState.FAILED:
            assert time.monotonic() < deadline, manager.describe("redness-cls")
            time.sleep(0.1)
        assert "SIGKILL" in manager.describe("redness-cls").status_message
    finally:
        manager.close()
        provider.close()


def test_gpu_memory_metrics_move_with_start_and_stop_on_the_fake_gpu(
    models_dir: Path, short_tmp: Path, fake_provider: TensorRTProvider
) -> None:
    registry = CollectorRegistry()
    agent = start_agent([models_dir], short_tmp, provider=fake_provider)
    AgentMetrics(registry, agent.manager, fake_provider, fake_provider.versions())

    def gauges() -> dict[str, float]:
        families = text_string_to_metric_families(generate_latest(registry).decode())
        return {s.name: s.value for f in families for s in f.samples if s.name.startswith("edge_agent_gpu")}

    try:
        before = gauges()
        assert before["edge_agent_gpu_memory_total_bytes"] == GPU_BYTES
        baseline = _allocated(fake_provider)
        assert agent.start_and_wait("redness-seg").status == pb2.RUNNING
        running = gauges()
        assert running["edge_agent_gpu_memory_free_bytes"] < before["edge_agent_gpu_memory_free_bytes"]
        assert running["edge_agent_gpu_memory_used_bytes"] > before["edge_agent_gpu_memory_used_bytes"]
        agent.stub.StopModel(pb2.StopModelRequest(model_component="redness-seg"))
        assert gauges() == before
        assert _allocated(fake_provider) == baseline
        info = {s.labels.get("tensorrt") for f in text_string_to_metric_families(generate_latest(registry).decode())
                for s in f.samples if s.name == "edge_agent_build_info"}
        assert info == {"10.3.0"}
    finally:
        agent.channel.close()
        agent.agent.stop(1.0)


def test_shutdown_frees_the_fake_gpu_back_to_baseline(models_dir: Path, short_tmp: Path,
                                                     fake_provider: TensorRTProvider) -> None:
    baseline = _allocated(fake_provider)
    agent = start_agent([models_dir], short_tmp, provider=fake_provider)
    agent.start_and_wait("redness-seg")
    agent.start_and_wait("colours-seg")
    request = pb2.DetectAnomaliesRequest(
        model_component="redness-seg", bitmap=pb2.Bitmap(width=96, height=80, byte_data=FRAME.tobytes()))
    assert agent.stub.DetectAnomalies(request).detect_anomaly_result.is_anomalous
    assert _allocated(fake_provider) > baseline
    agent.channel.close()
    agent.agent.stop(1.0)
    assert _allocated(fake_provider) == baseline


def test_serve_runs_models_on_the_fake_gpu_when_asked(models_dir: Path, short_tmp: Path, tmp_path: Path) -> None:
    socket_path = short_tmp / "agent.sock"
    process = spawn_serve(socket_path, models_dir, "--fake-gpu-memory", "512MiB", "--cache-dir",
                          str(tmp_path / "engines"))
    try:
        channel = wait_ready(socket_path)
        stub = pb2_grpc.EdgeAgentStub(channel)
        stub.StartModel(pb2.StartModelRequest(model_component="redness-seg"))
        description = wait_model(stub, "redness-seg")
        assert description.status == pb2.RUNNING, description.status_message
        assert "Fake GPU" in description.status_message
        request = pb2.DetectAnomaliesRequest(
            model_component="redness-seg", bitmap=pb2.Bitmap(width=96, height=80, byte_data=FRAME.tobytes()))
        assert stub.DetectAnomalies(request).detect_anomaly_result.is_anomalous
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "FAKE GPU" in err


def test_build_engines_command_builds_then_reports_up_to_date(models_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = ["build-engines", "--models-dir", str(models_dir), "--fake-gpu-memory", "1GiB",
            "--cache-dir", str(tmp_path / "engines")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("engine built") == 3, first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.count("up to date") == 3, second


def test_build_engines_command_fails_when_a_component_is_broken(models_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (models_dir / "redness-cls" / "model.onnx").write_bytes(b"not onnx")
    code = main(["build-engines", "--models-dir", str(models_dir), "--fake-gpu-memory", "1GiB",
                 "--cache-dir", str(tmp_path / "engines")])
    out = capsys.readouterr().out
    assert code == 1
    assert "redness-cls: FAILED" in out and out.count("engine built") == 2


def test_random_start_stop_detect_on_the_fake_gpu_returns_memory_to_baseline(
    models_dir: Path, tmp_path: Path
) -> None:
    import random
    import threading

    from edge_agent.errors import ResourceExhaustedError, WrongStateError
    from edge_agent.imaging import frame_from_bytes

    # Estimates include the build workspace, so admissions may refuse; they must never overcommit.
    provider = fake_gpu_provider(GPU_BYTES, tmp_path / "engines", build_in_subprocess=False)
    baseline = _allocated(provider)
    manager = ModelManager([models_dir], provider)
    frame = frame_from_bytes(96, 80, FRAME.tobytes())
    unexpected: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            name = rng.choice(["redness-seg", "redness-cls", "colours-seg"])
            action = rng.choice(["start", "stop", "detect", "detect", "detect"])
            try:
                if action == "start":
                    manager.start(name)
                elif action == "stop":
                    manager.stop(name)
                else:
                    with manager.serving(name) as runner:
                        runner.detect(frame)
            except (WrongStateError, ResourceExhaustedError):
                pass
            except BaseException as exc:
                unexpected.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert not any(t.is_alive() for t in threads), "deadlock"
        assert not unexpected, unexpected[:3]
        assert _allocated(provider) <= GPU_BYTES
    finally:
        manager.close()
        provider.close()
    assert _allocated(provider) == baseline


@pytest.mark.parametrize("in_subprocess", [True, False])
def test_estimate_after_a_build_ahead_covers_what_the_first_load_holds(models_dir: Path, tmp_path: Path,
                                                                       in_subprocess: bool) -> None:
    from edge_agent.manifest import load_manifest

    provider = fake_gpu_provider(GPU_BYTES, tmp_path / "engines", build_in_subprocess=in_subprocess)
    try:
        for name in ("redness-seg", "colours-seg"):
            manifest = load_manifest(models_dir / name)
            provider.build_ahead(manifest)
            estimate = provider.estimate_bytes(manifest)
            before = _allocated(provider)
            backend = provider.create(manifest)
            backend.load()
            held = _allocated(provider) - before
            backend.unload()
            assert held > 0 and estimate >= held, (name, estimate, held)
    finally:
        provider.close()
