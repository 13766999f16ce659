"""Prometheus metrics scraped over real HTTP while the real server runs."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.backends import OnnxRuntimeProvider
from edge_agent.engines.base import Backend, MemoryInfo
from edge_agent.manifest import Manifest
from edge_agent.metrics import PHASES, AgentMetrics, start_http
from edge_agent.models import ModelManager, ModelState
from edge_agent.server import create_server
from tests import model_factory
from tests.conftest import spawn_serve, wait_model, wait_ready

GREY = model_factory.grey_frame(96, 80)
RED = model_factory.with_patch(GREY, 10, 10, 20, 20, (255, 0, 0))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ReportingProvider(OnnxRuntimeProvider):
    """ONNX Runtime with a device whose free memory drops by what running models hold."""

    TOTAL = 1 << 30

    def __init__(self) -> None:
        super().__init__(intra_op_threads=1, isolate_loads=False)
        self.backends: list[Backend] = []

    def create(self, manifest: Manifest) -> Backend:
        backend = super().create(manifest)
        self.backends.append(backend)
        return backend

    def estimate_bytes(self, manifest: Manifest) -> int:
        return 1 << 20

    def memory_info(self) -> MemoryInfo:
        held = sum(b.report.memory_bytes for b in self.backends if b.loaded and b.report)
        return MemoryInfo(self.TOTAL, self.TOTAL - held, "test device")


@dataclass
class MetricsAgent:
    stub: pb2_grpc.EdgeAgentStub
    manager: ModelManager
    url: str
    models_dir: Path

    def scrape(self) -> dict[str, list]:  # type: ignore[type-arg]
        text = urllib.request.urlopen(self.url, timeout=10).read().decode()
        return {family.name: family.samples for family in text_string_to_metric_families(text)}

    def value(self, family: str, name: str | None = None, **labels: str) -> float | None:
        samples = self.scrape().get(family, [])
        for sample in samples:
            if (name is None or sample.name == name) and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
        return None

    def start(self, name: str) -> None:
        self.stub.StartModel(pb2.StartModelRequest(model_component=name))
        self.manager.wait_for(name, [ModelState.RUNNING, ModelState.FAILED], 30)

    def detect(self, name: str, image=RED):  # type: ignore[no-untyped-def]
        height, width = image.shape[:2]
        return self.stub.DetectAnomalies(pb2.DetectAnomaliesRequest(
            model_component=name, bitmap=pb2.Bitmap(width=width, height=height, byte_data=image.tobytes())))


@pytest.fixture
def metrics_agent(models_dir: Path, short_tmp: Path) -> Iterator[MetricsAgent]:
    provider = ReportingProvider()
    manager = ModelManager([models_dir], provider)
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry, manager, provider, versions={"onnxruntime": "test"})
    socket_path = short_tmp / "agent.sock"
    agent = create_server(manager, [f"unix:{socket_path}"], worker_threads=4, max_concurrent_rpcs=16,
                          metrics=metrics)
    agent.start()
    port = free_port()
    http = start_http(registry, port, "127.0.0.1")
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    try:
        yield MetricsAgent(pb2_grpc.EdgeAgentStub(channel), manager, f"http://127.0.0.1:{port}/metrics", models_dir)
    finally:
        channel.close()
        http.shutdown()
        http.server_close()
        agent.stop(1.0)


def states_of(agent: MetricsAgent, model: str) -> dict[str, float]:
    samples = agent.scrape()["edge_agent_model_state"]
    return {s.labels["edge_agent_model_state"]: s.value for s in samples if s.labels["model_component"] == model}


def test_state_set_follows_start_stop_and_failure(metrics_agent: MetricsAgent) -> None:
    assert states_of(metrics_agent, "redness-seg") == {
        "STOPPED": 1, "STARTING": 0, "RUNNING": 0, "FAILED": 0, "STOPPING": 0}
    metrics_agent.start("redness-seg")
    assert states_of(metrics_agent, "redness-seg")["RUNNING"] == 1
    assert sum(states_of(metrics_agent, "redness-seg").values()) == 1
    metrics_agent.stub.StopModel(pb2.StopModelRequest(model_component="redness-seg"))
    assert states_of(metrics_agent, "redness-seg")["STOPPED"] == 1
    (metrics_agent.models_dir / "redness-cls" / "model.onnx").write_bytes(b"broken")
    metrics_agent.start("redness-cls")
    states = states_of(metrics_agent, "redness-cls")
    assert states["FAILED"] == 1 and sum(states.values()) == 1


def test_request_and_prediction_counters_move_with_calls_and_codes(metrics_agent: MetricsAgent) -> None:
    metrics_agent.start("redness-seg")
    metrics_agent.detect("redness-seg", RED)
    metrics_agent.detect("redness-seg", RED)
    metrics_agent.detect("redness-seg", GREY)
    with pytest.raises(grpc.RpcError):
        metrics_agent.detect("ghost")
    with pytest.raises(grpc.RpcError):
        metrics_agent.detect("redness-cls")  # STOPPED
    value = metrics_agent.value
    assert value("edge_agent_requests", "edge_agent_requests_total", rpc="DetectAnomalies", code="OK") == 3
    assert value("edge_agent_requests", "edge_agent_requests_total", rpc="DetectAnomalies", code="NOT_FOUND") == 1
    assert value("edge_agent_requests", "edge_agent_requests_total", rpc="DetectAnomalies",
                 code="FAILED_PRECONDITION") == 1
    assert value("edge_agent_requests", "edge_agent_requests_total", rpc="StartModel", code="OK") == 1
    assert value("edge_agent_predictions", "edge_agent_predictions_total", model_component="redness-seg",
                 result="anomalous") == 2
    assert value("edge_agent_predictions", "edge_agent_predictions_total", model_component="redness-seg",
                 result="normal") == 1
    for phase in PHASES:
        count = value("edge_agent_detect_phase_seconds", "edge_agent_detect_phase_seconds_count",
                      model_component="redness-seg", phase=phase)
        assert count == 3, phase
    assert value("edge_agent_detect_seconds", "edge_agent_detect_seconds_count", model_component="redness-seg") == 3
    inference_sum = value("edge_agent_detect_phase_seconds", "edge_agent_detect_phase_seconds_sum",
                          model_component="redness-seg", phase="inference")
    total_sum = value("edge_agent_detect_seconds", "edge_agent_detect_seconds_sum", model_component="redness-seg")
    assert inference_sum is not None and total_sum is not None and 0 < inference_sum < total_sum
    assert value("edge_agent_model_requests_in_flight", model_component="redness-seg") == 0
    assert value("edge_agent_model_load_seconds", model_component="redness-seg", source="onnxruntime") > 0


def test_memory_figures_move_with_start_and_stop(metrics_agent: MetricsAgent) -> None:
    total = metrics_agent.value("edge_agent_gpu_memory_total_bytes")
    free_before = metrics_agent.value("edge_agent_gpu_memory_free_bytes")
    assert total == ReportingProvider.TOTAL and free_before == total
    metrics_agent.start("redness-seg")
    held = metrics_agent.value("edge_agent_model_memory_bytes", model_component="redness-seg")
    assert held is not None and held > 0
    assert metrics_agent.value("edge_agent_gpu_memory_free_bytes") == total - held
    assert metrics_agent.value("edge_agent_gpu_memory_used_bytes") == held
    metrics_agent.stub.StopModel(pb2.StopModelRequest(model_component="redness-seg"))
    assert metrics_agent.value("edge_agent_gpu_memory_free_bytes") == total
    assert metrics_agent.value("edge_agent_model_memory_bytes", model_component="redness-seg") == 0
    help_text = urllib.request.urlopen(metrics_agent.url).read().decode()
    assert "# HELP edge_agent_gpu_memory_free_bytes" in help_text and "test device" in help_text


def test_removed_model_disappears_from_every_family(metrics_agent: MetricsAgent) -> None:
    metrics_agent.start("redness-cls")
    metrics_agent.detect("redness-cls")
    metrics_agent.stub.StopModel(pb2.StopModelRequest(model_component="redness-cls"))
    shutil.rmtree(metrics_agent.models_dir / "redness-cls")
    metrics_agent.stub.ListModels(pb2.ListModelsRequest())
    families = metrics_agent.scrape()
    for name, samples in families.items():
        assert all(s.labels.get("model_component") != "redness-cls" for s in samples), name
    assert any(s.labels.get("model_component") == "redness-seg" for s in families["edge_agent_model_state"])


def test_build_info_names_version_and_backend(metrics_agent: MetricsAgent) -> None:
    from edge_agent import __version__

    info = metrics_agent.scrape()["edge_agent_build_info"][0]
    assert info.labels["version"] == __version__
    assert info.labels["backend"] == "onnxruntime"
    assert info.labels["onnxruntime"] == "test"


def test_serve_logs_lifecycle_events_as_json_and_serves_metrics_port(models_dir: Path, short_tmp: Path) -> None:
    socket_path = short_tmp / "agent.sock"
    port = free_port()
    process = spawn_serve(socket_path, models_dir, "--log-format", "json", "--metrics-port", str(port),
                          "--metrics-address", "127.0.0.1")
    try:
        channel = wait_ready(socket_path)
        stub = pb2_grpc.EdgeAgentStub(channel)
        stub.StartModel(pb2.StartModelRequest(model_component="redness-seg"))
        assert wait_model(stub, "redness-seg").status == pb2.RUNNING
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'edge_agent_model_state{edge_agent_model_state="RUNNING",model_component="redness-seg"} 1.0' in text
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    events = [(r.get("model_component"), r.get("event")) for r in records if "event" in r]
    for event in ("discovered", "starting", "running", "stopping", "stopped"):
        assert ("redness-seg", event) in events, event
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)


def test_dashboard_queries_only_metrics_the_agent_exports(metrics_agent: MetricsAgent) -> None:
    import re
    from importlib import resources

    dashboard = json.loads(resources.files("edge_agent").joinpath("dashboards/edge-agent.json").read_text())
    metrics_agent.start("redness-seg")
    metrics_agent.detect("redness-seg")
    exported = {sample.name for samples in metrics_agent.scrape().values() for sample in samples}
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"edge_agent_[a-z_]+", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        queried |= set(re.findall(r"edge_agent_[a-z_]+", variable.get("definition", "")))
    assert len(queried) >= 10
    assert queried <= exported, sorted(queried - exported)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("status", "gpu memory", "latency", "status code", "defect rate"):
        assert topic in titles, topic
