"""anomalib ONNX exports, served as anomalib exports them.

anomalib 2.x (``Engine.export(model, "onnx")``, ``AnomalibModule.to_onnx``) exports the
whole inference module: its pre-processor (a ``Resize`` to the training size and
ImageNet normalization), the model and its post-processor. The graph takes one input,
``input``, RGB float in [0, 1], NCHW; its outputs are those present among
``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask``, in that order. Scores
and maps are already min-max normalized so that 0.5 is the threshold (``pred_label =
pred_score > 0.5``, ``pred_mask = anomaly_map > 0.5``, with the default sensitivity),
and ``anomaly_map`` comes at the model's resolution. No metadata file is written.

anomalib 1.x (``to_onnx`` in ``models/components/base/export_mixin.py``) exports the
pre-processor and the model, not the post-processing: one output, ``output``, the raw
anomaly map (or one raw score per image for classification models), and
``metadata.json`` beside it with ``task``, ``image_threshold``, ``pixel_threshold`` and
the normalization statistics (``pred_scores.min``/``.max`` and ``anomaly_maps.min``/
``.max`` from 1.1 on; ``min``/``max`` in 1.0). Its inferencer scores an image by the
map's maximum, labels it anomalous when that score is ``>= image_threshold``, marks
pixels ``>= pixel_threshold`` and normalizes with ``clip((x - threshold) / (max - min)
+ 0.5, 0, 1)``.

Both resize inside the graph with PyTorch's bilinear interpolation without
antialiasing (anomalib turns antialiasing off for export). The agent resizes frames to
the size that ``Resize`` targets, in the same way (``resize: bilinear-torch``), so the
graph's own resize does nothing and the answers are anomalib's for any frame size.

This module recognizes such a directory (:func:`find_export`), derives the manifest that
serves it (:func:`export_manifest`), and writes that manifest out with the model for
users who want to edit it (:func:`convert_anomalib`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_agent.constants import MANIFEST_FILE
from edge_agent.errors import InvalidArgumentError, ManifestError
from edge_agent.manifest import BACKGROUND_COLOR, HEX_COLOR, RESIZE_TORCH_BILINEAR, Manifest, parse_manifest

LOGGER = logging.getLogger(__name__)

#: The key that marks a manifest.json as additions to an anomalib export.
MANIFEST_KEY = "anomalib"
METADATA_FILE = "metadata.json"
#: Where anomalib writes an ONNX export under its export root.
EXPORT_SUBDIR = Path("weights") / "onnx"
V1, V2 = "1.x", "2.x"
V2_OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
ANOMALY_NAME = "anomaly"
DEFAULT_COLOR = "#FF0000"
#: anomalib 2.x's normalized decision point (``1 - sensitivity``, sensitivity 0.5 by default).
V2_THRESHOLD = 0.5
V1_TASKS = ("classification", "segmentation", "detection")
# What a manifest.json with "anomalib": true may set; the rest comes from the export.
_OVERRIDABLE = ("model_file", "lookout_vision_model_arn", "description", "anomaly_types", "memory_bytes", "input")
_DERIVED = ("outputs", "decision")
_ONNX_FLOAT = onnx.TensorProto.FLOAT
# Ops that end the pre-processing prefix of a graph: the model proper has begun.
_MODEL_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_COMPARE_OPS = {"Greater": ">", "GreaterOrEqual": ">="}


@dataclass(frozen=True)
class GraphTensor:
    """A graph input or output: name, element type, and shape (None where symbolic)."""

    name: str
    elem_type: int
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class GraphFacts:
    """What the agent reads from an exported graph without running it."""

    inputs: tuple[GraphTensor, ...]
    outputs: tuple[GraphTensor, ...]
    #: (height, width) the pre-processing ``Resize`` targets, when the graph says so.
    resize_size: tuple[int, int] | None
    #: output name -> (comparison, constant) for outputs made by comparing with a constant.
    comparisons: dict[str, tuple[str, float]]
    #: files holding the weights (ONNX external data), relative to the model file.
    external_files: tuple[str, ...]


@dataclass(frozen=True)
class AnomalibExport:
    """A recognized export: its version, model file, graph and (1.x) metadata."""

    version: str
    model_file: Path
    graph: GraphFacts
    metadata: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()


# -- recognizing an export ------------------------------------------------------------------


def find_export(directory: Path, model_file: Path | None = None) -> AnomalibExport | None:
    """Recognizes the anomalib ONNX export in ``directory``.

    The ONNX file is ``model_file`` when given, else the one ``*.onnx`` file in the
    directory or, as anomalib lays out an export root, in its ``weights/onnx``.

    Returns:
        The export, or None when the directory holds no ONNX file.

    Raises:
        ManifestError: an ONNX file that is not an anomalib export, several candidates,
            missing weights, an unreadable graph or metadata.json.
    """
    if model_file is None:
        model_file = _only_onnx_file(directory)
        if model_file is None:
            return None
    graph = read_graph(model_file)
    missing = [name for name in graph.external_files if not (model_file.parent / name).is_file()]
    if missing:
        raise ManifestError(
            f"{model_file}: its weights are stored in {', '.join(missing)}, which is missing. Copy "
            f"{', '.join(missing)} beside it (anomalib writes them together)."
        )
    metadata_path = model_file.parent / METADATA_FILE
    metadata = _read_metadata(metadata_path) if metadata_path.is_file() else None
    names = [t.name for t in graph.outputs]
    if names and set(names) <= set(V2_OUTPUTS) and {"pred_score", "anomaly_map"} & set(names):
        notes = (f"{METADATA_FILE} beside it is ignored: anomalib 2.x writes none",) if metadata is not None else ()
        return AnomalibExport(V2, model_file, graph, None, notes)
    if metadata is not None:
        return AnomalibExport(V1, model_file, graph, metadata)
    raise ManifestError(
        f"{model_file}: not an anomalib export: its outputs {names} are not anomalib 2.x's "
        f"(among {', '.join(V2_OUTPUTS)}) and no {METADATA_FILE} (anomalib 1.x) lies beside it. "
        f"Write a {MANIFEST_FILE} for this model (see the manifest format in the README)."
    )


def _only_onnx_file(directory: Path) -> Path | None:
    for folder in (directory, directory / EXPORT_SUBDIR):
        candidates = sorted(p for p in folder.glob("*.onnx") if p.is_file())
        if len(candidates) > 1:
            raise ManifestError(
                f"{folder}: holds several ONNX files ({', '.join(p.name for p in candidates)}). Keep one, or name "
                f'it in a {MANIFEST_FILE}: {{"{MANIFEST_KEY}": true, "model_file": "{candidates[0].name}"}}.'
            )
        if candidates:
            return candidates[0]
    for folder in (directory, directory / "weights" / "openvino"):
        xml = sorted(folder.glob("*.xml"))
        if xml and xml[0].with_suffix(".bin").is_file():
            raise ManifestError(
                f"{xml[0]}: an OpenVINO IR export; the agent serves ONNX. Export the model again with "
                'export_type="onnx" (anomalib export --export_type onnx) and copy that instead.'
            )
    return None


def read_graph(path: Path) -> GraphFacts:
    """Reads the facts the agent needs from an ONNX file (cached while the file is unchanged).

    Raises:
        ManifestError: the file cannot be read or is not an ONNX model.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the model file ({exc.strerror}).") from None
    return _read_graph(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _read_graph(path: str, mtime_ns: int, size: int) -> GraphFacts:
    del mtime_ns, size  # cache key only
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise several types for a broken file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ManifestError(f"{path}: not a readable ONNX model ({first}). Copy the export again.") from None
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = tuple(_tensor(v) for v in graph.input if v.name not in initializers)
    outputs = tuple(_tensor(v) for v in graph.output)
    constants: dict[str, np.ndarray] = {}
    for name, init in initializers.items():
        if init.data_location != onnx.TensorProto.EXTERNAL and _element_count(init) <= 16:
            constants[name] = numpy_helper.to_array(init)
    producers: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for output in node.output:
            producers[output] = node
    external = sorted({entry.value for init in graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL
                       for entry in init.external_data if entry.key == "location"})
    return GraphFacts(inputs, outputs, _resize_size(graph, constants, producers),
                      _comparisons(graph, constants, producers, {t.name for t in outputs}), tuple(external))


def _element_count(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims)) if init.dims else 1


