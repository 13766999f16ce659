"""The edge-agent command: client subcommands in process, and `serve` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

import edge_agent_pb2 as pb2
import edge_agent_pb2_grpc as pb2_grpc
from edge_agent.cli import main
from edge_agent.server import prepare_socket_path
from tests import model_factory
from tests.conftest import RunningAgent, spawn_serve, wait_model, wait_ready


def write_png(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_lists_starts_detects_and_stops_when_agent_running(
    running_agent: RunningAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = running_agent.address
    code, out, _ = run_cli(capsys, "list", "--address", address)
    assert code == 0 and "redness-seg" in out and "STOPPED" in out

    code, out, _ = run_cli(capsys, "start", "redness-seg", "--wait", "--address", address)
    assert code == 0 and "RUNNING" in out

    image = model_factory.with_patch(model_factory.grey_frame(128, 96), 16, 16, 32, 24, (255, 0, 0))
    image_path = write_png(tmp_path / "frame.png", image)
    mask_path = tmp_path / "mask.png"
    code, out, _ = run_cli(capsys, "detect", "redness-seg", str(image_path), "--mask-out", str(mask_path),
                           "--address", address)
    assert code == 0 and "ANOMALOUS" in out and "redness" in out
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (96, 128, 3)
    assert tuple(mask[30, 30]) == (255, 0, 0) and tuple(mask[80, 100]) == (255, 255, 255)

    code, out, _ = run_cli(capsys, "detect", "redness-seg", str(image_path), "--shared-memory", "--json",
                           "--address", address)
    assert code == 0
    [result] = json.loads(out)
    assert result["is_anomalous"] is True
    assert [a["name"] for a in result["anomalies"]] == ["background", "redness"]

    code, out, _ = run_cli(capsys, "describe", "redness-seg", "--json", "--address", address)
    assert json.loads(out)["status"] == "RUNNING"

    code, out, _ = run_cli(capsys, "stop", "redness-seg", "--address", address)
    assert code == 0 and "STOPPED" in out


def test_cli_prints_status_code_and_details_when_call_fails(
    running_agent: RunningAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "stop", "redness-seg", "--address", running_agent.address)
    assert code == 1
    assert "FAILED_PRECONDITION" in err and "StopModel needs it RUNNING" in err


def test_cli_says_agent_not_running_when_socket_absent(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "list", "--address", f"unix://{short_tmp}/none.sock", "--timeout", "2")
    assert code == 1
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err


# -- serve as a real process ----------------------------------------------------------------------


@pytest.fixture
def serve_process(models_dir: Path, short_tmp: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    socket_path = short_tmp / "agent.sock"
    process = spawn_serve(socket_path, models_dir)
    try:
        yield process, socket_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_serve_answers_then_exits_zero_and_removes_socket_when_sigterm(
    serve_process: tuple[subprocess.Popen[str], Path],
) -> None:
    process, socket_path = serve_process
    channel = wait_ready(socket_path)
    stub = pb2_grpc.EdgeAgentStub(channel)
    stub.StartModel(pb2.StartModelRequest(model_component="redness-seg"))
    assert wait_model(stub, "redness-seg").status == pb2.RUNNING
    assert oct(os.stat(socket_path).st_mode & 0o777) == oct(0o660)
    channel.close()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert not socket_path.exists()
    assert "model redness-seg: stopped" in err


def test_serve_refuses_to_start_when_live_agent_owns_socket(
    serve_process: tuple[subprocess.Popen[str], Path], models_dir: Path,
) -> None:
    _, socket_path = serve_process
    wait_ready(socket_path).close()
    second = spawn_serve(socket_path, models_dir)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert "another agent is already listening" in err
    assert socket_path.exists()


def test_serve_replaces_stale_socket_when_previous_agent_died(models_dir: Path, short_tmp: Path) -> None:
    socket_path = short_tmp / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, nobody listens: what a killed agent leaves behind
    process = spawn_serve(socket_path, models_dir)
    try:
        channel = wait_ready(socket_path)
        models = pb2_grpc.EdgeAgentStub(channel).ListModels(pb2.ListModelsRequest()).models
        assert len(models) == 3
        channel.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("make_path", "match"),
    [
        (lambda d: d / ("s" * 120 + ".sock"), "under 108 bytes"),
        (lambda d: d / "missing" / "agent.sock", "does not exist"),
    ],
)
def test_serve_exits_nonzero_with_reason_when_socket_path_unusable(
    models_dir: Path, short_tmp: Path, make_path, match: str  # type: ignore[no-untyped-def]
) -> None:
    process = spawn_serve(make_path(short_tmp), models_dir)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert match in err


def test_prepare_socket_path_refuses_regular_file(short_tmp: Path) -> None:
    path = short_tmp / "not-a-socket"
    path.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        prepare_socket_path(str(path))
    assert path.read_text() == "data"


def test_serve_without_models_dir_builds_and_serves_demo_models(short_tmp: Path, tmp_path: Path) -> None:
    socket_path = short_tmp / "agent.sock"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("EDGE_AGENT_MODELS_DIRS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "serve", "--socket", str(socket_path), "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        channel = wait_ready(socket_path, timeout_s=120)
        models = pb2_grpc.EdgeAgentStub(channel).ListModels(pb2.ListModelsRequest()).models
        assert {m.model_component for m in models} == {"demo-brick-segmentation", "demo-brick-classification"}
        assert all(m.status == pb2.STOPPED for m in models)
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    assert (tmp_path / "cache" / "edge-agent" / "demo-models" / "demo-brick-segmentation" / "model.onnx").is_file()


def test_serve_also_listens_on_tcp_when_asked(models_dir: Path, short_tmp: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    socket_path = short_tmp / "agent.sock"
    process = spawn_serve(socket_path, models_dir, "--tcp", f"127.0.0.1:{port}", "--metrics-port", "0")
    try:
        wait_ready(socket_path).close()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        assert len(pb2_grpc.EdgeAgentStub(channel).ListModels(pb2.ListModelsRequest()).models) == 3
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    assert process.returncode == 0


def test_serve_gives_socket_to_group_when_asked(models_dir: Path, short_tmp: Path) -> None:
    import grp

    group = grp.getgrgid(os.getgid()).gr_name if os.getgid() != 0 else "daemon"
    socket_path = short_tmp / "agent.sock"
    process = spawn_serve(socket_path, models_dir, "--socket-group", group, "--metrics-port", "0")
    try:
        wait_ready(socket_path).close()
        info = os.stat(socket_path)
        assert grp.getgrgid(info.st_gid).gr_name == group
        assert info.st_mode & 0o777 == 0o660
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)


def test_serve_refuses_unknown_socket_group(models_dir: Path, short_tmp: Path) -> None:
    process = spawn_serve(short_tmp / "agent.sock", models_dir, "--socket-group", "no-such-group-xyz",
                          "--metrics-port", "0")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "socket group 'no-such-group-xyz' does not exist" in err
    assert not (short_tmp / "agent.sock").exists()


def test_onnxruntime_warm_up_at_start_creates_a_session_without_error(caplog: pytest.LogCaptureFixture) -> None:
    from edge_agent.backends import OnnxRuntimeProvider

    caplog.set_level("DEBUG", logger="edge_agent.backends")
    thread = OnnxRuntimeProvider(isolate_loads=False).prepare_runtime()
    thread.join(60)
    assert not thread.is_alive()
    assert thread.name == "onnxruntime-warm-up"
    assert not [r for r in caplog.records if "warm-up failed" in r.getMessage()], caplog.text


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ([], {}, False),
    (["--ort-spinning"], {}, True),
    ([], {"EDGE_AGENT_ORT_SPINNING": "on"}, True),
    (["--no-ort-spinning"], {"EDGE_AGENT_ORT_SPINNING": "1"}, False),
])
def test_serve_lets_onnxruntime_spin_only_when_flag_or_environment_asks(
    argv: list[str], environ: dict[str, str], expected: bool
) -> None:
    from edge_agent.cli import _provider, build_parser, serve_config

    config = serve_config(build_parser().parse_args(["serve", "--backend", "onnxruntime", *argv]), environ)
    assert config.ort_spinning is expected
    assert _provider(config).spinning is expected


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ([], {}, 0),
    (["--image-threads", "1"], {}, 1),
    ([], {"EDGE_AGENT_IMAGE_THREADS": "3"}, 3),
    (["--image-threads", "2"], {"EDGE_AGENT_IMAGE_THREADS": "3"}, 2),
])
def test_serve_takes_image_threads_from_flag_over_environment(argv: list[str], environ: dict[str, str],
                                                              expected: int) -> None:
    from edge_agent.bands import MAX_AUTO_THREADS, RowBands, usable_cores
    from edge_agent.cli import build_parser, serve_config

    config = serve_config(build_parser().parse_args(["serve", *argv]), environ)
    assert config.image_threads == expected
    assert RowBands(config.image_threads).threads == (expected or min(MAX_AUTO_THREADS, usable_cores()))


@pytest.mark.parametrize("value", ["-2", "65"])
def test_serve_refuses_an_image_thread_count_out_of_range_naming_where_it_came_from(value: str,
                                                                                    tmp_path: Path) -> None:
    from edge_agent.cli import build_parser, main, serve_config
    from edge_agent.config import AgentConfig

    with pytest.raises(ValueError, match=rf"--image-threads is {value}; use 0 \(automatic.*up to 64 threads"):
        serve_config(build_parser().parse_args(["serve", "--image-threads", value]), {})
    with pytest.raises(ValueError, match=rf"EDGE_AGENT_IMAGE_THREADS={value}: use 0"):
        AgentConfig.from_env({"EDGE_AGENT_IMAGE_THREADS": value})
    assert main(["serve", "--image-threads", value, "--socket", str(tmp_path / "s.sock")]) == 1


def test_config_refuses_an_ort_spinning_value_that_is_not_a_switch() -> None:
    from edge_agent.config import AgentConfig

    with pytest.raises(ValueError, match=r"EDGE_AGENT_ORT_SPINNING='sometimes' is not on or off; use 1/0"):
        AgentConfig.from_env({"EDGE_AGENT_ORT_SPINNING": "sometimes"})
