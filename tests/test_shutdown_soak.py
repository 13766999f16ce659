"""Shutdown with calls in flight, and a bounded soak of mixed traffic."""

from __future__ import annotations

import ctypes
import os
import platform
import random
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.client import OwnedSegment
from tests import model_factory
from tests.conftest import RunningAgent, spawn_serve, start_agent, wait_model, wait_ready
from tests.test_metrics import free_port

FRAME = model_factory.with_patch(model_factory.grey_frame(64, 64), 8, 8, 16, 16, (255, 0, 0))


def _request(name: str, frame: np.ndarray = FRAME) -> pb2.DetectAnomaliesRequest:
    return pb2.DetectAnomaliesRequest(
        model_component=name, bitmap=pb2.Bitmap(width=frame.shape[1], height=frame.shape[0],
                                                byte_data=frame.tobytes()))


def _in_flight(port: int, model: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'edge_agent_model_requests_in_flight{{model_component="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_sigterm_lets_calls_in_flight_finish_then_exits_zero(tmp_path: Path, short_tmp: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Three calls of about a second each, one after another: on a loaded machine they can outlast the
    # default 10 s grace, after which the agent rightly cancels them. The grace is not what is tested.
    monkeypatch.setenv("EDGE_AGENT_SHUTDOWN_GRACE_S", "90")
    models_dir = tmp_path / "models"
    model_factory.write_component(models_dir, "slow", "segmentation")
    model_factory.slow_model(models_dir / "slow" / "model.onnx")
    socket_path = short_tmp / "agent.sock"
    port = free_port()
    process = spawn_serve(socket_path, models_dir, "--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    try:
        channel = wait_ready(socket_path)
        stub = pb2_grpc.EdgeAgentStub(channel)
        stub.StartModel(pb2.StartModelRequest(model_component="slow"))
        assert wait_model(stub, "slow").status == pb2.RUNNING
        answers: list[object] = []
        calls = [threading.Thread(target=lambda: answers.append(stub.DetectAnomalies(_request("slow"), timeout=60)))
                 for _ in range(3)]
        for call in calls:
            call.start()
        deadline = time.monotonic() + 30
        while _in_flight(port, "slow") < 1:
            assert time.monotonic() < deadline, "the calls never reached the model"
        process.send_signal(signal.SIGTERM)
        for call in calls:
            call.join(60)
        assert len(answers) == 3, "a call in flight was dropped by the shutdown"
        assert all(a.detect_anomaly_result.is_anomalous for a in answers)  # type: ignore[attr-defined]
        channel.close()
        try:
            _, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"the agent did not exit within 120 s of SIGTERM; its log:\n{err[-4000:]}") from None
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert not socket_path.exists()
    assert "model slow: stopped" in err


_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(_TGKILL is None or not Path("/proc/self/task").is_dir(), reason="needs Linux tgkill")
def test_sigterm_handed_to_another_thread_still_stops_the_agent(tmp_path: Path, short_tmp: Path) -> None:
    # The kernel may deliver a process's SIGTERM to any thread that does not block it (gRPC's, ONNX
    # Runtime's); Python runs the handler only when the main thread wakes. Aim it at another thread.
    models_dir = tmp_path / "models"
    model_factory.write_component(models_dir, "m", "segmentation")
    socket_path = short_tmp / "agent.sock"
    process = spawn_serve(socket_path, models_dir)
    try:
        wait_ready(socket_path).close()
        others = [int(t) for t in os.listdir(f"/proc/{process.pid}/task") if int(t) != process.pid]
        assert others, "the agent runs no thread besides its main one"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(_TGKILL, process.pid, others[-1], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"SIGTERM to thread {others[-1]} did not stop the agent; its log:\n{err[-3000:]}") \
                from None
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "received SIGTERM" in err
    assert not socket_path.exists()


def test_second_signal_exits_at_once(tmp_path: Path, short_tmp: Path) -> None:
    models_dir = tmp_path / "models"
    model_factory.write_component(models_dir, "slow", "segmentation")
    model_factory.slow_model(models_dir / "slow" / "model.onnx", repeats=600)
    socket_path = short_tmp / "agent.sock"
    process = spawn_serve(socket_path, models_dir)
    channel = wait_ready(socket_path)
    try:
        stub = pb2_grpc.EdgeAgentStub(channel)
        stub.StartModel(pb2.StartModelRequest(model_component="slow"))
        assert wait_model(stub, "slow").status == pb2.RUNNING
        future = stub.DetectAnomalies.future(_request("slow"), timeout=120)
        time.sleep(0.2)  # let the call reach the model; the assertion below does not depend on it
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
        future.cancel()
    finally:
        channel.close()
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert "second signal" in err


SOAK_SECONDS = float(os.environ.get("EDGE_AGENT_SOAK_SECONDS", "20"))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_soak_mixed_traffic_loses_no_response_and_leaks_nothing(models_dir: Path, short_tmp: Path) -> None:
    agent: RunningAgent = start_agent([models_dir], short_tmp)
    agent.start_and_wait("redness-seg")
    agent.start_and_wait("redness-cls")
    stop = threading.Event()
    sent = [0] * 6
    answered = [0] * 6
    bad_codes: list[object] = []
    samples: list[tuple[float, int, int]] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        with OwnedSegment(FRAME.nbytes) as frame_seg, OwnedSegment(FRAME.nbytes) as mask_seg:
            frame_seg.write(FRAME)
            while not stop.is_set():
                kind = rng.choice(["inline", "shm", "bad-size", "unknown", "stopped", "list", "bad-shm"])
                if kind == "inline":
                    call, request = agent.stub.DetectAnomalies, _request(rng.choice(["redness-seg", "redness-cls"]))
                    expected = grpc.StatusCode.OK
                elif kind == "shm":
                    request = pb2.DetectAnomaliesRequest(
                        model_component="redness-seg",
                        bitmap=pb2.Bitmap(width=64, height=64, shared_memory_handle=frame_seg.handle()),
                        anomaly_mask_params=pb2.AnomalyMaskParams(shared_memory_handle=mask_seg.handle()))
                    call, expected = agent.stub.DetectAnomalies, grpc.StatusCode.OK
                elif kind == "bad-size":
                    request = _request("redness-seg")
                    request.bitmap.width = 65
                    call, expected = agent.stub.DetectAnomalies, grpc.StatusCode.INVALID_ARGUMENT
                elif kind == "bad-shm":
                    request = pb2.DetectAnomaliesRequest(
                        model_component="redness-seg",
                        bitmap=pb2.Bitmap(width=64, height=64,
                                          shared_memory_handle=pb2.SharedMemoryHandle(name="/nope-xyz", size=12288)))
                    call, expected = agent.stub.DetectAnomalies, grpc.StatusCode.INVALID_ARGUMENT
                elif kind == "unknown":
                    call, request = agent.stub.DetectAnomalies, _request("ghost")
                    expected = grpc.StatusCode.NOT_FOUND
                elif kind == "stopped":
                    call, request = agent.stub.DetectAnomalies, _request("colours-seg")
                    expected = grpc.StatusCode.FAILED_PRECONDITION
                else:
                    call, request, expected = agent.stub.ListModels, pb2.ListModelsRequest(), grpc.StatusCode.OK
                sent[index] += 1
                try:
                    call(request, timeout=30)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                answered[index] += 1
                if code is not expected:
                    bad_codes.append((kind, code))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    try:
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while time.monotonic() - started < SOAK_SECONDS:
            time.sleep(SOAK_SECONDS / 20)
            samples.append((time.monotonic() - started, _open_fds(), _rss_bytes()))
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        agent.channel.close()
        agent.agent.stop(1.0)
    assert sum(sent) > 100
    assert sent == answered, "responses were lost"
    assert not bad_codes, bad_codes[:5]
    # Compare the first quarter of the run (after warm-up) with the last quarter.
    quarter = max(1, len(samples) // 4)
    early, late = samples[quarter:2 * quarter], samples[-quarter:]
    assert max(s[1] for s in late) <= max(s[1] for s in early) + 4, samples
    assert max(s[2] for s in late) - max(s[2] for s in early) < 40 * 2**20, samples