def _tensor(value: onnx.ValueInfoProto) -> GraphTensor:
    tensor_type = value.type.tensor_type
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return GraphTensor(value.name, tensor_type.elem_type, shape)


def _resize_size(graph: onnx.GraphProto, constants: dict[str, np.ndarray],
                 producers: dict[str, onnx.NodeProto]) -> tuple[int, int] | None:
    """The (height, width) of the first Resize to a constant size, before the model proper."""
    for node in graph.node:
        if node.op_type in _MODEL_OPS:
            return None
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
            continue
        sizes = constants.get(node.input[3])
        if sizes is None and node.input[3] in producers and producers[node.input[3]].op_type == "Concat":
            # torch exports the sizes as Concat(shape of the batch and channels, [height, width]).
            sizes = constants.get(producers[node.input[3]].input[-1])
        if sizes is not None and sizes.size >= 2:
            height, width = (int(v) for v in sizes.reshape(-1)[-2:])
            if height > 0 and width > 0:
                return height, width
    return None


def _comparisons(graph: onnx.GraphProto, constants: dict[str, np.ndarray], producers: dict[str, onnx.NodeProto],
                 output_names: set[str]) -> dict[str, tuple[str, float]]:
    """Outputs computed as ``tensor > constant`` (or ``>=``), possibly through a Cast."""
    found: dict[str, tuple[str, float]] = {}
    for name in output_names:
        node = producers.get(name)
        while node is not None and node.op_type in ("Cast", "Identity"):
            node = producers.get(node.input[0])
        if node is None or node.op_type not in _COMPARE_OPS or len(node.input) != 2:
            continue
        value = constants.get(node.input[1])
        if value is not None and value.size == 1 and math.isfinite(float(value.reshape(-1)[0])):
            found[name] = (_COMPARE_OPS[node.op_type], float(value.reshape(-1)[0]))
    return found


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read anomalib's metadata ({exc}).") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). Copy the export again."
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: anomalib's metadata must be a JSON object, got {type(data).__name__}.")
    return data


