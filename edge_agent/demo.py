"""Demo model components fitted on a real photograph, for trying the agent without a trained model.

The photograph is the brick-wall texture shipped with scikit-image (``skimage.data.brick()``, 512x512
grayscale, turned into RGB by repeating the channel). Frames are 256x256 crops at the photo's native
scale, as a fixed camera would take them. The top half of the photo is the training region (tiled into
two non-overlapping crops); held-out frames come from the bottom half only, so they share no pixel with
training.

Both models are patch Gaussians, fitted on defect-free training crops only:

* every pixel is described by the k x k x 3 patch centred on it (reflect padding at the borders);
* the patch distribution is a Gaussian with the per-channel mean and the patch covariance of the
  training pixels; its eigenvectors (a PCA basis learned from the data) become the filters of an ONNX
  ``Conv``. The ``m`` leading components keep their own variance, the remaining ones share one variance
  (their mean eigenvalue), floored at a noise level: this is probabilistic PCA, so the per-pixel
  Mahalanobis distance is ``sum_i z_i^2 / lambda_i + residual^2 / sigma^2`` with ``z = W (p - mu)`` and
  ``residual^2 = |p - mu|^2 - |z|^2``;
* the distance map is smoothed by a Gaussian (sigma 4 px, as anomalib does) and the image score is its
  maximum.

The segmentation model (7x7 patches) outputs the score and the full-resolution map; the classification
model (9x9 patches, more context per pixel) outputs the score only. Thresholds come from defect-free
data only, by two-fold cross-fitting over the two training crops (see ``_decide``).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.files import atomic_write

LOGGER = logging.getLogger(__name__)

DEMO_VERSION = 1
"""Bump when the demo models change: cached components with another version are rebuilt."""

SEGMENTATION_NAME = "demo-brick-segmentation"
CLASSIFICATION_NAME = "demo-brick-classification"
DEFECT_KINDS = ("scratch", "hole", "stain")
FRAME_SIZE = 256
SAMPLE_NAMES = ("good_1.png", "good_2.png", "scratch.png", "hole.png", "stain.png")

_INSTALL_HINT = "install the demo extra: pip install 'edge-agent[demo]'"
_OPSET = 17
_MODEL_FILE = "model.onnx"
_MANIFEST_FILE = "manifest.json"
# Margin on the highest score seen on defect-free validation data.
_MARGIN = 1.1
# The photo is grayscale, so colour directions have zero variance in the training patches: their
# variance is floored at 1% of the mean per-dimension patch variance (about 2.5 grey levels of sensor
# noise here) instead of being treated as impossible to deviate from.
_NOISE_FLOOR = 0.01
_SAMPLES_SEED = 20240607


@dataclass(frozen=True)
class _Spec:
    """Hyper-parameters and manifest text of one demo component."""

    name: str
    description: str
    patch: int
    components: int
    sigma: float
    with_map: bool


_SEGMENTATION = _Spec(
    name=SEGMENTATION_NAME,
    description=(
        "Demo: brick-wall texture anomaly segmentation, fitted on defect-free crops of "
        "scikit-image's brick photo"
    ),
    patch=7,
    components=24,
    sigma=4.0,
    with_map=True,
)
_CLASSIFICATION = _Spec(
    name=CLASSIFICATION_NAME,
    description=(
        "Demo: brick-wall texture anomaly classification, fitted on defect-free crops of "
        "scikit-image's brick photo"
    ),
    patch=9,
    components=32,
    sigma=4.0,
    with_map=False,
)


@dataclass(frozen=True)
class _PatchGaussian:
    """A fitted patch Gaussian, in the form the ONNX graph uses.

    Attributes:
        mean: per-channel mean, in [0, 1] units, shape (3,).
        filters: leading eigenvectors as Conv weights, shape (m, 3, k, k).
        coef: ``sigma^2 / lambda_i - 1`` per component, shape (m,).
        inv_sigma: ``1 / sigma``, sigma^2 being the variance of the residual directions.
    """

    mean: np.ndarray
    filters: np.ndarray
    coef: np.ndarray
    inv_sigma: float


@dataclass(frozen=True)
class _Moments:
    """Sums over the patches of some crops, centred on a fixed reference colour."""

    count: int
    sum1: np.ndarray
    sum2: np.ndarray


# --------------------------------------------------------------------------- data


def brick_photo() -> np.ndarray:
    """Load scikit-image's brick photo as RGB.

    Returns:
        uint8 array (512, 512, 3), the grayscale photo repeated over three channels.

    Raises:
        RuntimeError: scikit-image is not installed.
    """
    try:
        from skimage import data
    except ImportError as exc:
        raise RuntimeError(f"the demo models need scikit-image; {_INSTALL_HINT}") from exc
    gray = np.asarray(data.brick(), dtype=np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def training_crops() -> np.ndarray:
    """Return the defect-free training frames: the photo's top half, tiled.

    Returns:
        uint8 array (2, 256, 256, 3): rows 0-255, columns 0-255 and 256-511.
    """
    photo = brick_photo()
    top = photo[:FRAME_SIZE]
    return np.stack([top[:, x : x + FRAME_SIZE] for x in range(0, top.shape[1], FRAME_SIZE)])


def heldout_crops(*, step: int = 32, flips: bool = True) -> np.ndarray:
    """Return defect-free frames that share no pixel with the training crops.

    They are 256x256 windows of the photo's bottom half (rows 256-511) at column offsets
    0, step, ..., 256; with ``flips`` each window also comes mirrored left-right, up-down and both.

    Args:
        step: column step between windows, in pixels.
        flips: also return the three mirrored versions of every window.

    Returns:
        uint8 array (N, 256, 256, 3); N = 36 with the defaults.
    """
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    photo = brick_photo()
    bottom = photo[photo.shape[0] - FRAME_SIZE :]
    frames = []
    for x in range(0, bottom.shape[1] - FRAME_SIZE + 1, step):
        window = bottom[:, x : x + FRAME_SIZE]
        frames.append(window)
        if flips:
            frames.extend([window[:, ::-1], window[::-1], window[::-1, ::-1]])
    return np.ascontiguousarray(np.stack(frames))


def paint_defect(frame: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one synthetic defect on a copy of a frame.

    Kinds: ``scratch``, a 2-4 px wide bright or dark line segment, 60-150 px long, at a random angle;
    ``hole``, a dark filled disk of radius 8-20 px; ``stain``, a brownish or greenish semi-transparent
    blob of radius 15-35 px. The defect lies fully inside the frame.

    Args:
        frame: uint8 RGB frame (H, W, 3).
        kind: one of ``DEFECT_KINDS``.
        rng: random generator that places and sizes the defect.

    Returns:
        The defective frame (a new uint8 array) and the boolean (H, W) mask of the painted pixels.

    Raises:
        ValueError: unknown kind, or a frame that is not (H, W, 3) uint8.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    height, width = frame.shape[:2]
    out = frame.astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "scratch":
        thickness = rng.uniform(2.0, 4.0)
        length = rng.uniform(60.0, 150.0)
        angle = rng.uniform(0.0, np.pi)
        half_dx, half_dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        edge = thickness / 2 + 1
        cx = rng.uniform(abs(half_dx) + edge, width - 1 - abs(half_dx) - edge)
        cy = rng.uniform(abs(half_dy) + edge, height - 1 - abs(half_dy) - edge)
        x0, y0, vx, vy = cx - half_dx, cy - half_dy, 2 * half_dx, 2 * half_dy
        t = np.clip(((xx - x0) * vx + (yy - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
        mask = np.hypot(xx - (x0 + t * vx), yy - (y0 + t * vy)) <= thickness / 2
        value = rng.uniform(215.0, 250.0) if rng.random() < 0.5 else rng.uniform(10.0, 45.0)
        out[mask] = value
    elif kind == "hole":
        radius = rng.uniform(8.0, 20.0)
        cx = rng.uniform(radius + 1, width - 2 - radius)
        cy = rng.uniform(radius + 1, height - 2 - radius)
        mask = np.hypot(xx - cx, yy - cy) <= radius
        out[mask] = rng.uniform(5.0, 30.0) + rng.normal(0.0, 3.0, size=(int(mask.sum()), 1))
    elif kind == "stain":
        radius = rng.uniform(15.0, 35.0)
        bound = radius * 1.3  # the wobble below adds at most 30% to the radius
        cx = rng.uniform(bound + 1, width - 2 - bound)
        cy = rng.uniform(bound + 1, height - 2 - bound)
        theta = np.arctan2(yy - cy, xx - cx)
        edge = np.full_like(theta, radius)
        for harmonic in (2, 3, 5):
            edge += radius * rng.uniform(0.0, 0.1) * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
        mask = np.hypot(xx - cx, yy - cy) <= edge
        brownish, greenish = (120.0, 80.0, 35.0), (70.0, 110.0, 45.0)
        colour = np.array(brownish if rng.random() < 0.5 else greenish, dtype=np.float32)
        alpha = rng.uniform(0.35, 0.6)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    else:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {DEFECT_KINDS}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


# --------------------------------------------------------------------------- fitting


def _patch_moments(crop: np.ndarray, patch: int, reference: np.ndarray) -> _Moments:
    """Sum the patch vectors of a crop (and their outer products), centred on ``reference``."""
    from numpy.lib.stride_tricks import sliding_window_view

    image = crop.astype(np.float32) / 255.0 - reference.astype(np.float32)
    radius = patch // 2
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    windows = sliding_window_view(padded, (patch, patch), axis=(0, 1))  # H, W, 3, k, k
    dim = 3 * patch * patch
    sum1 = np.zeros(dim)
    sum2 = np.zeros((dim, dim))
    rows = 32  # chunks of 32 image rows keep the patch matrix small
    for top in range(0, windows.shape[0], rows):
        block = windows[top : top + rows].reshape(-1, dim)
        sum1 += block.sum(axis=0, dtype=np.float64)
        sum2 += (block.T @ block).astype(np.float64)
    return _Moments(count=windows.shape[0] * windows.shape[1], sum1=sum1, sum2=sum2)


def _fit(moments: list[_Moments], reference: np.ndarray, spec: _Spec) -> _PatchGaussian:
    """Fit the patch Gaussian (probabilistic PCA) from the moments of the fitting crops."""
    count = sum(m.count for m in moments)
    first = sum(m.sum1 for m in moments) / count
    second = sum(m.sum2 for m in moments) / count
    area = spec.patch * spec.patch
    # Stationary texture: the mean patch is the per-channel mean colour, repeated over the patch.
    offset = first.reshape(3, area).mean(axis=1)
    shift = np.repeat(offset, area)
    covariance = second - np.outer(first, shift) - np.outer(shift, first) + np.outer(shift, shift)
    eigenvalues, eigenvectors = np.linalg.eigh((covariance + covariance.T) / 2)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    kept = spec.components
    floor = _NOISE_FLOOR * float(np.trace(covariance)) / covariance.shape[0]
    sigma2 = max(float(eigenvalues[kept:].mean()), floor)
    lambdas = np.maximum(eigenvalues[:kept], sigma2)
    return _PatchGaussian(
        mean=(reference + offset).astype(np.float32),
        filters=eigenvectors[:, :kept].T.reshape(kept, 3, spec.patch, spec.patch).astype(np.float32),
        coef=(sigma2 / lambdas - 1.0).astype(np.float32),
        inv_sigma=1.0 / np.sqrt(sigma2),
    )


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Return a normalised 1-D Gaussian kernel truncated at 4 sigma."""
    radius = int(round(4 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _build_graph(model: _PatchGaussian, spec: _Spec) -> Any:
    """Express a fitted patch Gaussian as an ONNX model (opset 17, float32, dynamic batch).

    The squared distance is computed times sigma^2 (``sum_i z_i^2 (sigma^2 / lambda_i - 1) + |p - mu|^2``)
    and rescaled after the square root, so every intermediate stays within float16 range too.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> Any:
        return numpy_helper.from_array(np.asarray(value), name)

    m, k = spec.components, spec.patch
    r = k // 2
    kernel = _gaussian_kernel(spec.sigma)
    n = kernel.size
    s = n // 2
    smoothed = "anomaly_map" if spec.with_map else "smoothed"
    initializers = [
        const("mean", model.mean.reshape(1, 3, 1, 1)),
        const("patch_pads", np.array([0, 0, r, r, 0, 0, r, r], dtype=np.int64)),
        const("pca_w", model.filters),
        const("coef_w", model.coef.reshape(1, m, 1, 1)),
        const("energy_w", np.ones((1, 3, k, k), dtype=np.float32)),
        const("inv_sigma", np.array(model.inv_sigma, dtype=np.float32)),
        const("smooth_pads", np.array([0, 0, s, s, 0, 0, s, s], dtype=np.int64)),
        const("smooth_x", kernel.reshape(1, 1, 1, -1)),
        const("smooth_y", kernel.reshape(1, 1, -1, 1)),
    ]
    nodes = [
        helper.make_node("Sub", ["image", "mean"], ["centred"]),
        helper.make_node("Pad", ["centred", "patch_pads"], ["padded"], mode="reflect"),
        # z_i = <w_i, p - mu> for the m leading eigenvectors.
        helper.make_node("Conv", ["padded", "pca_w"], ["proj"], kernel_shape=[k, k]),
        helper.make_node("Mul", ["proj", "proj"], ["proj_sq"]),
        # sum_i z_i^2 (sigma^2 / lambda_i - 1)
        helper.make_node("Conv", ["proj_sq", "coef_w"], ["leading"], kernel_shape=[1, 1]),
        helper.make_node("Mul", ["padded", "padded"], ["padded_sq"]),
        # |p - mu|^2
        helper.make_node("Conv", ["padded_sq", "energy_w"], ["energy"], kernel_shape=[k, k]),
        helper.make_node("Add", ["leading", "energy"], ["scaled_dist_sq"]),
        helper.make_node("Relu", ["scaled_dist_sq"], ["scaled_dist_sq_pos"]),  # rounding can dip below 0
        helper.make_node("Sqrt", ["scaled_dist_sq_pos"], ["scaled_distance"]),
        helper.make_node("Mul", ["scaled_distance", "inv_sigma"], ["distance"]),
        helper.make_node("Pad", ["distance", "smooth_pads"], ["distance_padded"], mode="reflect"),
        # Separable Gaussian smoothing: a 1 x n then an n x 1 convolution.
        helper.make_node("Conv", ["distance_padded", "smooth_x"], ["smooth_h"], kernel_shape=[1, n]),
        helper.make_node("Conv", ["smooth_h", "smooth_y"], [smoothed], kernel_shape=[n, 1]),
        helper.make_node("ReduceMax", [smoothed], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])]
    if spec.with_map:
        map_shape = ["batch", 1, FRAME_SIZE, FRAME_SIZE]
        outputs.append(helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, map_shape))
    graph = helper.make_graph(
        nodes,
        spec.name.replace("-", "_"),
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, FRAME_SIZE, FRAME_SIZE])],
        outputs,
        initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="edge-agent demo",
        doc_string=spec.description,
    )
    onnx_model.ir_version = 8  # readable by ONNX Runtime >= 1.10 and TensorRT >= 8.4
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _run(onnx_model: Any, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Run a model on uint8 RGB frames with the manifest's pre-processing (x / 255, NCHW)."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": batch}), strict=True))


def _with_flips(frame: np.ndarray) -> np.ndarray:
    """Return a frame and its three mirrored versions."""
    return np.stack([frame, frame[:, ::-1], frame[::-1], frame[::-1, ::-1]])


def _range(threshold: float, low: float) -> dict[str, float]:
    """Return a decision entry whose normalisation maps ``low`` to 0 and the threshold to 0.5."""
    # With clip((x - threshold) / (max - min) + 0.5, 0, 1): max - min = 2 (threshold - min) sends the
    # lowest validation score to 0 and any score at or above 2 threshold - min to 1.
    return {
        "threshold": round(threshold, 6),
        "min": round(low, 6),
        "max": round(2 * threshold - low, 6),
    }


def _decide(spec: _Spec, crops: np.ndarray, reference: np.ndarray, moments: list[_Moments]) -> dict:
    """Choose thresholds from defect-free data by two-fold cross-fitting over the training crops.

    Each training crop is scored (with its three mirrored versions) by a model fitted on the other
    crop only, so the validation scores are out of sample. Rule: threshold = 1.1 x the highest
    validation value (image scores for ``image``, anomaly-map pixels for ``pixel``); min = the
    lowest validation value; max = 2 x threshold - min (see ``_range``). The 10% margin covers the
    gap between two validation crops and the unseen frames of a deployment. The segmentation score is
    the maximum of the same map, so its two thresholds coincide: a frame is anomalous exactly when its
    pixel mask is not empty.
    """
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    for held in range(len(crops)):
        rest = [mom for i, mom in enumerate(moments) if i != held]
        fold = _build_graph(_fit(rest, reference, spec), spec)
        result = _run(fold, _with_flips(crops[held]))
        scores.append(result["score"])
        if spec.with_map:
            maps.append(result["anomaly_map"])
    image_scores = np.concatenate(scores)
    decision = {"image": _range(_MARGIN * float(image_scores.max()), float(image_scores.min()))}
    LOGGER.debug("%s validation image scores: %s", spec.name, np.round(image_scores, 3).tolist())
    if spec.with_map:
        pixels = np.concatenate([m.ravel() for m in maps])
        decision["pixel"] = _range(_MARGIN * float(pixels.max()), float(pixels.min()))
    return decision


def _manifest(spec: _Spec, decision: dict) -> dict:
    """Return the agent manifest of a demo component."""
    outputs = {"image_score": "score"}
    if spec.with_map:
        outputs["anomaly_map"] = "anomaly_map"
    manifest: dict[str, Any] = {
        "demo_version": DEMO_VERSION,
        "model_file": _MODEL_FILE,
        "description": spec.description,
        "lookout_vision_model_arn": "",
        "input": {
            "name": "image",
            "width": FRAME_SIZE,
            "height": FRAME_SIZE,
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": "RGB",
            "scale": 1.0 / 255.0,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "resize": "bilinear",
        },
        "outputs": outputs,
        "decision": decision,
    }
    if spec.with_map:
        manifest["anomaly_types"] = [{"name": "anomaly", "color": "#FF0000"}]
    return manifest


def _build_component(spec: _Spec, crops: np.ndarray) -> tuple[bytes, dict]:
    """Fit one demo component; return its serialised ONNX model and its manifest."""
    reference = crops.reshape(-1, 3).mean(axis=0) / 255.0
    moments = [_patch_moments(crop, spec.patch, reference) for crop in crops]
    model = _build_graph(_fit(moments, reference, spec), spec)
    decision = _decide(spec, crops, reference, moments)
    return model.SerializeToString(), _manifest(spec, decision)


# --------------------------------------------------------------------------- files


def _is_current(component: Path) -> bool:
    """Tell whether a component directory holds a complete build of this demo version."""
    try:
        manifest = json.loads((component / _MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("demo_version") != DEMO_VERSION:
        return False
    return (component / str(manifest.get("model_file", _MODEL_FILE))).is_file()


def build_demo_models(models_dir: Path, *, force: bool = False) -> list[Path]:
    """Fit the two demo components and write them under ``models_dir``.

    Writes ``demo-brick-segmentation/`` and ``demo-brick-classification/``, each with ``model.onnx``
    and ``manifest.json``. Does nothing when both already hold this ``DEMO_VERSION``, unless ``force``.
    Each file is written atomically and the manifest last (the old one is removed first), so an
    interrupted build leaves no component whose manifest does not match its model.

    Args:
        models_dir: directory that holds model components; created if missing.
        force: rebuild even when current components are already there.

    Returns:
        The two component directories, segmentation first.

    Raises:
        RuntimeError: scikit-image is not installed.
    """
    models_dir = Path(models_dir)
    specs = (_SEGMENTATION, _CLASSIFICATION)
    components = [models_dir / spec.name for spec in specs]
    if not force and all(_is_current(c) for c in components):
        LOGGER.info("Demo models already in %s (demo version %d)", models_dir, DEMO_VERSION)
        return components
    started = time.perf_counter()
    crops = training_crops()
    for spec, component in zip(specs, components, strict=True):
        onnx_bytes, manifest = _build_component(spec, crops)
        component.mkdir(parents=True, exist_ok=True)
        (component / _MANIFEST_FILE).unlink(missing_ok=True)
        atomic_write(component / _MODEL_FILE, onnx_bytes)
        atomic_write(component / _MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        threshold = manifest["decision"]["image"]["threshold"]
        LOGGER.info("Wrote demo model %s (image threshold %.3f)", component, threshold)
    LOGGER.info("Built the demo models in %.1f s", time.perf_counter() - started)
    return components


def write_demo_samples(samples_dir: Path) -> list[Path]:
    """Write sample frames to try the demo models on.

    ``good_1.png`` and ``good_2.png`` are held-out defect-free crops; ``scratch.png``, ``hole.png`` and
    ``stain.png`` are held-out crops with a painted defect. All are 256x256 RGB PNGs, the same on every
    call.

    Args:
        samples_dir: output directory; created if missing.

    Returns:
        Paths of the written files, in the order above.

    Raises:
        RuntimeError: scikit-image is not installed.
    """
    from PIL import Image

    samples_dir = Path(samples_dir)
    frames = heldout_crops(flips=False)  # windows at columns 0, 32, ..., 256 of the bottom half
    rng = np.random.default_rng(_SAMPLES_SEED)
    images = [frames[0], frames[-1]]
    bases = (frames[2], frames[4], frames[6])
    images += [paint_defect(base, kind, rng)[0] for base, kind in zip(bases, DEFECT_KINDS, strict=True)]
    paths = []
    for name, image in zip(SAMPLE_NAMES, images, strict=True):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        path = samples_dir / name
        atomic_write(path, buffer.getvalue())
        paths.append(path)
    LOGGER.info("Wrote %d demo sample frames to %s", len(paths), samples_dir)
    return paths
