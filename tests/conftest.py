"""Shared fixtures: a real agent on a temporary unix socket with a real channel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.backends import OnnxRuntimeProvider
from edge_agent.models import BackendProvider, ModelManager
from edge_agent.server import AgentServer, create_server
from tests import model_factory


@dataclass
class RunningAgent:
    agent: AgentServer
    socket_path: str
    address: str
    channel: grpc.Channel
    stub: pb2_grpc.EdgeAgentStub
    models_dir: Path

    @property
    def manager(self) -> ModelManager:
        return self.agent.manager

    def start_and_wait(self, name: str, timeout_s: float = 60.0) -> pb2.ModelDescription:
        response = self.stub.StartModel(pb2.StartModelRequest(model_component=name))
        assert response.status == pb2.STARTING
        from edge_agent.models import ModelState

        self.manager.wait_for(name, [ModelState.RUNNING, ModelState.FAILED], timeout_s)
        return self.stub.DescribeModel(pb2.DescribeModelRequest(model_component=name)).model_description


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ea-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models directory with one component of each kind."""
    directory = tmp_path / "models"
    model_factory.write_component(directory, "redness-seg", "segmentation")
    model_factory.write_component(directory, "redness-cls", "classification")
    model_factory.write_component(directory, "colours-seg", "multiclass")
    return directory


def start_agent(models_dirs: list[Path], socket_dir: Path, provider: BackendProvider | None = None,
                manager: ModelManager | None = None, **kwargs: object) -> RunningAgent:
    # In-process agents skip the per-file load probe for speed; `serve` (and its tests) keep it on.
    if manager is None:
        manager = ModelManager(models_dirs,
                               provider or OnnxRuntimeProvider(intra_op_threads=1, isolate_loads=False))
    socket_path = str(socket_dir / "agent.sock")
    agent = create_server(manager, [f"unix:{socket_path}"], worker_threads=8, max_concurrent_rpcs=32,
                          **kwargs)  # type: ignore[arg-type]
    agent.start()
    address = f"unix://{socket_path}"
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20),
                                                     ("grpc.max_send_message_length", 64 << 20)])
    return RunningAgent(agent, socket_path, address, channel, pb2_grpc.EdgeAgentStub(channel), models_dirs[0])


@pytest.fixture
def running_agent(models_dir: Path, short_tmp: Path) -> Iterator[RunningAgent]:
    running = start_agent([models_dir], short_tmp)
    try:
        yield running
    finally:
        running.channel.close()
        running.agent.stop(grace_s=1.0)


# -- `edge-agent serve` as a real process ------------------------------------------------------------


def spawn_serve(socket_path: Path, models_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """Starts ``edge-agent serve`` (metrics off unless ``extra`` names a port)."""
    metrics = () if "--metrics-port" in extra else ("--metrics-port", "0")
    return subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "serve", "--socket", str(socket_path),
         "--models-dir", str(models_dir), *metrics, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_ready(socket_path: Path, timeout_s: float = 120.0) -> grpc.Channel:
    """A channel to the agent once it answers (generous: the machine may be loaded)."""
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    grpc.channel_ready_future(channel).result(timeout=timeout_s)
    return channel


def wait_model(stub: pb2_grpc.EdgeAgentStub, name: str, timeout_s: float = 120.0) -> pb2.ModelDescription:
    """Polls DescribeModel while the model is STARTING, as clients do."""
    deadline = time.monotonic() + timeout_s
    while True:
        description = stub.DescribeModel(pb2.DescribeModelRequest(model_component=name)).model_description
        if description.status != pb2.STARTING or time.monotonic() > deadline:
            return description
        time.sleep(0.05)