# -- the manifest that serves an export -----------------------------------------------------


def export_manifest(component_dir: Path, export: AnomalibExport, additions: dict[str, Any] | None = None
                    ) -> Manifest:
    """The manifest that serves ``export`` as anomalib's inferencer would, from ``component_dir``.

    Args:
        component_dir: the model component directory.
        export: the recognized export.
        additions: what a ``manifest.json`` with ``"anomalib": true`` adds (already checked).

    Raises:
        ManifestError: the export or its metadata cannot be served, naming the file.
    """
    data = export_manifest_dict(export, component_dir, additions)
    manifest = parse_manifest(component_dir, data)
    origin = f"anomalib {export.version} export (detected)"
    details = list(export.notes)
    added = sorted(k for k in (additions or {}) if k != MANIFEST_KEY)
    if added:
        details.insert(0, f"{MANIFEST_FILE} adds {', '.join(added)}")
    if details:
        origin = f"anomalib {export.version} export (detected; {'; '.join(details)})"
    return dataclasses.replace(manifest, origin=origin)


def export_manifest_with(component_dir: Path, data: dict[str, Any]) -> Manifest:
    """The manifest of a component whose manifest.json has ``"anomalib": true``.

    Such a manifest only adds to the export: a name (``description``), the anomaly type's
    colour, an ARN, ``memory_bytes``, the ONNX file (``model_file``) and, for exports that
    take any image size and do not say which they were trained at, ``input.width`` and
    ``input.height``. Other keys are kept as they are in any manifest (``fp16``...).
    """
    path = component_dir / MANIFEST_FILE
    if data.get(MANIFEST_KEY) is not True:
        raise ManifestError(
            f"{path}: field {MANIFEST_KEY!r} must be true (this directory holds an anomalib export), got "
            f"{data.get(MANIFEST_KEY)!r}. Set it to true, or remove it and write a complete manifest."
        )
    for key in _DERIVED:
        if key in data:
            raise ManifestError(
                f"{path}: field {key!r} cannot be set here: with \"{MANIFEST_KEY}\": true the pre- and "
                f"post-processing come from the anomalib export. Remove {key!r}, or run `edge-agent "
                "convert-anomalib` to write a complete manifest and edit that one."
            )
    inp = data.get("input")
    if inp is not None and (not isinstance(inp, dict) or set(inp) - {"width", "height"}):
        raise ManifestError(
            f"{path}: field 'input' may only hold width and height here (the size the model was trained at, "
            f"for exports that take any size), got {inp!r}. The rest of the pre-processing comes from the export."
        )
    model_name = data.get("model_file")
    model_file = None
    if model_name is not None:
        if not isinstance(model_name, str) or not model_name.strip() or Path(model_name).is_absolute() \
                or ".." in Path(model_name).parts:
            raise ManifestError(f"{path}: field 'model_file' must be a file name inside the component directory, "
                                f"got {model_name!r}. Fix the manifest and call StartModel again.")
        model_file = component_dir / model_name
        if not model_file.is_file():
            raise ManifestError(f"{model_file}: model file not found. Put the anomalib export there or fix "
                                f"model_file in {path}.")
    export = find_export(component_dir, model_file)
    if export is None:
        raise ManifestError(
            f"{path}: says \"{MANIFEST_KEY}\": true but the directory holds no ONNX file (nor "
            f"{EXPORT_SUBDIR}/*.onnx). Copy the files anomalib exported (model.onnx, and metadata.json for 1.x)."
        )
    return export_manifest(component_dir, export, data)


