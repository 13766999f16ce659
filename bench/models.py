"""The models the benchmark serves: the demo segmentation model and a larger conv net built here.

The conv net has random weights (He-initialised, so activations stay finite) and the shape of an
anomalib-style segmentation model: a strided convolutional encoder, a 1x1 head giving a
low-resolution anomaly map, an in-graph bilinear ``Resize`` back to the input size, and the image
score as the map's maximum. Its thresholds are calibrated on the benchmark frame so that a few
per cent of the pixels are anomalous: the mask the agent paints is never empty or full.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DEMO_COMPONENT = "demo-brick-segmentation"
CONV_COMPONENT = "bench-conv"
MODEL_INPUT_PX = 256
_OPSET = 17
_SEED = 20240611
# (output channels, stride) of each 3x3 convolution; 256 px in, 16x16x512 out.
_ENCODER = ((32, 2), (64, 2), (128, 2), (256, 2), (512, 1), (512, 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """One component the benchmark serves."""

    key: str  # what --models names: "demo" or "conv"
    component: str  # the component directory's name
    parameters: int
    description: str


def conv_net(width: float = 1.0, size: int = MODEL_INPUT_PX) -> tuple[onnx.ModelProto, int]:
    """Builds the conv net; returns it and its parameter count.

    Args:
        width: multiplies every layer's channel count (1.0: about 3.9 million parameters).
        size: the square input side, in pixels.
    """
    rng = np.random.default_rng(_SEED)
    nodes = []
    init = []
    current, channels = "image", 3
    parameters = 0
    for index, (out_channels, stride) in enumerate(_ENCODER):
        out_channels = max(4, int(out_channels * width))
        fan_in = channels * 9
        weight = (rng.standard_normal((out_channels, channels, 3, 3)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        bias = np.zeros(out_channels, dtype=np.float32)
        init += [numpy_helper.from_array(weight, f"w{index}"), numpy_helper.from_array(bias, f"b{index}")]
        parameters += weight.size + bias.size
        nodes.append(helper.make_node("Conv", [current, f"w{index}", f"b{index}"], [f"c{index}"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        current, channels = f"r{index}", out_channels
    head = (rng.standard_normal((1, channels, 1, 1)) / np.sqrt(channels)).astype(np.float32)
    init.append(numpy_helper.from_array(head, "head"))
    parameters += head.size
    # Scales, not sizes: a Resize to fixed sizes would pin the batch to 1 (and defeat dynamic batching).
    stride = int(np.prod([s for _, s in _ENCODER]))
    init.append(numpy_helper.from_array(np.array([1, 1, stride, stride], np.float32), "out_scales"))
    nodes += [
        helper.make_node("Conv", [current, "head"], ["low_map"]),
        helper.make_node("Resize", ["low_map", "", "out_scales"], ["anomaly_map"], mode="linear"),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "bench_conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, size, size])],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, parameters


def _conv_manifest(size: int, image_threshold: float, pixel_threshold: float, low: float, high: float) -> dict:
    return {
        "model_file": "model.onnx",
        "description": "Benchmark: random-weight conv net (anomalib-shaped segmentation model)",
        "input": {"name": "image", "width": size, "height": size, "layout": "NCHW", "dtype": "float32",
                  "channel_order": "RGB", "scale": 1.0 / 255.0, "mean": list(IMAGENET_MEAN),
                  "std": list(IMAGENET_STD), "resize": "bilinear"},
        "outputs": {"image_score": "score", "anomaly_map": "anomaly_map"},
        "decision": {"image": {"threshold": image_threshold, "min": low, "max": high},
                     "pixel": {"threshold": pixel_threshold, "min": low, "max": high}},
        "anomaly_types": [{"name": "anomaly", "color": "#FF0000"}],
    }


def write_conv_component(models_dir: Path, frame: np.ndarray, *, width: float = 1.0) -> ModelSpec:
    """Writes ``models_dir/bench-conv`` with thresholds calibrated on ``frame`` (H, W, 3 uint8)."""
    import onnxruntime as ort
    from PIL import Image

    model, parameters = conv_net(width)
    directory = models_dir / CONV_COMPONENT
    directory.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (directory / "model.onnx").write_bytes(data)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    pixels = np.asarray(Image.fromarray(frame).resize((MODEL_INPUT_PX, MODEL_INPUT_PX))).astype(np.float32)
    tensor = ((pixels / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)
    score, amap = session.run(["score", "anomaly_map"], {"image": tensor.transpose(2, 0, 1)[np.newaxis].copy()})
    # About 3% of the pixels anomalous; the image score just below the map's maximum (anomalous).
    pixel_threshold = float(np.quantile(amap, 0.97))
    low, high = float(amap.min()), float(amap.max()) + 1e-3
    manifest = _conv_manifest(MODEL_INPUT_PX, float(score.reshape(-1)[0]) * 0.99, pixel_threshold, low, high)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ModelSpec("conv", CONV_COMPONENT, parameters,
                     f"random-weight conv net, {parameters / 1e6:.2f} M parameters, {MODEL_INPUT_PX} px input")


def write_demo_component(models_dir: Path, cache_dir: Path) -> ModelSpec:
    """Copies the demo segmentation component (built once into ``cache_dir``) into ``models_dir``."""
    from edge_agent import demo

    built = demo.build_demo_models(cache_dir)[0]
    target = models_dir / DEMO_COMPONENT
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(built, target)
    model = onnx.load(str(target / "model.onnx"))
    parameters = int(sum(np.prod(i.dims) for i in model.graph.initializer))
    return ModelSpec("demo", DEMO_COMPONENT, parameters,
                     f"demo segmentation (patch Gaussian), {parameters / 1e3:.1f} k parameters, 256 px input")
