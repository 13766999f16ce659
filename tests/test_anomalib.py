"""anomalib exports, served as anomalib exports them, with anomalib's own answers.

tests/data/anomalib holds a real PaDiM model trained and exported by anomalib 2.7.0 and by
anomalib 1.2.0 (see its README.md and make_data.py), nine real images, and what anomalib's
own inferencer answered for each. The agent serves those exports over the gRPC API and
must give the same answers, within these tolerances:

* ``is_anomalous`` equals anomalib's ``pred_label``, exactly;
* ``confidence`` is anomalib's normalized ``pred_score`` for an anomalous image and
  ``1 - pred_score`` for a normal one, within ``SCORE_ATOL``: both run the same graph on
  the same input values (the agent resizes frames as the graph's own Resize does), so only
  float rounding separates them (measured: below 1e-6);
* the mask, at the image's size: for anomalib 2.x, anomalib's anomaly map resized to the
  image and thresholded (its ``pred_mask`` exists at the model's resolution only), the
  same pixels up to ``MASK_V2_MAX_DIFF`` of the image (measured: none differ); for anomalib
  1.x, whose inferencer thresholds at the model's resolution and then resizes the binary
  mask, pixels may differ only along the mask's edge, within one model pixel
  (``ceil(image side / model side)`` image pixels), and at most ``MASK_V1_MAX_DIFF`` of
  the image.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import edge_agent_pb2 as pb2
from edge_agent.anomalib_export import convert_anomalib, find_export, read_graph
from edge_agent.backends import OnnxRuntimeProvider
from edge_agent.constants import MIN_CONFIDENCE
from edge_agent.engines.tensorrt import fake_gpu_provider
from edge_agent.errors import InvalidArgumentError, ManifestError
from edge_agent.inference import resize_bilinear_torch
from edge_agent.manifest import RESIZE_TORCH_BILINEAR, Threshold, load_manifest
from edge_agent.models import BackendProvider
from tests.conftest import RunningAgent, start_agent

DATA = Path(__file__).parent / "data" / "anomalib"
EXPORTS = {"2.x": DATA / "anomalib-2.7.0", "1.x": DATA / "anomalib-1.2.0"}
MODEL_SIDE = 128  # both exports resize frames to 128x128 (make_data.py)
SCORE_ATOL = 1e-4
MASK_V2_MAX_DIFF = 0.0005  # fraction of the image's pixels
MASK_V1_MAX_DIFF = 0.01
ARN = "arn:aws:lookoutvision:eu-west-1:123456789012:model/brick/1"


def expected(version: str) -> dict[str, Any]:
    return json.loads((EXPORTS[version] / "expected.json").read_text())


def image(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / "images" / name).convert("RGB"))


def reference_mask(version: str, name: str) -> np.ndarray:
    return np.asarray(Image.open(EXPORTS[version] / "masks" / name)) > 0


def copy_export(version: str, component: Path, *, flat: bool = False) -> Path:
    """A component holding the export as anomalib wrote it: weights/onnx/..., or its files alone."""
    source = EXPORTS[version] / "weights"
    if flat:
        shutil.copytree(source / "onnx", component)
    else:
        component.mkdir(parents=True)
        shutil.copytree(source, component / "weights")
    return component


def detect(agent: RunningAgent, name: str, pixels: np.ndarray) -> Any:
    height, width = pixels.shape[:2]
    request = pb2.DetectAnomaliesRequest(
        model_component=name, bitmap=pb2.Bitmap(width=width, height=height, byte_data=pixels.tobytes()))
    return agent.stub.DetectAnomalies(request).detect_anomaly_result


def listed(agent: RunningAgent) -> dict[str, Any]:
    return {m.model_component: m for m in agent.stub.ListModels(pb2.ListModelsRequest()).models}


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(mask, radius)
    height, width = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


def assert_mask_matches(version: str, name: str, got: np.ndarray, want: np.ndarray) -> None:
    differ = got != want
    if version == "2.x":
        assert differ.mean() <= MASK_V2_MAX_DIFF, f"{name}: {int(differ.sum())} pixels differ"
        return
    radius = math.ceil(max(want.shape) / MODEL_SIDE)
    near_edge = (got & ~want & dilate(want, radius)) | (~got & want & dilate(~want, radius))
    assert not (differ & ~near_edge).any(), f"{name}: pixels differ away from the mask's edge"
    assert differ.mean() <= MASK_V1_MAX_DIFF, f"{name}: {int(differ.sum())} pixels differ"


def assert_answers_match_anomalib(agent: RunningAgent, component: str, version: str,
                                  color: tuple[int, int, int] = (255, 0, 0)) -> None:
    for name, want in expected(version)["images"].items():
        pixels = image(name)
        result = detect(agent, component, pixels)
        assert result.is_anomalous == want["pred_label"], name
        score = want["pred_score"]
        confidence = max(MIN_CONFIDENCE, score if want["pred_label"] else 1.0 - score)
        assert result.confidence == pytest.approx(confidence, abs=SCORE_ATOL), name
        assert (result.anomaly_mask.width, result.anomaly_mask.height) == (want["width"], want["height"])
        mask = np.frombuffer(result.anomaly_mask.byte_data, np.uint8).reshape(want["height"], want["width"], 3)
        painted = np.all(mask == color, axis=2)
        assert np.all(painted | np.all(mask == 255, axis=2)), f"{name}: the mask holds other colours"
        assert_mask_matches(version, name, painted, reference_mask(version, name))
        areas = {a.name: a.pixel_anomaly.total_percentage_area for a in result.anomalies}
        assert areas["background"] == pytest.approx(1.0 - painted.mean(), abs=1e-6)
        assert areas.get("anomaly", 0.0) == pytest.approx(painted.mean(), abs=1e-6)


@pytest.fixture(params=["onnxruntime", "tensorrt-fake"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendProvider]:
    if request.param == "onnxruntime":
        yield OnnxRuntimeProvider(intra_op_threads=1)
        return
    made = fake_gpu_provider("512MiB", tmp_path / "engines", build_in_subprocess=False,
                             workspace_bytes=16 * 2**20)
    yield made
    made.close()


@pytest.fixture
def agents(short_tmp: Path) -> Iterator[list[RunningAgent]]:
    started: list[RunningAgent] = []
    yield started
    for agent in started:
        agent.channel.close()
        agent.agent.stop(grace_s=1.0)


# -- the comparison with anomalib, over the gRPC API ----------------------------------------------


@pytest.mark.parametrize("version", ["2.x", "1.x"])
def test_detect_anomalies_gives_anomalibs_answers_when_serving_its_export(
    version: str, provider: BackendProvider, tmp_path: Path, short_tmp: Path, agents: list[RunningAgent]
) -> None:
    copy_export(version, tmp_path / "models" / "brick")
    agent = start_agent([tmp_path / "models"], short_tmp, provider=provider)
    agents.append(agent)
    model = listed(agent)["brick"]
    assert (model.status, model.status_message) == (pb2.STOPPED, f"anomalib {version} export (detected)")
    description = agent.start_and_wait("brick")
    assert description.status == pb2.RUNNING, description.status_message
    assert_answers_match_anomalib(agent, "brick", version)


@pytest.mark.parametrize("version", ["2.x", "1.x"])
def test_detect_anomalies_gives_anomalibs_answers_when_component_was_converted(
    version: str, tmp_path: Path, short_tmp: Path, agents: list[RunningAgent]
) -> None:
    manifest = convert_anomalib(EXPORTS[version], tmp_path / "models" / "brick", color="#00C000")
    assert manifest.origin == ""  # a plain manifest.json now
    agent = start_agent([tmp_path / "models"], short_tmp)
    agents.append(agent)
    assert agent.start_and_wait("brick").status == pb2.RUNNING
    assert_answers_match_anomalib(agent, "brick", version, color=(0, 192, 0))


def test_list_models_shows_additions_when_manifest_marks_an_anomalib_export(
    tmp_path: Path, short_tmp: Path, agents: list[RunningAgent]
) -> None:
    component = copy_export("2.x", tmp_path / "models" / "brick", flat=True)
    (component / "manifest.json").write_text(json.dumps({
        "anomalib": True, "lookout_vision_model_arn": ARN,
        "anomaly_types": [{"name": "anomaly", "color": "#00FF00"}]}))
    agent = start_agent([tmp_path / "models"], short_tmp)
    agents.append(agent)
    model = listed(agent)["brick"]
    assert model.lookout_vision_model_arn == ARN
    assert model.status_message == ("anomalib 2.x export (detected; manifest.json adds anomaly_types, "
                                    "lookout_vision_model_arn)")
    assert agent.start_and_wait("brick").status == pb2.RUNNING
    result = detect(agent, "brick", image("hole.png"))
    assert result.is_anomalous
    assert [(a.name, a.pixel_anomaly.hex_color) for a in result.anomalies] == [
        ("background", "#FFFFFF"), ("anomaly", "#00FF00")]


def test_list_models_shows_failed_naming_the_file_when_export_weights_are_missing(
    tmp_path: Path, short_tmp: Path, agents: list[RunningAgent]
) -> None:
    component = copy_export("2.x", tmp_path / "models" / "brick", flat=True)
    (component / "model.onnx.data").unlink()
    agent = start_agent([tmp_path / "models"], short_tmp)
    agents.append(agent)
    model = listed(agent)["brick"]
    assert model.status == pb2.FAILED
    assert "model.onnx.data" in model.status_message and "missing" in model.status_message
    with pytest.raises(grpc.RpcError):
        detect(agent, "brick", image("hole.png"))


# -- what the agent reads from the real exports --------------------------------------------------


def test_load_manifest_serves_anomalib_2x_export_as_its_post_processor_when_no_manifest(tmp_path: Path) -> None:
    manifest = load_manifest(copy_export("2.x", tmp_path / "brick", flat=True))
    assert manifest.origin == "anomalib 2.x export (detected)"
    assert manifest.model_file == tmp_path / "brick" / "model.onnx"
    spec = manifest.input
    assert (spec.name, spec.width, spec.height, spec.layout, spec.dtype) == ("input", 128, 128, "NCHW", "float32")
    assert (spec.scale, spec.mean, spec.std, spec.resize) == (1 / 255, (0, 0, 0), (1, 1, 1), RESIZE_TORCH_BILINEAR)
    outputs = manifest.outputs
    assert (outputs.image_score, outputs.image_label) == ("pred_score", "pred_label")
    assert outputs.anomaly_map == "anomaly_map"
    assert manifest.image_threshold == Threshold(0.5, 0.0, 1.0, ">")
    assert manifest.pixel_threshold == Threshold(0.5, 0.0, 1.0, ">")
    assert [(t.name, t.color) for t in manifest.anomaly_types] == [("anomaly", "#FF0000")]


def test_load_manifest_takes_thresholds_from_metadata_when_export_is_anomalib_1x(tmp_path: Path) -> None:
    manifest = load_manifest(copy_export("1.x", tmp_path / "brick"))
    metadata = expected("1.x")["metadata"]
    assert manifest.origin == "anomalib 1.x export (detected)"
    assert manifest.model_file == tmp_path / "brick" / "weights" / "onnx" / "model.onnx"
    assert (manifest.input.width, manifest.input.height, manifest.input.resize) == (128, 128, RESIZE_TORCH_BILINEAR)
    outputs = manifest.outputs
    assert (outputs.image_score, outputs.image_score_reduce, outputs.anomaly_map) == ("output", "max", "output")
    assert manifest.image_threshold == Threshold(metadata["image_threshold"], metadata["pred_scores.min"],
                                                 metadata["pred_scores.max"], ">=")
    assert manifest.pixel_threshold == Threshold(metadata["pixel_threshold"], metadata["anomaly_maps.min"],
                                                 metadata["anomaly_maps.max"], ">=")


def test_read_graph_finds_the_resize_target_and_pixel_threshold_when_graph_is_anomalib_2x() -> None:
    graph = read_graph(EXPORTS["2.x"] / "weights" / "onnx" / "model.onnx")
    assert graph.resize_size == (128, 128)
    assert graph.comparisons["pred_mask"] == (">", 0.5) and graph.comparisons["pred_label"] == (">", 0.5)
    assert graph.external_files == ("model.onnx.data",)
    assert [t.name for t in graph.outputs] == ["pred_score", "pred_label", "anomaly_map", "pred_mask"]
    assert graph.inputs[0].shape == (None, 3, None, None)


def test_convert_anomalib_writes_a_complete_editable_manifest_when_given_the_export_root(tmp_path: Path) -> None:
    component = tmp_path / "brick"
    converted = convert_anomalib(EXPORTS["2.x"], component, lookout_vision_model_arn=ARN, description="line 3")
    data = json.loads((component / "manifest.json").read_text())
    assert "anomalib" not in data and data["model_file"] == "model.onnx"
    assert sorted(p.name for p in component.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data"]
    assert (converted.lookout_vision_model_arn, converted.description) == (ARN, "line 3")
    detected = load_manifest(copy_export("2.x", tmp_path / "detected"))
    for field in ("input", "outputs", "image_threshold", "pixel_threshold", "anomaly_types"):
        assert getattr(converted, field) == getattr(detected, field), field


def test_convert_anomalib_refuses_when_component_dir_holds_files(tmp_path: Path) -> None:
    component = tmp_path / "brick"
    component.mkdir()
    (component / "notes.txt").write_text("mine")
    with pytest.raises(InvalidArgumentError, match="already holds files"):
        convert_anomalib(EXPORTS["1.x"], component)
    convert_anomalib(EXPORTS["1.x"], component, overwrite=True)
    assert json.loads((component / "manifest.json").read_text())["decision"]["image"]["threshold"] == \
        expected("1.x")["metadata"]["image_threshold"]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"color": "red"}, InvalidArgumentError, "#RRGGBB"),
    ({"color": "#FFFFFF"}, InvalidArgumentError, "background"),
])
def test_convert_anomalib_refuses_bad_arguments_when_given(tmp_path: Path, kwargs: dict[str, Any],
                                                           error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        convert_anomalib(EXPORTS["2.x"], tmp_path / "brick", **kwargs)
    assert not (tmp_path / "brick").exists()


def test_convert_anomalib_refuses_when_directory_holds_no_export(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no anomalib ONNX export"):
        convert_anomalib(tmp_path, tmp_path / "brick")


# -- small synthetic exports: the cases the real ones do not cover --------------------------------


def synthetic_export(directory: Path, *, outputs: tuple[str, ...] = ("pred_score", "pred_label", "anomaly_map",
                                                                      "pred_mask"),
                     resize: int | None = 32, map_side: int | None = 32, names: dict[str, str] | None = None,
                     metadata: dict[str, Any] | None = None, input_side: int | None = None) -> Path:
    """An anomalib-shaped graph: resize, redness map, max score, thresholds 0.5 (label) and 0.375 (mask)."""
    side = input_side if input_side is not None else "height"
    nodes = [helper.make_node("Shape", ["input"], ["batch_and_channels"], start=0, end=2)]
    initializers = [numpy_helper.from_array(np.array([[[[1.0]], [[-0.5]], [[-0.5]]]], np.float32), "redness"),
                    numpy_helper.from_array(np.array(0.5, np.float32), "label_threshold"),
                    numpy_helper.from_array(np.array(0.375, np.float32), "mask_threshold")]
    resized = "input"
    if resize is not None:
        initializers.append(numpy_helper.from_array(np.array([resize, resize], np.int64), "side"))
        nodes += [helper.make_node("Concat", ["batch_and_channels", "side"], ["sizes"], axis=0),
                  helper.make_node("Resize", ["input", "", "", "sizes"], ["resized"], mode="linear",
                                   coordinate_transformation_mode="half_pixel")]
        resized = "resized"
    nodes += [helper.make_node("Conv", [resized, "redness"], ["anomaly_map"]),
              helper.make_node("ReduceMax", ["anomaly_map"], ["pred_score"], axes=[1, 2, 3], keepdims=0),
              helper.make_node("Greater", ["pred_score", "label_threshold"], ["pred_label"]),
              helper.make_node("Greater", ["anomaly_map", "mask_threshold"], ["pred_mask"])]
    shapes = {"pred_score": (TensorProto.FLOAT, ["batch"]), "pred_label": (TensorProto.BOOL, ["batch"]),
              "anomaly_map": (TensorProto.FLOAT, ["batch", 1, map_side or "map_h", map_side or "map_w"]),
              "pred_mask": (TensorProto.BOOL, ["batch", 1, map_side or "map_h", map_side or "map_w"])}
    names = names or {}
    for old, new in names.items():
        for node in nodes:
            node.input[:] = [new if n == old else n for n in node.input]
            node.output[:] = [new if n == old else n for n in node.output]
    graph = helper.make_graph(
        nodes, "anomalib-like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, side, input_side or "width"])],
        [helper.make_tensor_value_info(names.get(n, n), *shapes[n]) for n in outputs], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    if metadata is not None:
        (directory / "metadata.json").write_text(json.dumps(metadata))
    return directory


def test_load_manifest_reads_pixel_threshold_from_graph_when_sensitivity_was_changed(tmp_path: Path) -> None:
    manifest = load_manifest(synthetic_export(tmp_path / "c"))
    assert manifest.pixel_threshold == Threshold(0.375, 0.0, 1.0, ">")
    assert (manifest.input.width, manifest.input.height) == (32, 32)


def test_load_manifest_paints_pred_mask_when_export_has_no_anomaly_map(tmp_path: Path) -> None:
    manifest = load_manifest(synthetic_export(tmp_path / "c", outputs=("pred_score", "pred_label", "pred_mask")))
    assert (manifest.outputs.segmentation, manifest.outputs.segmentation_kind) == ("pred_mask", "labels")
    assert manifest.outputs.anomaly_map is None and len(manifest.anomaly_types) == 1


def test_load_manifest_asks_for_the_size_when_export_takes_any_size_and_graph_does_not_say(tmp_path: Path) -> None:
    component = synthetic_export(tmp_path / "c", resize=None, map_side=None)
    with pytest.raises(ManifestError, match='"input": {"width": W, "height": H}'):
        load_manifest(component)
    (component / "manifest.json").write_text(json.dumps({"anomalib": True, "input": {"width": 40, "height": 30}}))
    manifest = load_manifest(component)
    assert (manifest.input.width, manifest.input.height) == (40, 30)
    assert manifest.origin == "anomalib 2.x export (detected; manifest.json adds input)"


def test_load_manifest_uses_the_map_size_when_graph_has_no_resize(tmp_path: Path) -> None:
    manifest = load_manifest(synthetic_export(tmp_path / "c", resize=None, map_side=48))
    assert (manifest.input.width, manifest.input.height) == (48, 48)


def test_load_manifest_refuses_when_anomaly_map_is_smaller_than_the_resize_target(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="CenterCrop"):
        load_manifest(synthetic_export(tmp_path / "c", resize=32, map_side=28))


def test_load_manifest_refuses_a_stated_size_when_export_has_a_fixed_size(tmp_path: Path) -> None:
    component = synthetic_export(tmp_path / "c", resize=None, map_side=64, input_side=64)
    assert load_manifest(component).input.width == 64
    (component / "manifest.json").write_text(json.dumps({"anomalib": True, "input": {"width": 32, "height": 32}}))
    with pytest.raises(ManifestError, match="takes 64x64 images only"):
        load_manifest(component)


@pytest.mark.parametrize(("additions", "match"), [
    ({"decision": {"image": {"threshold": 0.3}}}, "'decision' cannot be set here"),
    ({"outputs": {"image_score": "pred_score"}}, "'outputs' cannot be set here"),
    ({"input": {"width": 32, "height": 32, "mean": [0, 0, 0]}}, "may only hold width and height"),
    ({"anomaly_types": [{"name": "a", "color": "#00FF00"}, {"name": "b", "color": "#0000FF"}]}, "lists one type"),
    ({"anomaly_types": [{"name": "anomaly", "color": "green"}]}, "#RRGGBB"),
    ({"anomalib": "yes"}, "must be true"),
    ({"model_file": "../model.onnx"}, "inside the component directory"),
    ({"model_file": "other.onnx"}, "model file not found"),
])
def test_load_manifest_refuses_additions_that_would_change_anomalibs_processing(
    tmp_path: Path, additions: dict[str, Any], match: str
) -> None:
    component = synthetic_export(tmp_path / "c")
    (component / "manifest.json").write_text(json.dumps({"anomalib": True, **additions}))
    with pytest.raises(ManifestError, match=match) as info:
        load_manifest(component)
    assert str(component) in str(info.value)


def test_load_manifest_reads_anomalib_1_0_min_max_when_metadata_has_no_prefix(tmp_path: Path) -> None:
    metadata = {"task": "segmentation", "image_threshold": 2.0, "pixel_threshold": 1.5, "min": 0.5, "max": 4.5}
    manifest = load_manifest(synthetic_export(tmp_path / "c", outputs=("anomaly_map",),
                                              names={"anomaly_map": "output"}, metadata=metadata))
    assert manifest.origin == "anomalib 1.x export (detected)"
    assert manifest.image_threshold == Threshold(2.0, 0.5, 4.5, ">=")
    assert manifest.pixel_threshold == Threshold(1.5, 0.5, 4.5, ">=")


def test_load_manifest_returns_no_mask_when_anomalib_1x_task_is_classification(tmp_path: Path) -> None:
    metadata = {"task": "classification", "image_threshold": 2.0, "pixel_threshold": 1.5,
                "pred_scores.min": 0.5, "pred_scores.max": 4.5}
    manifest = load_manifest(synthetic_export(tmp_path / "c", outputs=("anomaly_map",),
                                              names={"anomaly_map": "output"}, metadata=metadata))
    assert not manifest.is_segmentation and manifest.anomaly_types == ()
    assert (manifest.outputs.image_score, manifest.outputs.image_score_reduce) == ("output", "max")


@pytest.mark.parametrize(("metadata", "match"), [
    ({"task": "segmentation", "pixel_threshold": 1.0}, "no 'image_threshold'"),
    ({"task": "segmentation", "image_threshold": "high"}, "must be a finite number"),
    ({"task": "counting", "image_threshold": 1.0}, "must be one of classification"),
    ({"task": "segmentation", "image_threshold": 1.0, "min": 2.0, "max": 2.0}, "must be greater than"),
    ({"transform": {"__class_fullname__": "Compose"}, "image_threshold": 1.0}, "anomalib 0.x export"),
])
def test_load_manifest_names_metadata_json_when_its_content_is_unusable(
    tmp_path: Path, metadata: dict[str, Any], match: str
) -> None:
    component = synthetic_export(tmp_path / "c", outputs=("anomaly_map",), names={"anomaly_map": "output"},
                                 metadata=metadata)
    with pytest.raises(ManifestError, match=match) as info:
        load_manifest(component)
    assert "metadata.json" in str(info.value)


def test_load_manifest_names_manifest_json_when_onnx_file_is_not_an_anomalib_export(tmp_path: Path) -> None:
    component = synthetic_export(tmp_path / "c", outputs=("anomaly_map",), names={"anomaly_map": "heatmap"})
    with pytest.raises(ManifestError, match="not an anomalib export") as info:
        load_manifest(component)
    assert "manifest.json" in str(info.value)


def test_find_export_refuses_when_directory_holds_two_onnx_files(tmp_path: Path) -> None:
    component = synthetic_export(tmp_path / "c")
    shutil.copy(component / "model.onnx", component / "model_v2.onnx")
    with pytest.raises(ManifestError, match="several ONNX files"):
        find_export(component)
    (component / "manifest.json").write_text(json.dumps({"anomalib": True, "model_file": "model_v2.onnx"}))
    assert load_manifest(component).model_file == component / "model_v2.onnx"


def test_find_export_points_to_onnx_when_directory_holds_an_openvino_export(tmp_path: Path) -> None:
    folder = tmp_path / "c" / "weights" / "openvino"
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(b"\0")
    with pytest.raises(ManifestError, match='export_type="onnx"'):
        find_export(tmp_path / "c")


def test_metadata_json_is_ignored_and_said_so_when_outputs_are_anomalib_2x(tmp_path: Path) -> None:
    component = synthetic_export(tmp_path / "c", metadata={"task": "segmentation", "image_threshold": 9.0})
    manifest = load_manifest(component)
    assert manifest.origin == ("anomalib 2.x export (detected; metadata.json beside it is ignored: anomalib 2.x "
                               "writes none)")
    assert manifest.image_threshold.threshold == 0.5


# -- the pieces the comparison rests on -------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [((256, 256), (128, 128)), ((320, 256), (128, 128)),
                                                 ((97, 61), (128, 96)), ((64, 64), (50, 70))])
def test_resize_bilinear_torch_matches_onnx_resize_when_shrinking_or_enlarging(
    source: tuple[int, int], target: tuple[int, int]
) -> None:
    pixels = np.random.default_rng(sum(source)).integers(0, 256, (source[1], source[0], 3), dtype=np.uint8)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph(
        [node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, source[1], source[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([1, 3, target[1], target[0]], np.int64), "sizes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"x": pixels.astype(np.float32).transpose(2, 0, 1)[None]})[0][0].transpose(1, 2, 0)
    got = resize_bilinear_torch(pixels, *target)
    assert got.dtype == np.float32 and got.shape == (target[1], target[0], 3)
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.parametrize(("compare", "at_threshold"), [(">=", True), (">", False)])
def test_threshold_decides_at_the_threshold_as_its_compare_says(compare: str, at_threshold: bool) -> None:
    threshold = Threshold(0.5, 0.0, 1.0, compare)
    assert threshold.exceeded(0.5) is at_threshold and threshold.exceeded(0.51) and not threshold.exceeded(0.49)
    assert threshold.exceeded_map(np.array([0.49, 0.5, 0.51])).tolist() == [False, at_threshold, True]


def test_convert_anomalib_command_writes_a_component_the_agent_serves(tmp_path: Path, short_tmp: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from edge_agent.cli import main

    target = tmp_path / "models" / "brick-padim"
    code = main(["convert-anomalib", str(EXPORTS["2.x"]), str(target), "--arn", ARN, "--color", "#00FF00"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["lookout_vision_model_arn"] == ARN
    assert manifest["anomaly_types"] == [{"name": "anomaly", "color": "#00FF00"}]
    assert main(["convert-anomalib", str(EXPORTS["2.x"]), str(target)]) == 2  # not empty, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    agent = start_agent([tmp_path / "models"], short_tmp)
    try:
        assert agent.start_and_wait("brick-padim").status == pb2.RUNNING
    finally:
        agent.channel.close()
        agent.agent.stop(1.0)