def export_manifest_dict(export: AnomalibExport, component_dir: Path, additions: dict[str, Any] | None = None
                         ) -> dict[str, Any]:
    """The complete manifest.json content that serves ``export`` from ``component_dir``.

    Raises:
        ManifestError: the graph's input is not an image batch the agent can feed, or the
            size frames must be resized to cannot be told, or (1.x) metadata.json is unusable.
    """
    additions = dict(additions or {})
    image_input = _image_input(export)
    width, height = _working_size(export, image_input, additions.get("input"))
    data: dict[str, Any] = {
        "model_file": export.model_file.relative_to(component_dir).as_posix()
        if export.model_file.is_relative_to(component_dir) else export.model_file.name,
        "input": {
            "name": image_input.name, "width": width, "height": height, "layout": "NCHW", "dtype": "float32",
            "channel_order": "RGB", "scale": 1.0 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
            "resize": RESIZE_TORCH_BILINEAR,
        },
    }
    if export.version == V2:
        data.update(_v2_processing(export))
    else:
        data.update(_v1_processing(export))
    if data["outputs"].get("anomaly_map") or data["outputs"].get("segmentation"):
        data["anomaly_types"] = [{"name": ANOMALY_NAME, "color": DEFAULT_COLOR}]
    for key, value in additions.items():
        if key not in (MANIFEST_KEY, "input", "model_file"):
            data[key] = value
    if "anomaly_types" in additions:
        types = additions["anomaly_types"]
        if not isinstance(types, list) or len(types) != 1:
            raise ManifestError(
                f"{component_dir / MANIFEST_FILE}: field 'anomaly_types' lists one type for an anomalib export, "
                f'got {types!r}. Write e.g. [{{"name": "{ANOMALY_NAME}", "color": "#00FF00"}}].'
            )
        if not (data["outputs"].get("anomaly_map") or data["outputs"].get("segmentation")):
            del data["anomaly_types"]  # a classification export paints nothing
    return data


def _image_input(export: AnomalibExport) -> GraphTensor:
    inputs = export.graph.inputs
    if len(inputs) != 1:
        raise ManifestError(f"{export.model_file}: an anomalib export has one image input, this graph has "
                            f"{[t.name for t in inputs]}. Write a {MANIFEST_FILE} for it instead.")
    image = inputs[0]
    if len(image.shape) != 4 or image.shape[1] not in (3, None) or image.elem_type != _ONNX_FLOAT:
        raise ManifestError(
            f"{export.model_file}: input {image.name!r} has shape {list(image.shape)} and ONNX element type "
            f"{image.elem_type}; anomalib exports take float RGB images (N, 3, H, W). Write a {MANIFEST_FILE} "
            "for it instead."
        )
    return image


