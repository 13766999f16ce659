"""The agent as a separate process, as production runs it, with a client for the benchmark.

CPU runs use the real command line (``python -m edge_agent.cli serve``); the fake GPU uses
``bench/fake_gpu_agent.py``, which serves the same way with the fake TensorRT provider.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.client import OwnedSegment

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 300.0
START_TIMEOUT_S = 300.0
START_POLL_S = 0.002
STOP_TIMEOUT_S = 20.0
MESSAGE_LIMIT_BYTES = 64 << 20
SHM_DIR = "/dev/shm"


def channel_options(separate_connection: bool = False) -> list[tuple[str, int]]:
    options = [("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
               ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES)]
    if separate_connection:  # one connection per client, as separate camera processes have
        options.append(("grpc.use_local_subchannel_pool", 1))
    return options


@dataclass
class Memory:
    """Resident memory of a process, from /proc/PID/status (bytes)."""

    rss: int
    hwm: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        fields: dict[str, int] = {}
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) * 1024
        return cls(fields["VmRSS"], fields["VmHWM"])


def free_port() -> int:
    """A TCP port free on the loopback interface now (for the agent's metrics)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class AgentProcess:
    """Starts an agent on a unix socket in ``workdir``; a context manager that always stops it."""

    def __init__(self, models_dir: Path, workdir: Path, *, fake_gpu_cache: Path | None = None,
                 fake_gpu_memory: str = "8GiB", env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = (), metrics_port: int = 0) -> None:
        self.socket_path = str(workdir / "agent.sock")
        self.log_path = workdir / ("agent-fake-gpu.log" if fake_gpu_cache else "agent.log")
        if fake_gpu_cache is None:
            self.command = [sys.executable, "-m", "edge_agent.cli", "--log-level", "warning", "serve",
                            "--socket", self.socket_path, "--models-dir", str(models_dir), "--metrics-port",
                            str(metrics_port), "--metrics-address", "127.0.0.1", "--backend", "onnxruntime"]
        else:
            self.command = [sys.executable, "-m", "bench.fake_gpu_agent", "--socket", self.socket_path,
                            "--models-dir", str(models_dir), "--cache-dir", str(fake_gpu_cache),
                            "--fake-gpu-memory", fake_gpu_memory, "--metrics-port", str(metrics_port)]
        self.metrics_port = metrics_port
        self.command += list(extra_args)
        self.env = {**os.environ, **(env or {})}
        # The bench package must be importable by the child, whatever the caller's directory.
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), self.env.get("PYTHONPATH")]))
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb2_grpc.EdgeAgentStub | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> AgentProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                            env=self.env)
        self.channel = grpc.insecure_channel(f"unix://{self.socket_path}", options=channel_options())
        self.stub = pb2_grpc.EdgeAgentStub(self.channel)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.process.returncode}; see {self.log_path}:\n"
                                   + self._log_tail())
            try:
                self.stub.ListModels(pb2.ListModelsRequest(), timeout=1.0)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the agent did not answer within {READY_TIMEOUT_S:.0f} s; see "
                                       f"{self.log_path}:\n{self._log_tail()}") from None
                time.sleep(0.05)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def metric_samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The samples of one metric on the agent's /metrics page, by their labels."""
        from urllib.request import urlopen

        from prometheus_client.parser import text_string_to_metric_families

        with urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as page:
            text = page.read().decode()
        return {tuple(sorted(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == name}

    def memory(self) -> Memory:
        return Memory.of(self.pid)

    def start_model(self, name: str) -> tuple[float, str]:
        """StartModel, then DescribeModel every few ms until RUNNING: (seconds, status message)."""
        assert self.stub is not None
        started = time.perf_counter()
        self.stub.StartModel(pb2.StartModelRequest(model_component=name), timeout=RPC_TIMEOUT_S)
        request = pb2.DescribeModelRequest(model_component=name)
        while True:
            description = self.stub.DescribeModel(request, timeout=RPC_TIMEOUT_S).model_description
            if description.status == pb2.RUNNING:
                return time.perf_counter() - started, description.status_message
            if description.status == pb2.FAILED:
                raise RuntimeError(f"model {name} failed to start: {description.status_message}")
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise RuntimeError(f"model {name} not RUNNING after {START_TIMEOUT_S:.0f} s")
            time.sleep(START_POLL_S)

    def stop_model(self, name: str) -> None:
        assert self.stub is not None
        self.stub.StopModel(pb2.StopModelRequest(model_component=name), timeout=RPC_TIMEOUT_S)


class FrameSender:
    """One client of a model: a channel, and (for shared memory) its own frame and mask segments.

    Inline: each call packs the frame into the request and unpacks the mask from the reply.
    Shared memory: the frame is written into its segment once (a camera writes there instead of
    into its own buffer); each call names both segments and views the mask through a mapping.
    """

    def __init__(self, address: str, model: str, frame: np.ndarray, *, shared_memory: bool,
                 separate_connection: bool = False) -> None:
        self.model = model
        self.frame = np.ascontiguousarray(frame, dtype=np.uint8)
        self.height, self.width = self.frame.shape[:2]
        self.shared_memory = shared_memory
        self.channel = grpc.insecure_channel(address, options=channel_options(separate_connection))
        self.stub = pb2_grpc.EdgeAgentStub(self.channel)
        self.frame_segment: OwnedSegment | None = None
        self.mask_segment: OwnedSegment | None = None
        self._mask_map: mmap.mmap | None = None
        self._request: pb2.DetectAnomaliesRequest | None = None
        if shared_memory:
            size = self.frame.nbytes
            self.frame_segment = OwnedSegment(size, prefix="edge-agent-bench")
            self.mask_segment = OwnedSegment(size, prefix="edge-agent-bench")
            self.frame_segment.write(self.frame)
            fd = os.open(os.path.join(SHM_DIR, self.mask_segment.name[1:]), os.O_RDWR)
            try:
                self._mask_map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            self._request = pb2.DetectAnomaliesRequest(
                model_component=model,
                bitmap=pb2.Bitmap(width=self.width, height=self.height,
                                  shared_memory_handle=self.frame_segment.handle()),
                anomaly_mask_params=pb2.AnomalyMaskParams(shared_memory_handle=self.mask_segment.handle()))

    def detect(self) -> tuple[pb2.DetectAnomalyResult, np.ndarray | None]:
        """One DetectAnomalies call: the result and the mask as an (H, W, 3) array."""
        if self._request is not None:
            result = self.stub.DetectAnomalies(self._request, timeout=RPC_TIMEOUT_S).detect_anomaly_result
            mask = None
            if result.anomaly_mask.HasField("shared_memory_handle"):
                assert self._mask_map is not None
                mask = np.frombuffer(self._mask_map, np.uint8).reshape(self.height, self.width, 3)
            return result, mask
        request = pb2.DetectAnomaliesRequest(
            model_component=self.model,
            bitmap=pb2.Bitmap(width=self.width, height=self.height, byte_data=self.frame.tobytes()))
        result = self.stub.DetectAnomalies(request, timeout=RPC_TIMEOUT_S).detect_anomaly_result
        mask = None
        if result.anomaly_mask.byte_data:
            mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8).reshape(self.height, self.width, 3)
        return result, mask

    def close(self) -> None:
        self.channel.close()
        if self._mask_map is not None:
            self._mask_map.close()
            self._mask_map = None
        for segment in (self.frame_segment, self.mask_segment):
            if segment is not None:
                segment.close()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
