"""The model component manifest: what an ONNX file means and how to serve it.

A model component is a directory named after the component, holding
``manifest.json`` and the model file it names, or the files of an anomalib
ONNX export (see :mod:`edge_agent.anomalib_export`), from which the manifest
is derived. The README documents the format; this module parses it strictly
and says which field is wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.constants import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE_DELAY_MS,
    MANIFEST_FILE,
    MAX_BATCH_LIMIT,
    MAX_QUEUE_DELAY_LIMIT_MS,
)
from edge_agent.errors import ManifestError

HEX_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_LAYOUTS = ("NCHW", "NHWC")
_DTYPES = ("float32", "float16", "uint8")
_CHANNEL_ORDERS = ("RGB", "BGR")
# "bilinear-torch" samples like PyTorch's interpolate (bilinear, half-pixel centres, no
# antialiasing), which is the Resize anomalib puts in its exported graphs; Pillow's
# "bilinear" antialiases when it shrinks, which moves anomalib's scores by up to 0.1.
RESIZE_TORCH_BILINEAR = "bilinear-torch"
_RESIZE_MODES = ("bilinear", "area", "nearest", "bicubic", RESIZE_TORCH_BILINEAR)
_SEGMENTATION_KINDS = ("scores", "labels")
_SCORE_REDUCTIONS = ("none", "max")
_COMPARISONS = (">=", ">")
BACKGROUND_NAME = "background"
BACKGROUND_COLOR = "#FFFFFF"


@dataclass(frozen=True)
class InputSpec:
    """How an RGB frame becomes the model's input tensor."""

    name: str | None
    width: int
    height: int
    layout: str = "NCHW"
    dtype: str = "float32"
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "bilinear"


@dataclass(frozen=True)
class OutputSpec:
    """Names of the output tensors the agent reads."""

    image_score: str
    anomaly_map: str | None = None
    segmentation: str | None = None
    segmentation_kind: str = "scores"
    # "max": the image score is the largest value of the image_score tensor (anomalib 1.x's
    # inferencer scores an image by its anomaly map's maximum); "none": it holds one value.
    image_score_reduce: str = "none"
    # The model's own decision per image (anomalib 2.x's pred_label); when set, is_anomalous
    # is read from it instead of comparing the score with decision.image.threshold.
    image_label: str | None = None


@dataclass(frozen=True)
class Threshold:
    """A decision threshold on a raw output, with optional min-max normalization.

    With ``min``/``max`` (anomalib's convention) the normalized value is
    ``clip((x - threshold) / (max - min) + 0.5, 0, 1)``; without them the raw
    value is mapped piecewise-linearly so that ``threshold`` lands on 0.5.
    ``compare`` says whether a value equal to the threshold is anomalous
    (``">="``, the default and anomalib 1.x's rule) or not (``">"``, anomalib 2.x's).
    """

    threshold: float
    min: float | None = None
    max: float | None = None
    compare: str = ">="

    def exceeded(self, value: float) -> bool:
        """Whether a raw value is on the anomalous side of the threshold."""
        return value > self.threshold if self.compare == ">" else value >= self.threshold

    def exceeded_map(self, values: np.ndarray) -> np.ndarray:
        """``exceeded`` for every element of an array (a boolean array)."""
        return np.greater(values, self.threshold) if self.compare == ">" else np.greater_equal(values, self.threshold)

    def normalize(self, value: float) -> float:
        """Maps a raw value to [0, 1] with the decision point at 0.5."""
        if not math.isfinite(value):
            return value
        if self.min is not None and self.max is not None:
            span = self.max - self.min
            normalized = (value - self.threshold) / span + 0.5
        elif value >= self.threshold:
            # Above the threshold: [threshold, max(1, threshold)] -> [0.5, 1]; a threshold at or
            # above 1 leaves no room, so anything above it saturates (and nothing divides by 0).
            span = max(1.0, self.threshold) - self.threshold
            if span > 0:
                normalized = 0.5 + 0.5 * (value - self.threshold) / span
            else:
                normalized = 1.0 if value > self.threshold else 0.5
        else:
            # Below the threshold: [min(0, threshold), threshold] -> [0, 0.5].
            lower = min(0.0, self.threshold)
            span = self.threshold - lower
            normalized = 0.5 * (value - lower) / span if span > 0 else 0.0
        return min(1.0, max(0.0, normalized))


