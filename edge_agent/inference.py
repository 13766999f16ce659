"""One loaded model: pre-processing, the engine, and post-processing.

Post-processing keeps the contract's two levels apart: ``is_anomalous`` and
``confidence`` come from the image-level score alone; the mask and the
anomalies list from the pixel-level output alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from edge_agent.batching import DynamicBatcher
from edge_agent.constants import MIN_CONFIDENCE
from edge_agent.engines.base import Backend, TensorInfo
from edge_agent.errors import InferenceError, ModelLoadError
from edge_agent.imaging import (
    Frame,
    Preprocessor,
    hex_to_rgb,
    paint_and_count,
    threshold_mask,
    upscale_labels,
    upscale_map,
)
from edge_agent.manifest import BACKGROUND_COLOR, BACKGROUND_NAME, RESIZE_TORCH_BILINEAR, InputSpec, Manifest

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnomalyArea:
    name: str
    fraction: float  # of the whole image, in [0, 1]
    color: str  # "#RRGGBB"


@dataclass
class PhaseTimes:
    """Seconds one request spent in each phase (Triton's split)."""

    queue_s: float = 0.0  # waiting for a free inference slot on the engine (and for a batch to fill)
    preprocess_s: float = 0.0  # reading the frame, resizing, normalizing
    inference_s: float = 0.0  # the engine itself (the whole batch's run)
    postprocess_s: float = 0.0  # decision, mask, areas, writing the answer
    batch_size: int = 1  # images in the inference this request was part of


@dataclass(frozen=True)
class Detection:
    """What one image yields; the mask is at the input image's size."""

    is_anomalous: bool
    confidence: float
    raw_score: float
    normalized_score: float
    mask: np.ndarray | None  # (H, W, 3) uint8 RGB, segmentation models only
    anomalies: tuple[AnomalyArea, ...]
    times: PhaseTimes = field(default_factory=PhaseTimes, compare=False)


class ModelRunner:
    """A manifest bound to a loaded backend."""

    def __init__(self, manifest: Manifest, backend: Backend, *, batch_cap: int | None = None) -> None:
        """``batch_cap``: the most calls the agent can hand this model at once (its worker threads,
        its per-model request bound); a larger batch could never fill."""
        self.manifest = manifest
        self.backend = backend
        self.batch_cap = batch_cap
        self.input_name, self.preprocess = self._bind_input()
        self._check_outputs_declared()
        types = manifest.anomaly_types
        self.class_names = (BACKGROUND_NAME, *(t.name for t in types))
        self.class_colors = (BACKGROUND_COLOR, *(t.color for t in types))
        self.palette = np.array([hex_to_rgb(c) for c in self.class_colors], dtype=np.uint8)
        # Requests beyond the engine's useful parallelism queue in the batcher (and count as
        # queued); with batching on, those that queued together run as one batch.
        self.max_batch, self.batching_note = self._batch_limit()
        self._batcher = self._make_batcher(self.max_batch)

    @property
    def queued(self) -> int:
        """Requests waiting for an inference slot or a batch."""
        return self._batcher.queued

    def _make_batcher(self, max_batch: int) -> DynamicBatcher:
        delay_s = self.manifest.batching.max_queue_delay_ms / 1e3 if max_batch > 1 else 0.0
        return DynamicBatcher(self._run_batch, max_batch=max_batch, max_delay_s=delay_s,
                              concurrency=max(1, self.backend.max_concurrency), label=self.backend.label)

    def _batch_limit(self) -> tuple[int, str]:
        """The largest batch to run, and a line for the model's status saying so."""
        asked = self.manifest.batching
        if asked.max_batch <= 1:
            return 1, "Dynamic batching off (the manifest's batching)."
        info = next(t for t in self.backend.inputs if t.name == self.input_name)
        if isinstance(info.shape[0], int):
            note = "Dynamic batching off: the model's input has a fixed batch of 1."
            if asked.explicit:
                note += " Export it with a dynamic batch dimension to batch, or set \"batching\": false."
            return 1, note
        limit = asked.max_batch
        capped = ""
        engine_limit = self.backend.max_batch_size
        if engine_limit is not None and engine_limit < limit:
            limit = engine_limit
            capped = f"; the engine takes at most {engine_limit}"
        if self.batch_cap is not None and self.batch_cap < limit:
            limit = max(1, self.batch_cap)
            capped = (f"; the agent hands a model at most {self.batch_cap} calls at once (--workers, "
                      "--max-requests-per-model)")
        if limit <= 1:
            return 1, f"Dynamic batching off: batches of at most 1{capped}."
        return limit, (f"Dynamic batching up to {limit} images (queue delay "
                       f"{asked.max_queue_delay_ms:g} ms{capped}).")

    def _run_batch(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.infer({self.input_name: tensor})

    # -- binding and validation -------------------------------------------------------------

    def _bind_input(self) -> tuple[str, Preprocessor]:
        spec = self.manifest.input
        inputs = {t.name: t for t in self.backend.inputs}
        path = self.manifest.model_file
        if spec.name is None:
            if len(inputs) != 1:
                raise ModelLoadError(
                    f"{path}: the model has inputs {sorted(inputs)}; set input.name in the manifest to the image input."
                )
            info = next(iter(inputs.values()))
        elif spec.name in inputs:
            info = inputs[spec.name]
        else:
            raise ModelLoadError(
                f"{path}: the manifest's input.name {spec.name!r} is not an input of the model "
                f"(its inputs: {sorted(inputs)}). Fix input.name."
            )
        if len(inputs) != 1:
            raise ModelLoadError(
                f"{path}: the model has {len(inputs)} inputs {sorted(inputs)}; the agent feeds one image input."
            )
        _check_input_shape(info, spec.layout, spec.width, spec.height, path)
        expected = np.dtype(spec.dtype)
        if info.dtype != expected:
            raise ModelLoadError(
                f"{path}: input {info.name!r} takes {info.dtype} but the manifest says input.dtype {spec.dtype}. "
                f"Set input.dtype to {info.dtype}."
            )
        if spec.resize == RESIZE_TORCH_BILINEAR:
            return info.name, TorchBilinearPreprocessor(spec, info.dtype)
        return info.name, Preprocessor(spec, info.dtype)

    def _check_outputs_declared(self) -> None:
        names = {t.name for t in self.backend.outputs}
        outputs = self.manifest.outputs
        for key, value in (("image_score", outputs.image_score), ("anomaly_map", outputs.anomaly_map),
                           ("segmentation", outputs.segmentation), ("image_label", outputs.image_label)):
            if value is not None and value not in names:
                raise ModelLoadError(
                    f"{self.manifest.model_file}: the manifest's outputs.{key} {value!r} is not an output of "
                    f"the model (its outputs: {sorted(names)}). Fix outputs.{key}."
                )

    def warm_up(self) -> Detection:
        """Runs one mid-grey frame through everything, so shape errors surface at load time.

        With batching on, also runs a full batch and compares each image's outputs with those
        of the image alone: a model that mixes images within a batch (or does not return the
        batch on the first axis of every output) is served without batching, and its status
        says so.
        """
        spec = self.manifest.input
        pixels = np.full(spec.width * spec.height * 3, 128, dtype=np.uint8)
        frame = Frame(spec.width, spec.height, spec.width * 3, pixels)
        serving, self._batcher = self._batcher, self._make_batcher(1)  # no queue delay for the test run
        try:
            detection = self.detect(frame)
            if self.max_batch > 1:
                problem = self._batch_problem()
                if problem is not None:
                    LOGGER.warning("%s: serving without dynamic batching: %s", self.backend.label, problem)
                    self.max_batch = 1
                    self.batching_note = (
                        f"Dynamic batching off: {problem} Set \"batching\": false in the manifest: the model then "
                        "also loads without buffers (and on TensorRT an engine) sized for a batch.")
                    serving = self._batcher
            return detection
        except InferenceError as exc:
            raise ModelLoadError(f"{self.manifest.model_file}: a test inference failed: {exc}") from None
        finally:
            self._batcher = serving

    def _batch_problem(self) -> str | None:
        """Why the model cannot batch (None when a full batch matches the images run one by one)."""
        spec = self.manifest.input
        rng = np.random.default_rng(0)
        frames = [np.full((spec.height, spec.width, 3), 128, dtype=np.uint8),
                  rng.integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)]
        tensors = [self.preprocess(Frame(spec.width, spec.height, spec.width * 3, f.reshape(-1))) for f in frames]
        alone = [self._run_batch(t) for t in tensors]
        order = [i % len(tensors) for i in range(self.max_batch)]
        try:
            together = self._run_batch(np.concatenate([tensors[i] for i in order], axis=0))
        except Exception as exc:  # the engine refused the batch: serve one by one
            return f"a batch of {self.max_batch} failed ({_first_line(exc)})."
        loose = self.manifest.extra.get("fp16") is True  # FP16 engines differ more between batch sizes
        for name in alone[0]:
            value = together.get(name)
            single_shape = list(alone[0][name].shape)
            if value is None or value.ndim == 0 or value.shape[0] != self.max_batch:
                shape = "missing" if value is None else list(value.shape)
                return (f"output {name!r} is {shape} for a batch of {self.max_batch} ({single_shape} for one "
                        "image), not batch-first.")
            for position, index in enumerate(order):
                expected = alone[index][name]
                got = value[position:position + 1]
                if got.shape != expected.shape:
                    return (f"output {name!r} is {list(value.shape)} for a batch of {self.max_batch} but "
                            f"{single_shape} for one image, not the same shape with the batch first.")
                if not _close(got, expected, loose=loose):
                    return (f"output {name!r} of an image in a batch differs from the same image alone (the model "
                            "mixes images within a batch).")
        return None

    # -- the pipeline -----------------------------------------------------------------------

    def detect(self, frame: Frame) -> Detection:
        started = time.perf_counter()
        tensor = self.preprocess(frame)
        preprocessed = time.perf_counter()
        result = self._batcher.infer(tensor)
        inferred = time.perf_counter()
        detection = self.postprocess(result.outputs, frame.width, frame.height)
        times = detection.times
        times.preprocess_s, times.queue_s = preprocessed - started, max(0.0, result.started - preprocessed)
        times.inference_s, times.postprocess_s = result.inference_s, time.perf_counter() - inferred
        times.batch_size = result.batch_size
        return detection

    def postprocess(self, outputs: dict[str, np.ndarray], width: int, height: int) -> Detection:
        manifest = self.manifest
        spec = manifest.outputs
        raw = _image_score(outputs[spec.image_score], spec.image_score, spec.image_score_reduce)
        threshold = manifest.image_threshold
        if spec.image_label is not None:
            is_anomalous = _label(outputs[spec.image_label], spec.image_label)
        else:
            is_anomalous = threshold.exceeded(raw)
        normalized = threshold.normalize(raw)
        confidence = normalized if is_anomalous else 1.0 - normalized
        confidence = min(1.0, max(MIN_CONFIDENCE, confidence))

        mask = None
        anomalies: tuple[AnomalyArea, ...] = ()
        painted = self._mask(outputs, width, height)
        if painted is not None:
            mask, counts = painted
            total = float(width * height)
            anomalies = tuple(
                AnomalyArea(self.class_names[i], counts[i] / total, self.class_colors[i])
                for i in range(len(self.class_names))
                if i == 0 or counts[i] > 0
            )
        return Detection(bool(is_anomalous), float(confidence), raw, normalized, mask, anomalies)

    def _mask(self, outputs: dict[str, np.ndarray], width: int, height: int) -> tuple[np.ndarray, list[int]] | None:
        """The painted mask at the frame's size and its pixel count per class (None: no pixel output)."""
        spec = self.manifest.outputs
        threshold = self.manifest.pixel_threshold
        if spec.anomaly_map is not None and threshold is not None:
            amap = _plane(outputs[spec.anomaly_map], spec.anomaly_map)
            if amap.shape[0] <= height and amap.shape[1] <= width:
                if not np.isfinite(amap).all():
                    raise InferenceError(
                        f"output {spec.anomaly_map!r} holds NaN or infinite values (an FP16 overflow does this); "
                        "the agent refuses to report a result. Run the model in FP32 or re-export it."
                    )
                # Profiles showed the frame-sized float map as the largest cost on big frames.
                return threshold_mask(amap, width, height, threshold.threshold, self.palette,
                                      strict=threshold.compare == ">")
        labels = self._labels(outputs, width, height)
        return None if labels is None else paint_and_count(labels, self.palette)

    def _labels(self, outputs: dict[str, np.ndarray], width: int, height: int) -> np.ndarray | None:
        spec = self.manifest.outputs
        if spec.anomaly_map is not None:
            amap = _plane(outputs[spec.anomaly_map], spec.anomaly_map)
            if not np.isfinite(amap).all():
                raise InferenceError(
                    f"output {spec.anomaly_map!r} holds NaN or infinite values (an FP16 overflow does this); "
                    "the agent refuses to report a result. Run the model in FP32 or re-export it."
                )
            assert self.manifest.pixel_threshold is not None
            upscaled = upscale_map(amap, width, height)
            return self.manifest.pixel_threshold.exceeded_map(upscaled).astype(np.uint8)
        if spec.segmentation is not None:
            values = outputs[spec.segmentation]
            n_classes = len(self.class_names)
            if spec.segmentation_kind == "labels":
                labels = _plane(values, spec.segmentation)
                if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
                    raise InferenceError(
                        f"output {spec.segmentation!r} holds class {int(labels.max())} but the manifest lists "
                        f"{n_classes} classes (background and {n_classes - 1} anomaly types)."
                    )
                labels = labels.astype(np.uint8)
            else:
                scores = _class_scores(values, spec.segmentation, n_classes)
                labels = np.argmax(scores, axis=0).astype(np.uint8)
            return upscale_labels(labels, width, height)
        return None


def _close(got: np.ndarray, expected: np.ndarray, *, loose: bool = False) -> bool:
    """Equal up to what a different batch size changes in float kernels (and FP16 rounding)."""
    if got.dtype.kind not in "fc":
        return bool(np.array_equal(got, expected))
    a, b = got.astype(np.float64), expected.astype(np.float64)
    if not (np.isfinite(a) == np.isfinite(b)).all():
        return False
    finite = np.isfinite(b)
    scale = float(np.abs(b[finite]).max()) if finite.any() else 0.0
    # Kernels picked per batch size sum in other orders: float32 moves by 1e-6 to 1e-4 of the
    # largest value; images mixed within a batch move it by far more.
    tolerance = (2e-2 if loose or got.dtype == np.float16 else 1e-3) * max(scale, 1e-6)
    if not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return False
    return bool(np.all(np.abs(a[finite] - b[finite]) <= tolerance))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _check_input_shape(info: TensorInfo, layout: str, width: int, height: int, path: object) -> None:
    if len(info.shape) != 4:
        raise ModelLoadError(
            f"{path}: input {info.name!r} has shape {list(info.shape)}; the agent feeds a 4-D image batch "
            f"({layout})."
        )
    h_dim, w_dim, c_dim = (info.shape[2], info.shape[3], info.shape[1]) if layout == "NCHW" else (
        info.shape[1], info.shape[2], info.shape[3])
    for name, dim, want in (("height", h_dim, height), ("width", w_dim, width), ("channels", c_dim, 3)):
        if isinstance(dim, int) and dim != want:
            raise ModelLoadError(
                f"{path}: input {info.name!r} has shape {list(info.shape)} ({layout}), so its {name} is {dim}, "
                f"but the manifest says {want}. Fix input.width/height/layout in the manifest."
            )
    batch = info.shape[0]
    if isinstance(batch, int) and batch != 1:
        raise ModelLoadError(f"{path}: input {info.name!r} has a fixed batch of {batch}; export it with batch 1 "
                             "or a dynamic batch.")


def _image_score(value: np.ndarray, name: str, reduce: str) -> float:
    if reduce == "max":
        if value.size < 1:
            raise InferenceError(f"output {name!r} is empty; the image score is its largest value.")
        result = float(np.max(value))
    elif value.size != 1:
        raise InferenceError(
            f"output {name!r} has shape {list(value.shape)}; an image score must hold one value per image. "
            "Fix outputs.image_score in the manifest (or set outputs.image_score_reduce to \"max\")."
        )
    else:
        result = float(value.reshape(-1)[0])
    if not math.isfinite(result):
        raise InferenceError(
            f"output {name!r} is {result} (NaN or infinite: an FP16 overflow or a broken model does this); "
            "the agent refuses to report it as a decision. Run the model in FP32 or re-export it."
        )
    return result


def _label(value: np.ndarray, name: str) -> bool:
    """The model's own decision for one image (a boolean, or 0/1)."""
    if value.size != 1:
        raise InferenceError(
            f"output {name!r} has shape {list(value.shape)}; an image label must hold one value per image. "
            "Fix outputs.image_label in the manifest."
        )
    label = value.reshape(-1)[0]
    if value.dtype != np.bool_ and not math.isfinite(float(label)):
        raise InferenceError(f"output {name!r} is {float(label)}; the agent refuses to report it as a decision.")
    return bool(label)


def _plane(value: np.ndarray, name: str) -> np.ndarray:
    """Squeezes (1, 1, H, W) / (1, H, W) / (H, W) to (H, W)."""
    array = value
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise InferenceError(
            f"output {name!r} has shape {list(value.shape)}; expected a one-channel map (1, 1, H, W), "
            "(1, H, W) or (H, W)."
        )
    return array


def _class_scores(value: np.ndarray, name: str, n_classes: int) -> np.ndarray:
    array = value[0] if value.ndim == 4 and value.shape[0] == 1 else value
    if array.ndim != 3 or array.shape[0] != n_classes:
        raise InferenceError(
            f"output {name!r} has shape {list(value.shape)}; expected (1, {n_classes}, H, W): one channel for the "
            f"background and one per anomaly type in the manifest ({n_classes - 1})."
        )
    if not np.isfinite(array).all():
        raise InferenceError(f"output {name!r} holds NaN or infinite values; the agent refuses to report a result.")
    return array


class TorchBilinearPreprocessor(Preprocessor):
    """Pre-processing for ``input.resize: bilinear-torch``.

    Resizes as PyTorch's ``interpolate(mode="bilinear", align_corners=False,
    antialias=False)`` and ONNX's ``Resize`` (linear, half_pixel) do, which is what
    anomalib's exported graphs do to a frame: bilinear sampling at half-pixel centres,
    without the antialiasing Pillow's bilinear filter applies when it shrinks. Frames
    resized this way reach the model with the values anomalib's own inferencer gives it,
    and stay in float32 (no rounding to uint8) for float models.
    """

    def __init__(self, spec: InputSpec, dtype: np.dtype) -> None:
        super().__init__(dataclasses.replace(spec, resize="bilinear"), dtype)
        self.spec = spec

    def resized(self, frame: Frame) -> np.ndarray:
        """The frame at the model's size: (H, W, 3), uint8 for uint8 models, else float32."""
        if (frame.width, frame.height) == (self.spec.width, self.spec.height):
            return frame.array()
        sampled = resize_bilinear_torch(frame.array(), self.spec.width, self.spec.height)
        return np.rint(sampled).astype(np.uint8) if self.dtype == np.uint8 else sampled


def resize_bilinear_torch(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resizes an (H, W, C) array to (height, width, C) float32 as PyTorch's bilinear interpolate.

    Output pixel ``d`` samples the source at ``(d + 0.5) * in / out - 0.5``, clamped at 0,
    between its two neighbours (the last one repeating at the far edge).
    """
    rows_a, rows_b, row_weight = _bilinear_taps(pixels.shape[0], height)
    cols_a, cols_b, col_weight = _bilinear_taps(pixels.shape[1], width)
    upper = pixels[rows_a].astype(np.float32)
    lower = pixels[rows_b].astype(np.float32)
    rows = upper + (lower - upper) * row_weight[:, None, None]
    left, right = rows[:, cols_a], rows[:, cols_b]
    return left + (right - left) * col_weight[None, :, None]


def _bilinear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and the weight of the second one, per output index."""
    source = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    first = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    second = np.minimum(first + 1, size_in - 1)
    return first, second, (source - first).astype(np.float32)
