"""End to end over a real unix socket: every RPC and every applicable status-code row of the spec."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import edge_agent_pb2 as pb2
from edge_agent.client import OwnedSegment
from tests import model_factory
from tests.conftest import RunningAgent, start_agent

GREY = model_factory.grey_frame(128, 96)
RED_PATCH = model_factory.with_patch(GREY, 16, 16, 32, 24, (255, 0, 0))


def detect_request(name: str, image: np.ndarray) -> pb2.DetectAnomaliesRequest:
    height, width = image.shape[:2]
    return pb2.DetectAnomaliesRequest(
        model_component=name, bitmap=pb2.Bitmap(width=width, height=height, byte_data=image.tobytes()))


def rpc_error(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def describe(agent: RunningAgent, name: str) -> pb2.ModelDescription:
    return agent.stub.DescribeModel(pb2.DescribeModelRequest(model_component=name)).model_description


# -- ListModels / DescribeModel ------------------------------------------------------------------


def test_list_models_shows_every_component_stopped_with_arn(running_agent: RunningAgent) -> None:
    models = running_agent.stub.ListModels(pb2.ListModelsRequest()).models
    assert [m.model_component for m in models] == ["colours-seg", "redness-cls", "redness-seg"]
    assert all(m.status == pb2.STOPPED for m in models)
    assert models[2].lookout_vision_model_arn.startswith("arn:aws:lookoutvision:")


def test_list_models_shows_broken_components_failed_when_manifest_or_model_broken(
    models_dir: Path, short_tmp: Path
) -> None:
    (models_dir / "bad-json").mkdir()
    (models_dir / "bad-json" / "manifest.json").write_text("{ not json")
    model_factory.write_component(models_dir, "no-model", "segmentation")
    (models_dir / "no-model" / "model.onnx").unlink()
    (models_dir / "no-manifest").mkdir()
    agent = start_agent([models_dir], short_tmp)
    try:
        models = {m.model_component: m for m in agent.stub.ListModels(pb2.ListModelsRequest()).models}
        assert models["bad-json"].status == pb2.FAILED
        assert "bad-json/manifest.json" in models["bad-json"].status_message
        assert "not valid JSON" in models["bad-json"].status_message
        assert models["no-model"].status == pb2.FAILED
        assert "no-model/model.onnx" in models["no-model"].status_message
        assert models["no-manifest"].status == pb2.FAILED
        assert "manifest.json" in models["no-manifest"].status_message
        # The good components still serve.
        assert agent.start_and_wait("redness-seg").status == pb2.RUNNING
        result = agent.stub.DetectAnomalies(detect_request("redness-seg", RED_PATCH)).detect_anomaly_result
        assert result.is_anomalous
    finally:
        agent.channel.close()
        agent.agent.stop(1.0)


def test_list_models_picks_up_added_and_removed_components_when_directory_changes(
    running_agent: RunningAgent,
) -> None:
    model_factory.write_component(running_agent.models_dir, "late-arrival", "classification")
    names = [m.model_component for m in running_agent.stub.ListModels(pb2.ListModelsRequest()).models]
    assert "late-arrival" in names
    import shutil

    shutil.rmtree(running_agent.models_dir / "late-arrival")
    names = [m.model_component for m in running_agent.stub.ListModels(pb2.ListModelsRequest()).models]
    assert "late-arrival" not in names


def test_describe_model_returns_not_found_when_name_unknown(running_agent: RunningAgent) -> None:
    error = rpc_error(running_agent.stub.DescribeModel, pb2.DescribeModelRequest(model_component="nope"))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert "nope" in error.details() and "ListModels" in error.details()


@pytest.mark.parametrize("name", ["", "../redness-seg", "a/b", "x" * 300, "redness seg", ".hidden"])
def test_describe_model_returns_invalid_argument_when_name_malformed(running_agent: RunningAgent, name: str) -> None:
    error = rpc_error(running_agent.stub.DescribeModel, pb2.DescribeModelRequest(model_component=name))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "model_component" in error.details()


# -- StartModel / StopModel ---------------------------------------------------------------------


def test_start_model_reads_starting_before_reply_then_running(running_agent: RunningAgent) -> None:
    response = running_agent.stub.StartModel(pb2.StartModelRequest(model_component="redness-seg"))
    assert response.status == pb2.STARTING
    # The very next DescribeModel must not see a stale STOPPED.
    assert describe(running_agent, "redness-seg").status in (pb2.STARTING, pb2.RUNNING)
    from edge_agent.models import ModelState

    running_agent.manager.wait_for("redness-seg", [ModelState.RUNNING, ModelState.FAILED], 30)
    description = describe(running_agent, "redness-seg")
    assert description.status == pb2.RUNNING
    assert "onnxruntime" in description.status_message


def test_start_model_returns_failed_precondition_when_already_running(running_agent: RunningAgent) -> None:
    running_agent.start_and_wait("redness-seg")
    error = rpc_error(running_agent.stub.StartModel, pb2.StartModelRequest(model_component="redness-seg"))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "RUNNING" in error.details()


def test_start_model_returns_not_found_when_name_unknown(running_agent: RunningAgent) -> None:
    error = rpc_error(running_agent.stub.StartModel, pb2.StartModelRequest(model_component="ghost"))
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_start_model_returns_invalid_argument_when_name_empty(running_agent: RunningAgent) -> None:
    error = rpc_error(running_agent.stub.StartModel, pb2.StartModelRequest(model_component=""))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_start_model_ends_failed_naming_file_when_onnx_corrupt(running_agent: RunningAgent) -> None:
    (running_agent.models_dir / "redness-seg" / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    description = running_agent.start_and_wait("redness-seg")
    assert description.status == pb2.FAILED
    assert "redness-seg/model.onnx" in description.status_message
    # FAILED may be started again once fixed.
    model_factory.anomaly_map_model(running_agent.models_dir / "redness-seg" / "model.onnx")
    assert running_agent.start_and_wait("redness-seg").status == pb2.RUNNING


def test_start_model_ends_failed_when_manifest_names_missing_output(running_agent: RunningAgent) -> None:
    manifest_path = running_agent.models_dir / "redness-seg" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"]["anomaly_map"] = "heatmap"
    manifest_path.write_text(json.dumps(manifest))
    description = running_agent.start_and_wait("redness-seg")
    assert description.status == pb2.FAILED
    assert "'heatmap'" in description.status_message and "outputs.anomaly_map" in description.status_message


def test_stop_model_returns_stopped_and_detect_then_fails_precondition(running_agent: RunningAgent) -> None:
    running_agent.start_and_wait("redness-seg")
    response = running_agent.stub.StopModel(pb2.StopModelRequest(model_component="redness-seg"))
    assert response.status == pb2.STOPPED
    assert describe(running_agent, "redness-seg").status == pb2.STOPPED
    error = rpc_error(running_agent.stub.DetectAnomalies, detect_request("redness-seg", GREY))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_stop_model_returns_failed_precondition_when_not_running(running_agent: RunningAgent) -> None:
    error = rpc_error(running_agent.stub.StopModel, pb2.StopModelRequest(model_component="redness-seg"))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "STOPPED" in error.details()


def test_stop_model_returns_not_found_when_name_unknown(running_agent: RunningAgent) -> None:
    error = rpc_error(running_agent.stub.StopModel, pb2.StopModelRequest(model_component="ghost"))
    assert error.code() is grpc.StatusCode.NOT_FOUND


# -- DetectAnomalies ----------------------------------------------------------------------------


@pytest.fixture
def seg_agent(running_agent: RunningAgent) -> RunningAgent:
    for name in ("redness-seg", "redness-cls", "colours-seg"):
        assert running_agent.start_and_wait(name).status == pb2.RUNNING
    return running_agent


def test_detect_anomalies_returns_failed_precondition_when_model_stopped(running_agent: RunningAgent) -> None:
    error = rpc_error(running_agent.stub.DetectAnomalies, detect_request("redness-seg", GREY))
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "StartModel" in error.details()


def test_detect_anomalies_returns_not_found_when_model_unknown(seg_agent: RunningAgent) -> None:
    error = rpc_error(seg_agent.stub.DetectAnomalies, detect_request("ghost", GREY))
    assert error.code() is grpc.StatusCode.NOT_FOUND


def test_detect_anomalies_returns_mask_and_areas_when_segmentation_finds_patch(seg_agent: RunningAgent) -> None:
    result = seg_agent.stub.DetectAnomalies(detect_request("redness-seg", RED_PATCH)).detect_anomaly_result
    assert result.is_anomalous
    assert 0.5 <= result.confidence <= 1.0
    assert (result.anomaly_mask.width, result.anomaly_mask.height) == (128, 96)
    mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8).reshape(96, 128, 3)
    assert [a.name for a in result.anomalies] == ["background", "redness"]
    assert result.anomalies[0].pixel_anomaly.hex_color == "#FFFFFF"
    assert result.anomalies[1].pixel_anomaly.hex_color == "#FF0000"
    areas = [a.pixel_anomaly.total_percentage_area for a in result.anomalies]
    assert sum(areas) == pytest.approx(1.0, abs=1e-6)
    # The patch is 32x24 of 128x96; bilinear resizing blurs its edge by at most a pixel or two.
    assert areas[1] == pytest.approx(32 * 24 / (128 * 96), rel=0.25)
    red = np.all(mask == (255, 0, 0), axis=2)
    white = np.all(mask == (255, 255, 255), axis=2)
    assert np.all(red | white)
    assert red[20:36, 20:44].all() and not red[60:, 60:].any()
    assert red.mean() == pytest.approx(areas[1], abs=1e-6)


def test_detect_anomalies_returns_background_only_when_image_normal(seg_agent: RunningAgent) -> None:
    result = seg_agent.stub.DetectAnomalies(detect_request("redness-seg", GREY)).detect_anomaly_result
    assert not result.is_anomalous
    assert 0.5 < result.confidence <= 1.0
    assert len(result.anomalies) == 1
    assert result.anomalies[0].name == "background"
    assert result.anomalies[0].pixel_anomaly.total_percentage_area == pytest.approx(1.0)
    assert set(result.anomaly_mask.byte_data) == {255}


def test_detect_anomalies_returns_decision_only_when_classification_model(seg_agent: RunningAgent) -> None:
    result = seg_agent.stub.DetectAnomalies(detect_request("redness-cls", RED_PATCH)).detect_anomaly_result
    assert result.is_anomalous and result.confidence > 0
    assert not result.HasField("anomaly_mask")
    assert len(result.anomalies) == 0
    normal = seg_agent.stub.DetectAnomalies(detect_request("redness-cls", GREY)).detect_anomaly_result
    assert not normal.is_anomalous and normal.confidence > 0


def test_detect_anomalies_names_each_class_when_multiclass_segmentation(seg_agent: RunningAgent) -> None:
    image = model_factory.with_patch(RED_PATCH, 80, 48, 16, 16, (0, 255, 0))
    result = seg_agent.stub.DetectAnomalies(detect_request("colours-seg", image)).detect_anomaly_result
    by_name = {a.name: a.pixel_anomaly for a in result.anomalies}
    assert list(by_name) == ["background", "red-stain", "green-stain"]
    assert by_name["green-stain"].hex_color == "#00C000"
    assert by_name["red-stain"].total_percentage_area == pytest.approx(32 * 24 / (128 * 96), rel=0.1)
    assert by_name["green-stain"].total_percentage_area == pytest.approx(16 * 16 / (128 * 96), rel=0.2)
    mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8).reshape(96, 128, 3)
    assert tuple(mask[56, 88]) == (0, 0xC0, 0)


@pytest.mark.parametrize(
    ("width", "height", "data_len", "match"),
    [
        (63, 64, 63 * 64 * 3, "bitmap.width is 63"),
        (64, 4097, 64 * 3, "bitmap.height is 4097"),
        (0, 64, 0, "bitmap.width is 0"),
        (-5, 64, 10, "bitmap.width is -5"),
        (128, 96, 128 * 96 * 3 - 1, "width\\*height\\*3"),
        (128, 96, 128 * 96 * 3 + 1, "width\\*height\\*3"),
        (128, 96, 128 * 96 * 4, "RGBA/BGRX"),
    ],
)
def test_detect_anomalies_returns_invalid_argument_when_bitmap_malformed(
    seg_agent: RunningAgent, width: int, height: int, data_len: int, match: str
) -> None:
    request = pb2.DetectAnomaliesRequest(
        model_component="redness-seg", bitmap=pb2.Bitmap(width=width, height=height, byte_data=b"\x80" * data_len))
    error = rpc_error(seg_agent.stub.DetectAnomalies, request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    import re

    assert re.search(match, error.details()), error.details()


def test_detect_anomalies_returns_invalid_argument_when_bitmap_missing(seg_agent: RunningAgent) -> None:
    for request in (pb2.DetectAnomaliesRequest(model_component="redness-seg"),
                    pb2.DetectAnomaliesRequest(model_component="redness-seg", bitmap=pb2.Bitmap(width=64, height=64))):
        error = rpc_error(seg_agent.stub.DetectAnomalies, request)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "bitmap" in error.details()


def test_detect_anomalies_returns_internal_when_model_outputs_nan(running_agent: RunningAgent) -> None:
    model_factory.write_component(running_agent.models_dir, "nan-model", "segmentation")
    model_factory.nan_model(running_agent.models_dir / "nan-model" / "model.onnx")
    assert running_agent.start_and_wait("nan-model").status == pb2.RUNNING
    error = rpc_error(running_agent.stub.DetectAnomalies, detect_request("nan-model", RED_PATCH))
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "NaN" in error.details()
    # The agent keeps serving.
    assert running_agent.stub.DetectAnomalies(detect_request("nan-model", GREY)).detect_anomaly_result


# -- shared memory --------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_field", ["shared_memory_handle", "shared_memory_handle_field3"])
@pytest.mark.parametrize("leading_slash", [True, False])
def test_detect_anomalies_reads_and_writes_shared_memory_when_handles_given(
    seg_agent: RunningAgent, mask_field: str, leading_slash: bool
) -> None:
    offset = 4096 + 17
    with OwnedSegment(offset + RED_PATCH.nbytes + 100) as frame_seg, \
            OwnedSegment(offset + RED_PATCH.nbytes) as mask_seg:
        frame_seg.write(RED_PATCH, offset=offset)
        name = frame_seg.name if leading_slash else frame_seg.name.lstrip("/")
        params = pb2.AnomalyMaskParams()
        getattr(params, mask_field).CopyFrom(mask_seg.handle(size=RED_PATCH.nbytes, offset=offset))
        request = pb2.DetectAnomaliesRequest(
            model_component="redness-seg",
            bitmap=pb2.Bitmap(width=128, height=96,
                              shared_memory_handle=pb2.SharedMemoryHandle(name=name, size=RED_PATCH.nbytes,
                                                                          offset=offset)),
            anomaly_mask_params=params)
        result = seg_agent.stub.DetectAnomalies(request).detect_anomaly_result
        inline = seg_agent.stub.DetectAnomalies(detect_request("redness-seg", RED_PATCH)).detect_anomaly_result
        assert result.is_anomalous == inline.is_anomalous
        assert result.confidence == inline.confidence
        assert not result.anomaly_mask.byte_data
        handle = result.anomaly_mask.shared_memory_handle
        assert (handle.name, handle.offset, handle.size) == (mask_seg.name, offset, RED_PATCH.nbytes)
        assert mask_seg.read(RED_PATCH.nbytes, offset) == inline.anomaly_mask.byte_data
        assert os.path.exists(f"/dev/shm/{frame_seg.name[1:]}")


def test_detect_anomalies_accepts_padded_rows_when_size_is_height_times_stride(seg_agent: RunningAgent) -> None:
    stride = 128 * 3 + 64
    padded = np.zeros((96, stride), np.uint8)
    padded[:, : 128 * 3] = RED_PATCH.reshape(96, -1)
    with OwnedSegment(padded.nbytes) as segment:
        segment.write(padded)
        request = pb2.DetectAnomaliesRequest(
            model_component="redness-seg",
            bitmap=pb2.Bitmap(width=128, height=96, shared_memory_handle=segment.handle()))
        result = seg_agent.stub.DetectAnomalies(request).detect_anomaly_result
    inline = seg_agent.stub.DetectAnomalies(detect_request("redness-seg", RED_PATCH)).detect_anomaly_result
    assert result.anomaly_mask.byte_data == inline.anomaly_mask.byte_data
    assert result.confidence == inline.confidence


def test_detect_anomalies_returns_invalid_argument_when_shared_memory_unusable(seg_agent: RunningAgent) -> None:
    missing = f"/edge-agent-test-missing-{secrets.token_hex(4)}"
    cases = [
        (pb2.SharedMemoryHandle(name=missing, size=GREY.nbytes), "no shared memory segment"),
        (pb2.SharedMemoryHandle(name="/../etc/passwd", size=GREY.nbytes), "not valid"),
        (pb2.SharedMemoryHandle(name="", size=GREY.nbytes), "empty"),
    ]
    with OwnedSegment(GREY.nbytes) as segment:
        cases.append((segment.handle(size=GREY.nbytes, offset=1), "offset 1"))
        cases.append((pb2.SharedMemoryHandle(name=segment.name, size=2**64 - 1, offset=5), "overflows 64 bits"))
        for handle, match in cases:
            request = pb2.DetectAnomaliesRequest(
                model_component="redness-seg", bitmap=pb2.Bitmap(width=128, height=96, shared_memory_handle=handle))
            error = rpc_error(seg_agent.stub.DetectAnomalies, request)
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, match
            assert match in error.details()


def test_detect_anomalies_returns_invalid_argument_when_mask_segment_too_small(seg_agent: RunningAgent) -> None:
    with OwnedSegment(GREY.nbytes - 1) as mask_seg:
        request = detect_request("redness-seg", GREY)
        request.anomaly_mask_params.shared_memory_handle.CopyFrom(mask_seg.handle())
        error = rpc_error(seg_agent.stub.DetectAnomalies, request)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "mask needs" in error.details()
        assert os.fstat(os.open(f"/dev/shm/{mask_seg.name[1:]}", os.O_RDONLY)).st_size == GREY.nbytes - 1


def test_detect_anomalies_handles_largest_image_inline_when_limits_raised(seg_agent: RunningAgent) -> None:
    image = model_factory.with_patch(model_factory.grey_frame(4096, 4096), 1000, 1000, 512, 512, (255, 0, 0))
    result = seg_agent.stub.DetectAnomalies(detect_request("redness-seg", image)).detect_anomaly_result
    assert result.is_anomalous
    assert len(result.anomaly_mask.byte_data) == 4096 * 4096 * 3
    area = result.anomalies[1].pixel_anomaly.total_percentage_area
    assert area == pytest.approx(512 * 512 / 4096**2, rel=0.1)


# -- health ---------------------------------------------------------------------------------------


def test_health_reports_serving_and_per_model_status(running_agent: RunningAgent) -> None:
    health = health_pb2_grpc.HealthStub(running_agent.channel)
    overall = health.Check(health_pb2.HealthCheckRequest(service=""))
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    model = health.Check(health_pb2.HealthCheckRequest(service="redness-seg"))
    assert model.status == health_pb2.HealthCheckResponse.NOT_SERVING
    running_agent.start_and_wait("redness-seg")
    model = health.Check(health_pb2.HealthCheckRequest(service="redness-seg"))
    assert model.status == health_pb2.HealthCheckResponse.SERVING
    running_agent.stub.StopModel(pb2.StopModelRequest(model_component="redness-seg"))
    model = health.Check(health_pb2.HealthCheckRequest(service="redness-seg"))
    assert model.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_list_models_shows_failed_when_onnx_is_corrupt_before_anyone_starts_it(running_agent: RunningAgent) -> None:
    path = running_agent.models_dir / "redness-cls" / "model.onnx"
    path.write_bytes(path.read_bytes()[:40])  # truncated in place, same name
    models = {m.model_component: m for m in running_agent.stub.ListModels(pb2.ListModelsRequest()).models}
    assert models["redness-cls"].status == pb2.FAILED
    assert "redness-cls/model.onnx" in models["redness-cls"].status_message
    model_factory.anomaly_map_model(path, with_map=False)  # fixed: back to STOPPED without a restart
    models = {m.model_component: m for m in running_agent.stub.ListModels(pb2.ListModelsRequest()).models}
    assert models["redness-cls"].status == pb2.STOPPED


def test_a_large_padded_frame_by_shared_memory_answers_as_the_same_frame_inline(seg_agent: RunningAgent) -> None:
    # Large frames by shared memory are read a block of rows at a time and reduced as they come.
    width, height = 2048, 1536
    image = model_factory.with_patch(model_factory.grey_frame(width, height), 700, 500, 300, 200, (255, 0, 0))
    stride = width * 3 + 256
    padded = np.zeros((height, stride), np.uint8)
    padded[:, : width * 3] = image.reshape(height, -1)
    with OwnedSegment(padded.nbytes) as segment:
        segment.write(padded)
        request = pb2.DetectAnomaliesRequest(
            model_component="redness-seg",
            bitmap=pb2.Bitmap(width=width, height=height, shared_memory_handle=segment.handle()))
        shared = seg_agent.stub.DetectAnomalies(request).detect_anomaly_result
    inline = seg_agent.stub.DetectAnomalies(detect_request("redness-seg", image)).detect_anomaly_result
    assert shared.is_anomalous and shared.confidence == inline.confidence
    assert shared.anomaly_mask.byte_data == inline.anomaly_mask.byte_data
    assert [a.pixel_anomaly.total_percentage_area for a in shared.anomalies] == [
        a.pixel_anomaly.total_percentage_area for a in inline.anomalies]
