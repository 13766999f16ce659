"""A small client for a running agent, used by the CLI (and handy in scripts).

It speaks only the public wire contract, like any Lookout for Vision client.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.constants import DEFAULT_SOCKET_PATH, MAX_MESSAGE_BYTES, SHM_DIR

STATUS_NAMES = {value: name for name, value in pb2.ModelStatus.items()}


def channel_for(address: str | None = None) -> grpc.Channel:
    """Opens a channel to ``unix:PATH``, a bare socket path, or ``HOST:PORT``."""
    target = address or f"unix://{DEFAULT_SOCKET_PATH}"
    if target.startswith("/"):
        target = f"unix://{target}"
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    return grpc.insecure_channel(target, options=options)


def load_rgb(path: Path) -> np.ndarray:
    """Reads a PNG/JPEG (or anything Pillow reads) as an (H, W, 3) uint8 RGB array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class OwnedSegment:
    """A shared memory segment this client creates and unlinks (the agent never does)."""

    def __init__(self, size: int, prefix: str = "edge-agent-client") -> None:
        self.name = f"/{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        self.size = size
        self._path = os.path.join(SHM_DIR, self.name[1:])
        fd = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o660)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(self._path)
            raise
        self._fd = fd

    def write(self, data: bytes | np.ndarray, offset: int = 0) -> None:
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        done = 0
        while done < view.nbytes:
            done += os.pwrite(self._fd, view[done:], offset + done)

    def read(self, size: int, offset: int = 0) -> bytes:
        return os.pread(self._fd, size, offset)

    def handle(self, size: int | None = None, offset: int = 0) -> pb2.SharedMemoryHandle:
        return pb2.SharedMemoryHandle(name=self.name, size=self.size if size is None else size, offset=offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> OwnedSegment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class DetectOutcome:
    result: pb2.DetectAnomalyResult
    mask: np.ndarray | None  # (H, W, 3) uint8
    seconds: float


class AgentClient:
    """Thin wrapper over the generated stub."""

    def __init__(self, address: str | None = None, timeout_s: float = 60.0) -> None:
        self.channel = channel_for(address)
        self.stub = pb2_grpc.EdgeAgentStub(self.channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def list(self) -> list[pb2.ModelMetadata]:
        return list(self.stub.ListModels(pb2.ListModelsRequest(), timeout=self.timeout_s).models)

    def describe(self, name: str) -> pb2.ModelDescription:
        request = pb2.DescribeModelRequest(model_component=name)
        return self.stub.DescribeModel(request, timeout=self.timeout_s).model_description

    def start(self, name: str) -> int:
        return self.stub.StartModel(pb2.StartModelRequest(model_component=name), timeout=self.timeout_s).status

    def stop(self, name: str) -> int:
        return self.stub.StopModel(pb2.StopModelRequest(model_component=name), timeout=self.timeout_s).status

    def wait(self, name: str, timeout_s: float = 180.0, poll_s: float = 0.2) -> pb2.ModelDescription:
        """Polls DescribeModel until the model is RUNNING or FAILED (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        while True:
            description = self.describe(name)
            if description.status in (pb2.RUNNING, pb2.FAILED) or time.monotonic() > deadline:
                return description
            time.sleep(poll_s)

    def detect(self, name: str, image: np.ndarray, *, shared_memory: bool = False) -> DetectOutcome:
        """Sends an (H, W, 3) uint8 RGB image; returns the result and the decoded mask."""
        height, width = image.shape[:2]
        pixels = np.ascontiguousarray(image, dtype=np.uint8)
        started = time.perf_counter()
        if not shared_memory:
            request = pb2.DetectAnomaliesRequest(
                model_component=name,
                bitmap=pb2.Bitmap(width=width, height=height, byte_data=pixels.tobytes()))
            result = self.stub.DetectAnomalies(request, timeout=self.timeout_s).detect_anomaly_result
            seconds = time.perf_counter() - started
            mask = None
            if result.anomaly_mask.byte_data:
                mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8).reshape(height, width, 3)
            return DetectOutcome(result, mask, seconds)
        with OwnedSegment(pixels.nbytes) as frame_segment, OwnedSegment(pixels.nbytes) as mask_segment:
            frame_segment.write(pixels)
            request = pb2.DetectAnomaliesRequest(
                model_component=name,
                bitmap=pb2.Bitmap(width=width, height=height, shared_memory_handle=frame_segment.handle()),
                anomaly_mask_params=pb2.AnomalyMaskParams(shared_memory_handle=mask_segment.handle()))
            result = self.stub.DetectAnomalies(request, timeout=self.timeout_s).detect_anomaly_result
            seconds = time.perf_counter() - started
            mask = None
            if result.anomaly_mask.HasField("shared_memory_handle"):
                raw = mask_segment.read(pixels.nbytes)
                mask = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            return DetectOutcome(result, mask, seconds)