@dataclass(frozen=True)
class Batching:
    """Dynamic batching of concurrent requests (see :mod:`edge_agent.batching`).

    It applies only to models whose input has a dynamic batch dimension; ``max_batch``
    1 turns it off. ``explicit`` says whether the manifest asked for these values (the
    agent then says in the model's status when the model cannot batch).
    """

    max_batch: int = DEFAULT_MAX_BATCH
    max_queue_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_MS
    explicit: bool = False


@dataclass(frozen=True)
class AnomalyType:
    name: str
    color: str  # "#RRGGBB", upper case


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated component manifest."""

    component_dir: Path
    model_file: Path
    input: InputSpec
    outputs: OutputSpec
    image_threshold: Threshold
    pixel_threshold: Threshold | None
    anomaly_types: tuple[AnomalyType, ...]
    lookout_vision_model_arn: str = ""
    description: str = ""
    memory_bytes: int | None = None
    batching: Batching = Batching()
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the manifest came from when it is not a plain manifest.json, e.g.
    # "anomalib 2.x export (detected)"; ListModels shows it for idle components.
    origin: str = ""

    @property
    def manifest_path(self) -> Path:
        return self.component_dir / MANIFEST_FILE

    @property
    def is_segmentation(self) -> bool:
        return self.outputs.anomaly_map is not None or self.outputs.segmentation is not None


class _Reader:
    """Typed access to a JSON object that names the manifest and field on error."""

    def __init__(self, path: Path, data: Any, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(data, dict):
            raise self.error(prefix.rstrip(".") or "(top level)", "must be a JSON object", data)
        self.data: dict[str, Any] = data

    def error(self, key: str, expected: str, value: Any) -> ManifestError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return ManifestError(
            f"{self.path}: field {key!r} {expected}, got {shown}. Fix the manifest and call StartModel again."
        )

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ManifestError(
                    f"{self.path}: required field {self.prefix + key!r} is missing. "
                    "Add it to the manifest (see the manifest format in the README)."
                )
            return None
        return self.data[key]

    def str(self, key: str, *, required: bool = False, default: str | None = None,
            choices: tuple[str, ...] | None = None) -> str | None:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(self.prefix + key, "must be a string", value)
        if choices is not None and value not in choices:
            raise self.error(self.prefix + key, f"must be one of {', '.join(choices)}", value)
        return value

    def int(self, key: str, *, required: bool = False, minimum: int = 1) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(self.prefix + key, f"must be an integer >= {minimum}", value)
        return value

    def float(self, key: str, *, required: bool = False, default: float | None = None,
              positive: bool = False) -> float | None:
        value = self._get(key, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(self.prefix + key, "must be a finite number", value)
        if positive and value <= 0:
            raise self.error(self.prefix + key, "must be greater than 0", value)
        return float(value)

    def triple(self, key: str, default: tuple[float, float, float], *, positive: bool = False
               ) -> tuple[float, float, float]:
        value = self._get(key, False)
        if value is None:
            return default
        ok = (isinstance(value, list) and len(value) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and (v > 0 or not positive) for v in value))
        if not ok:
            kind = "positive numbers" if positive else "numbers"
            raise self.error(self.prefix + key, f"must be a list of 3 {kind} (R, G, B)", value)
        return (float(value[0]), float(value[1]), float(value[2]))

    def obj(self, key: str, *, required: bool = False) -> _Reader | None:
        value = self._get(key, required)
        if value is None:
            return None
        return _Reader(self.path, value, self.prefix + key + ".")


def _read_threshold(reader: _Reader | None) -> Threshold | None:
    if reader is None:
        return None
    threshold = reader.float("threshold", required=True)
    low = reader.float("min")
    high = reader.float("max")
    compare = reader.str("compare", default=">=", choices=_COMPARISONS) or ">="
    if (low is None) != (high is None):
        raise ManifestError(
            f"{reader.path}: {reader.prefix}min and {reader.prefix}max must be given together "
            "(both for min-max normalization, or neither)."
        )
    if low is not None and high is not None and high <= low:
        raise reader.error(reader.prefix + "max", f"must be greater than min ({low})", high)
    assert threshold is not None
    return Threshold(threshold=threshold, min=low, max=high, compare=compare)


def _read_batching(top: _Reader) -> Batching:
    """``"batching"``: absent (the defaults), true, false, or {"max_batch": N, "max_queue_delay_ms": D}."""
    value = top.data.get("batching")
    if value is None:
        return Batching()
    if isinstance(value, bool):
        return Batching(explicit=True) if value else Batching(max_batch=1, explicit=True)
    if not isinstance(value, dict):
        raise top.error("batching", 'must be true, false or {"max_batch": N, "max_queue_delay_ms": D}', value)
    reader = top.obj("batching")
    assert reader is not None
    unknown = sorted(set(reader.data) - {"max_batch", "max_queue_delay_ms"})
    if unknown:
        raise reader.error("batching", "may only hold max_batch and max_queue_delay_ms", unknown)
    max_batch = reader.data.get("max_batch")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                  or not 1 <= max_batch <= MAX_BATCH_LIMIT):
        raise reader.error("batching.max_batch", f"must be an integer from 1 to {MAX_BATCH_LIMIT} (1: no batching)",
                           max_batch)
    delay = reader.float("max_queue_delay_ms")
    if delay is not None and not 0 <= delay <= MAX_QUEUE_DELAY_LIMIT_MS:
        raise reader.error("batching.max_queue_delay_ms",
                           f"must be a number of milliseconds from 0 to {MAX_QUEUE_DELAY_LIMIT_MS:.0f}", delay)
    return Batching(max_batch=DEFAULT_MAX_BATCH if max_batch is None else max_batch,
                    max_queue_delay_ms=DEFAULT_MAX_QUEUE_DELAY_MS if delay is None else delay + 0.0,  # no -0
                    explicit=True)


def _read_anomaly_types(reader: _Reader, path: Path) -> tuple[AnomalyType, ...]:
    raw = reader.data.get("anomaly_types")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise reader.error("anomaly_types", "must be a list of {\"name\", \"color\"} objects", raw)
    types: list[AnomalyType] = []
    for index, item in enumerate(raw):
        entry = _Reader(path, item, f"anomaly_types[{index}].")
        name = entry.str("name", required=True)
        color = entry.str("color", required=True)
        assert name is not None and color is not None
        if not name or name == BACKGROUND_NAME:
            raise entry.error(entry.prefix + "name", f"must be a non-empty name other than {BACKGROUND_NAME!r}",
                              name)
        if not HEX_COLOR.match(color):
            raise entry.error(entry.prefix + "color", "must be a colour written #RRGGBB", color)
        if color.upper() == BACKGROUND_COLOR:
            raise entry.error(entry.prefix + "color",
                              f"must differ from the background colour {BACKGROUND_COLOR}", color)
        types.append(AnomalyType(name=name, color=color.upper()))
    names = [t.name for t in types]
    if len(set(names)) != len(names):
        raise reader.error("anomaly_types", "must not name the same anomaly type twice", names)
    return tuple(types)


def parse_manifest(component_dir: Path, data: Any) -> Manifest:
    """Validates a manifest's JSON content; raises ManifestError naming the field."""
    path = component_dir / MANIFEST_FILE
    top = _Reader(path, data)
    model_name = top.str("model_file", required=True)
    assert model_name is not None
    model_file = Path(model_name)
    if model_file.is_absolute() or ".." in model_file.parts or not model_name.strip():
        raise top.error("model_file", "must be a file name inside the component directory", model_name)

    inp = top.obj("input", required=True)
    assert inp is not None
    width = inp.int("width", required=True)
    height = inp.int("height", required=True)
    assert width is not None and height is not None
    input_spec = InputSpec(
        name=inp.str("name"),
        width=width,
        height=height,
        layout=inp.str("layout", default="NCHW", choices=_LAYOUTS) or "NCHW",
        dtype=inp.str("dtype", default="float32", choices=_DTYPES) or "float32",
        channel_order=inp.str("channel_order", default="RGB", choices=_CHANNEL_ORDERS) or "RGB",
        scale=inp.float("scale", default=1.0 / 255.0, positive=True) or 1.0 / 255.0,
        mean=inp.triple("mean", (0.0, 0.0, 0.0)),
        std=inp.triple("std", (1.0, 1.0, 1.0), positive=True),
        resize=inp.str("resize", default="bilinear", choices=_RESIZE_MODES) or "bilinear",
    )

    outs = top.obj("outputs", required=True)
    assert outs is not None
    image_score = outs.str("image_score", required=True)
    assert image_score is not None
    outputs = OutputSpec(
        image_score=image_score,
        anomaly_map=outs.str("anomaly_map"),
        segmentation=outs.str("segmentation"),
        segmentation_kind=outs.str("segmentation_kind", default="scores", choices=_SEGMENTATION_KINDS)
        or "scores",
        image_score_reduce=outs.str("image_score_reduce", default="none", choices=_SCORE_REDUCTIONS) or "none",
        image_label=outs.str("image_label"),
    )
    if outputs.anomaly_map and outputs.segmentation:
        raise ManifestError(
            f"{path}: outputs.anomaly_map and outputs.segmentation are both set; a model has one pixel-level "
            "output. Keep the one the model really produces."
        )

    decision = top.obj("decision", required=True)
    assert decision is not None
    image_threshold = _read_threshold(decision.obj("image", required=True))
    assert image_threshold is not None
    pixel_threshold = _read_threshold(decision.obj("pixel"))
    anomaly_types = _read_anomaly_types(top, path)

    if outputs.anomaly_map:
        if pixel_threshold is None:
            raise ManifestError(
                f"{path}: outputs.anomaly_map is set but decision.pixel is missing. Add "
                "decision.pixel.threshold: the anomaly-map value from which a pixel is anomalous."
            )
        if len(anomaly_types) != 1:
            raise ManifestError(
                f"{path}: a one-channel anomaly_map paints one anomaly type, but anomaly_types lists "
                f"{len(anomaly_types)}. List exactly one, e.g. "
                '[{"name": "anomaly", "color": "#FF0000"}].'
            )
    if outputs.segmentation and not anomaly_types:
        raise ManifestError(
            f"{path}: outputs.segmentation is set but anomaly_types is empty. List one type per "
            "segmentation class after the background (class 0)."
        )

    arn = top.str("lookout_vision_model_arn", default="") or ""
    memory_bytes = top.int("memory_bytes", minimum=1)
    batching = _read_batching(top)
    known = {"model_file", "input", "outputs", "decision", "anomaly_types", "lookout_vision_model_arn",
             "description", "memory_bytes", "batching"}
    return Manifest(
        component_dir=component_dir,
        model_file=component_dir / model_file,
        input=input_spec,
        outputs=outputs,
        image_threshold=image_threshold,
        pixel_threshold=pixel_threshold,
        anomaly_types=anomaly_types,
        lookout_vision_model_arn=arn,
        description=top.str("description", default="") or "",
        memory_bytes=memory_bytes,
        batching=batching,
        extra={k: v for k, v in top.data.items() if k not in known},
    )