def _working_size(export: AnomalibExport, image: GraphTensor, given: Any) -> tuple[int, int]:
    """(width, height) frames are resized to: the input's, else the manifest's, else the graph's Resize."""
    stated: tuple[int, int] | None = None
    if given is not None:
        w = given.get("width") if isinstance(given, dict) else None
        h = given.get("height") if isinstance(given, dict) else None
        if not (isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool) and not isinstance(h, bool)
                and w > 0 and h > 0):
            raise ManifestError(
                f"{export.model_file.parent / MANIFEST_FILE}: field 'input' must hold both width and height as "
                f"positive integers (the size the model was trained at), got {given!r}."
            )
        stated = (w, h)
    height, width = image.shape[2], image.shape[3]
    if height is not None and width is not None:
        if stated is not None and stated != (width, height):
            raise ManifestError(
                f"{export.model_file.parent / MANIFEST_FILE}: input.width/height say {stated[0]}x{stated[1]} but "
                f"the export takes {width}x{height} images only. Remove 'input' from the manifest."
            )
        return width, height
    if stated is not None:
        return stated
    if export.graph.resize_size is not None:
        h, w = export.graph.resize_size
        mapped = _map_size(export)
        if mapped is not None and mapped != (h, w):
            raise ManifestError(
                f"{export.model_file}: the export resizes frames to {w}x{h} but its anomaly map is "
                f"{mapped[1]}x{mapped[0]}: its pre-processing crops (CenterCrop), so the map covers only part of "
                "the frame and the agent cannot place a mask on it. Export the model without a centre crop."
            )
        return w, h
    mapped = _map_size(export)
    if mapped is not None:
        return mapped[1], mapped[0]
    raise ManifestError(
        f"{export.model_file}: the export takes any image size and the agent cannot tell which the model was "
        f'trained at. Add a {MANIFEST_FILE} with {{"{MANIFEST_KEY}": true, "input": {{"width": W, "height": H}}}} '
        "(the image_size of its pre-processor)."
    )


def _map_size(export: AnomalibExport) -> tuple[int, int] | None:
    """(height, width) of the anomaly map output when the graph gives it."""
    names = ("anomaly_map",) if export.version == V2 else tuple(t.name for t in export.graph.outputs[:1])
    for tensor in export.graph.outputs:
        if tensor.name in names and len(tensor.shape) >= 3:
            h, w = tensor.shape[-2], tensor.shape[-1]
            if h is not None and w is not None:
                return h, w
    return None


def _v2_processing(export: AnomalibExport) -> dict[str, Any]:
    names = {t.name for t in export.graph.outputs}
    outputs: dict[str, Any] = {}
    if "pred_score" in names:
        outputs["image_score"] = "pred_score"
    else:  # anomalib's post-processor scores by the map's maximum when the model gives no score
        outputs.update(image_score="anomaly_map", image_score_reduce="max")
    if "pred_label" in names:
        outputs["image_label"] = "pred_label"
    # Scores are normalized already: min 0 and max 1 make the normalization the identity.
    decision: dict[str, Any] = {"image": {"threshold": V2_THRESHOLD, "min": 0.0, "max": 1.0, "compare": ">"}}
    if "anomaly_map" in names:
        outputs["anomaly_map"] = "anomaly_map"
        compare, threshold = export.graph.comparisons.get("pred_mask", (">", V2_THRESHOLD))
        decision["pixel"] = {"threshold": threshold, "min": 0.0, "max": 1.0, "compare": compare}
    elif "pred_mask" in names:
        outputs.update(segmentation="pred_mask", segmentation_kind="labels")
    return {"outputs": outputs, "decision": decision}


def _v1_processing(export: AnomalibExport) -> dict[str, Any]:
    metadata = export.metadata or {}
    path = export.model_file.parent / METADATA_FILE
    if "transform" in metadata:
        raise ManifestError(
            f"{path}: holds a 'transform': an anomalib 0.x export, whose pre-processing is not in the graph. "
            "Export the model with anomalib 1.x or 2.x, or write a manifest with that transform's size, mean "
            "and std."
        )
    task = metadata.get("task")
    first = export.graph.outputs[0] if export.graph.outputs else None
    if first is None:
        raise ManifestError(f"{export.model_file}: the graph has no outputs.")
    is_map = len(first.shape) != 1  # anomalib 1.x's inferencer: a 1-D output is a score per image
    if task is None:
        task = "segmentation" if is_map else "classification"
    if task not in V1_TASKS:
        raise ManifestError(f"{path}: field 'task' must be one of {', '.join(V1_TASKS)}, got {task!r}.")
    image_threshold = _number(metadata, "image_threshold", path, required=True)
    pixel_threshold = _number(metadata, "pixel_threshold", path)
    outputs: dict[str, Any] = {"image_score": first.name}
    if is_map:
        outputs["image_score_reduce"] = "max"
    image: dict[str, Any] = {"threshold": image_threshold, **_v1_range(metadata, "pred_scores", path)}
    decision: dict[str, Any] = {"image": image}
    if is_map and task != "classification" and pixel_threshold is not None:
        outputs["anomaly_map"] = first.name
        decision["pixel"] = {"threshold": pixel_threshold, **_v1_range(metadata, "anomaly_maps", path)}
    return {"outputs": outputs, "decision": decision}


