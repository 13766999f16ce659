"""Small real ONNX models and component directories for the tests.

The models are tiny but genuine ONNX graphs run by ONNX Runtime, with
behaviour a test can reason about exactly: the anomaly map is "redness"
(R - (G + B) / 2 on [0, 1] pixels), so a red patch on a grey frame is the
anomaly and a grey frame is normal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
REDNESS = np.array([1.0, -0.5, -0.5], dtype=np.float32)
GREENNESS = np.array([-0.5, 1.0, -0.5], dtype=np.float32)


def _image_input(size: int, batch: int | str = "batch") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def anomaly_map_model(path: Path, size: int = 64, *, with_map: bool = True) -> Path:
    """score = max(redness), anomaly_map = redness (N, 1, size, size)."""
    weight = numpy_helper.from_array(REDNESS.reshape(1, 3, 1, 1), "w")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])]
    if with_map:
        outputs.append(helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, size, size]))
    graph = helper.make_graph(nodes, "redness", [_image_input(size)], outputs, initializer=[weight])
    return _save(graph, path)


def multiclass_model(path: Path, size: int = 64) -> Path:
    """Class scores (N, 3, size, size): background 0.25, 'red' = redness, 'green' = greenness."""
    weight = np.zeros((3, 3, 1, 1), dtype=np.float32)
    weight[1, :, 0, 0] = REDNESS
    weight[2, :, 0, 0] = GREENNESS
    bias = np.array([0.25, 0.0, 0.0], dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["classes"]),
        helper.make_node("Slice", ["classes", "starts", "ends", "axes"], ["anomalous"]),
        helper.make_node("ReduceMax", ["anomalous"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    init = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(np.array([1], np.int64), "starts"),
            numpy_helper.from_array(np.array([3], np.int64), "ends"),
            numpy_helper.from_array(np.array([1], np.int64), "axes")]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("classes", TensorProto.FLOAT, ["batch", 3, size, size])]
    graph = helper.make_graph(nodes, "multiclass", [_image_input(size)], outputs, initializer=init)
    return _save(graph, path)


def base_manifest(size: int = 64) -> dict[str, Any]:
    return {
        "model_file": "model.onnx",
        "input": {"name": "image", "width": size, "height": size, "layout": "NCHW", "dtype": "float32",
                  "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "outputs": {"image_score": "score", "anomaly_map": "anomaly_map"},
        "decision": {"image": {"threshold": 0.5, "min": -0.5, "max": 1.0},
                     "pixel": {"threshold": 0.5}},
        "anomaly_types": [{"name": "redness", "color": "#FF0000"}],
        "lookout_vision_model_arn": "arn:aws:lookoutvision:us-east-1:123456789012:model/redness/1",
    }


def write_component(models_dir: Path, name: str, kind: str = "segmentation", *, size: int = 64,
                    manifest: dict[str, Any] | None = None) -> Path:
    """Writes a component directory; kind is segmentation, classification or multiclass."""
    directory = models_dir / name
    directory.mkdir(parents=True, exist_ok=True)
    data = base_manifest(size) if manifest is None else manifest
    if kind == "segmentation":
        anomaly_map_model(directory / "model.onnx", size)
    elif kind == "classification":
        anomaly_map_model(directory / "model.onnx", size, with_map=False)
        data = dict(data)
        data["outputs"] = {"image_score": "score"}
        data["decision"] = {"image": data["decision"]["image"]}
        data.pop("anomaly_types", None)
    elif kind == "multiclass":
        multiclass_model(directory / "model.onnx", size)
        data = dict(data)
        data["outputs"] = {"image_score": "score", "segmentation": "classes"}
        data["decision"] = {"image": data["decision"]["image"]}
        data["anomaly_types"] = [{"name": "red-stain", "color": "#FF0000"},
                                 {"name": "green-stain", "color": "#00C000"}]
    else:
        raise ValueError(kind)
    (directory / "manifest.json").write_text(json.dumps(data, indent=2))
    return directory


def grey_frame(width: int, height: int, level: int = 128) -> np.ndarray:
    return np.full((height, width, 3), level, dtype=np.uint8)


def with_patch(frame: np.ndarray, x: int, y: int, w: int, h: int, rgb: tuple[int, int, int]) -> np.ndarray:
    out = frame.copy()
    out[y:y + h, x:x + w] = rgb
    return out


def nan_model(path: Path, size: int = 64) -> Path:
    """anomaly_map = sqrt(0.5 - redness): finite on grey, NaN where the frame is strongly red."""
    weight = numpy_helper.from_array(REDNESS.reshape(1, 3, 1, 1), "w")
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["redness"]),
        helper.make_node("Sub", ["half", "redness"], ["slack"]),
        helper.make_node("Sqrt", ["slack"], ["anomaly_map"]),
        helper.make_node("ReduceSum", ["anomaly_map", "axes"], ["score"], keepdims=0),
    ]
    axes = numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, size, size])]
    graph = helper.make_graph(nodes, "nan", [_image_input(size)], outputs, initializer=[weight, half, axes])
    return _save(graph, path)


def slow_model(path: Path, size: int = 64, repeats: int = 150) -> Path:
    """The redness model plus a chain of 256x256 matrix products: real work that takes a while.

    The products are folded into the score at a negligible weight, so answers match
    :func:`anomaly_map_model` while each inference keeps the CPU busy (about a second on two cores).
    """
    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(REDNESS.reshape(1, 3, 1, 1), "w")
    mixer = numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), "mixer")
    tiny = numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "tiny")
    shape = numpy_helper.from_array(np.array([-1, 256], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["anomaly_map"]),
        helper.make_node("Reshape", ["image", "shape"], ["rows"]),
        helper.make_node("Tile", ["rows", "tiles"], ["block0"]),
    ]
    current = "block0"
    for index in range(repeats):
        nodes.append(helper.make_node("MatMul", [current, "mixer"], [f"p{index}"]))
        nodes.append(helper.make_node("Tanh", [f"p{index}"], [f"t{index}"]))
        current = f"t{index}"
    nodes += [
        helper.make_node("ReduceMax", [current], ["busy"], keepdims=0),
        helper.make_node("Mul", ["busy", "tiny"], ["nudge"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["peak"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Add", ["peak", "nudge"], ["score"]),
    ]
    init = [weight, mixer, tiny, shape,
            numpy_helper.from_array(np.array([24, 1], np.int64), "tiles")]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
               helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, size, size])]
    graph = helper.make_graph(nodes, "slow", [_image_input(size)], outputs, initializer=init)
    return _save(graph, path)