def load_manifest(component_dir: Path) -> Manifest:
    """Reads and validates a component's manifest.

    That is ``component_dir/manifest.json``; a directory holding an anomalib ONNX export
    needs none, or one with ``"anomalib": true`` that only adds a name, colour or ARN, and
    gets a manifest derived from the export (:mod:`edge_agent.anomalib_export`).

    Raises:
        ManifestError: naming the file and the problem.
    """
    from edge_agent import anomalib_export  # it builds on this module

    path = component_dir / MANIFEST_FILE
    data = _read_json(path)
    if data is _MISSING:
        export = anomalib_export.find_export(component_dir)
        if export is None:
            raise ManifestError(
                f"{path}: no manifest. Each model component directory needs a {MANIFEST_FILE} "
                "(see the manifest format in the README), or the files of an anomalib ONNX export "
                "(model.onnx, and metadata.json for anomalib 1.x)."
            )
        return anomalib_export.export_manifest(component_dir, export)
    if isinstance(data, dict) and anomalib_export.MANIFEST_KEY in data:
        return anomalib_export.export_manifest_with(component_dir, data)
    return parse_manifest(component_dir, data)


_MISSING = object()


def _read_json(path: Path) -> Any:
    """A JSON file's content, or ``_MISSING`` when there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _MISSING
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc}). Check the file and its permissions.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). Fix the file."
        ) from None