def _v1_range(metadata: dict[str, Any], prefix: str, path: Path) -> dict[str, float]:
    """Min-max statistics: ``<prefix>.min``/``.max`` (1.1 on), else ``min``/``max`` (1.0)."""
    for low_key, high_key in ((f"{prefix}.min", f"{prefix}.max"), ("min", "max")):
        if low_key in metadata and high_key in metadata:
            low = _number(metadata, low_key, path, required=True)
            high = _number(metadata, high_key, path, required=True)
            assert low is not None and high is not None
            if high <= low:
                raise ManifestError(f"{path}: {high_key} ({high}) must be greater than {low_key} ({low}); the "
                                    "normalization is undefined. Export the model again after validation.")
            return {"min": low, "max": high}
    return {}  # no min-max normalization: anomalib reports raw scores


def _number(metadata: dict[str, Any], key: str, path: Path, *, required: bool = False) -> float | None:
    value = metadata.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{path}: anomalib's metadata has no {key!r}; the agent needs it to decide as "
                                "anomalib does. Export the model again after a validation run.")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{path}: field {key!r} must be a finite number, got {value!r}.")
    return float(value)


# -- convert-anomalib -----------------------------------------------------------------------


def convert_anomalib(
    export_dir: Path,
    component_dir: Path,
    *,
    lookout_vision_model_arn: str = "",
    description: str = "",
    color: str = DEFAULT_COLOR,
    overwrite: bool = False,
) -> Manifest:
    """Writes a complete model component, with a manifest, from an anomalib ONNX export.

    The component serves the model exactly as the export would be served without a
    manifest; the manifest spells out everything (input size and resize, outputs,
    thresholds and normalization) for users who want to read or edit it.

    Args:
        export_dir: the export: anomalib's export root (holding ``weights/onnx``), or the
            folder holding ``model.onnx`` (and ``metadata.json`` for anomalib 1.x).
        component_dir: the component directory to write (its name is the component's).
        lookout_vision_model_arn: optional ARN returned by ListModels and DescribeModel.
        description: optional description; by default it says where the model came from.
        color: ``#RRGGBB`` of the anomaly type in masks.
        overwrite: replace the files of an existing component directory.

    Returns:
        The component's manifest, as the agent will read it.

    Raises:
        ManifestError: ``export_dir`` holds no usable anomalib export.
        InvalidArgumentError: a bad component name or colour, or ``component_dir`` already
            holds files and ``overwrite`` is false.
    """
    from edge_agent.models import validate_component_name  # the agent's rule for component names

    export_dir, component_dir = Path(export_dir), Path(component_dir)
    validate_component_name(component_dir.name, "COMPONENT_DIR's name")
    if not HEX_COLOR.match(color) or color.upper() == BACKGROUND_COLOR:
        raise InvalidArgumentError(f"color {color!r} must be written #RRGGBB and differ from the background "
                                   f"{BACKGROUND_COLOR}, e.g. {DEFAULT_COLOR}.")
    export = find_export(export_dir)
    if export is None:
        raise ManifestError(f"{export_dir}: no anomalib ONNX export here (no *.onnx, nor {EXPORT_SUBDIR}/*.onnx).")
    if component_dir.exists() and any(component_dir.iterdir()) and not overwrite:
        raise InvalidArgumentError(f"{component_dir} already holds files; choose a new directory or overwrite it.")
    source_dir = export.model_file.parent
    additions: dict[str, Any] = {
        "description": description or f"anomalib {export.version} export converted from {source_dir}",
        "anomaly_types": [{"name": ANOMALY_NAME, "color": color}],
    }
    if lookout_vision_model_arn:
        additions["lookout_vision_model_arn"] = lookout_vision_model_arn
    data = export_manifest_dict(dataclasses.replace(export, model_file=component_dir / export.model_file.name),
                                component_dir, additions)
    parse_manifest(component_dir, data)  # everything checked before anything is written
    component_dir.mkdir(parents=True, exist_ok=True)
    for name in (export.model_file.name, *export.graph.external_files):
        target = component_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_dir / name, target)
    _write_json(component_dir / MANIFEST_FILE, data)
    LOGGER.info("converted the anomalib %s export in %s into component %s", export.version, source_dir,
                component_dir)
    from edge_agent.manifest import load_manifest

    return load_manifest(component_dir)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes through a temporary sibling and ``os.replace``, so the agent never reads half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
