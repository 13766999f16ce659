"""Tests of the demo models fitted on scikit-image's brick photo (``edge_agent.demo``).

The models are run with ONNX Runtime directly, pre-processing frames as their manifest says, on
held-out crops (bottom half of the photo, never seen in training) with and without painted defects.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_agent import demo

DEFECTS_PER_KIND = 12
MODEL_NAMES = (demo.SEGMENTATION_NAME, demo.CLASSIFICATION_NAME)
MANIFEST_KEYS = {
    "demo_version",
    "model_file",
    "description",
    "lookout_vision_model_arn",
    "input",
    "outputs",
    "decision",
}


@dataclass
class Built:
    """Demo models built once for the module."""

    models_dir: Path
    components: list[Path]
    seconds: float


@dataclass
class Frames:
    """Held-out evaluation frames."""

    good: np.ndarray
    defective: np.ndarray
    masks: np.ndarray
    kinds: list[str]


def _manifest(component: Path) -> dict:
    return json.loads((component / "manifest.json").read_text(encoding="utf-8"))


def _run(component: Path, frames: np.ndarray) -> dict[str, np.ndarray]:
    """Run a component on uint8 RGB frames, pre-processed as its manifest says."""
    spec = _manifest(component)["input"]
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    x = frames.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(spec["scale"])
    x = np.ascontiguousarray((x - mean) / std, dtype=np.float32)
    model_path = component / _manifest(component)["model_file"]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    chunks = [session.run(names, {spec["name"]: x[i : i + 8]}) for i in range(0, len(x), 8)]
    return {name: np.concatenate([c[j] for c in chunks]) for j, name in enumerate(names)}


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    diff = positives[:, None] - negatives[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def _files_state(component: Path) -> dict[str, tuple[int, int]]:
    """(mtime, inode) of a component's files: a rewrite through os.replace changes both."""
    stats = {name: (component / name).stat() for name in ("model.onnx", "manifest.json")}
    return {name: (st.st_mtime_ns, st.st_ino) for name, st in stats.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    pytest.importorskip("skimage", reason="needs the demo extra")
    models_dir = tmp_path_factory.mktemp("models")
    started = time.perf_counter()
    components = demo.build_demo_models(models_dir)
    return Built(models_dir, components, time.perf_counter() - started)


@pytest.fixture(scope="module")
def frames() -> Frames:
    pytest.importorskip("skimage", reason="needs the demo extra")
    good = demo.heldout_crops()
    defective, masks, kinds = [], [], []
    for index, kind in enumerate(demo.DEFECT_KINDS):
        rng = np.random.default_rng(1000 + index)
        for _ in range(DEFECTS_PER_KIND):
            frame, mask = demo.paint_defect(good[rng.integers(len(good))], kind, rng)
            defective.append(frame)
            masks.append(mask)
            kinds.append(kind)
    return Frames(good, np.stack(defective), np.stack(masks), kinds)


@pytest.fixture(scope="module")
def outputs(built: Built, frames: Frames) -> dict[str, tuple[dict, dict]]:
    """Outputs of each model on the good and on the defective frames."""
    return {c.name: (_run(c, frames.good), _run(c, frames.defective)) for c in built.components}


def test_build_writes_two_valid_components_when_models_dir_empty(built: Built) -> None:
    assert [c.name for c in built.components] == list(MODEL_NAMES)
    for component in built.components:
        manifest = _manifest(component)
        segmentation = component.name == demo.SEGMENTATION_NAME
        assert set(manifest) == MANIFEST_KEYS | ({"anomaly_types"} if segmentation else set())
        assert manifest["demo_version"] == demo.DEMO_VERSION
        assert manifest["input"] == {
            "name": "image",
            "width": 256,
            "height": 256,
            "layout": "NCHW",
            "dtype": "float32",
            "channel_order": "RGB",
            "scale": 1 / 255,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "resize": "bilinear",
        }
        decision = manifest["decision"]
        assert set(decision) == ({"image", "pixel"} if segmentation else {"image"})
        for entry in decision.values():
            assert entry["min"] < entry["threshold"] < entry["max"]
        model = onnx.load(str(component / manifest["model_file"]))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == 17
        assert [i.name for i in model.graph.input] == ["image"]
        names = ["score", "anomaly_map"] if segmentation else ["score"]
        assert [o.name for o in model.graph.output] == names
        expected_outputs = {"image_score": "score", "anomaly_map": "anomaly_map"}
        if not segmentation:
            del expected_outputs["anomaly_map"]
        assert manifest["outputs"] == expected_outputs
        batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param == "batch"
    assert not any(p.name.endswith(".tmp") for p in built.models_dir.rglob("*"))  # no temporary files left


def test_build_takes_seconds_when_run_once(built: Built) -> None:
    assert built.seconds < 20.0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_scores_every_defect_above_every_good_frame_when_frames_held_out(
    name: str, outputs: dict, frames: Frames
) -> None:
    good, bad = outputs[name]
    assert good["score"].shape == (len(frames.good),)
    assert _auroc(good["score"], bad["score"]) == 1.0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_manifest_threshold_classifies_all_frames_when_frames_held_out(
    name: str, built: Built, outputs: dict
) -> None:
    threshold = _manifest(built.models_dir / name)["decision"]["image"]["threshold"]
    good, bad = outputs[name]
    assert np.all(good["score"] < threshold)
    assert np.all(bad["score"] >= threshold)


@pytest.mark.parametrize("kind", demo.DEFECT_KINDS)
def test_anomaly_map_covers_painted_defect_when_defect_painted(
    kind: str, built: Built, outputs: dict, frames: Frames
) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    threshold = _manifest(built.components[0])["decision"]["pixel"]["threshold"]
    _, bad = outputs[demo.SEGMENTATION_NAME]
    assert bad["anomaly_map"].shape == (len(frames.defective), 1, 256, 256)
    recalls, near = [], []
    for index in (i for i, k in enumerate(frames.kinds) if k == kind):
        flagged = bad["anomaly_map"][index, 0] >= threshold
        mask = frames.masks[index]
        recalls.append(flagged[mask].mean())
        # Smoothing (sigma 4 px) spreads the response: "near" is within 3 sigma of a painted pixel.
        near.append(flagged[ndimage.distance_transform_edt(~mask) <= 12].sum() / flagged.sum())
    assert np.mean(recalls) >= 0.7, recalls
    assert np.median(recalls) >= 0.5, recalls
    assert min(recalls) > 0.0, recalls
    assert min(near) >= 0.9, near


def test_anomaly_map_flags_under_one_percent_when_frames_good(built: Built, outputs: dict) -> None:
    threshold = _manifest(built.components[0])["decision"]["pixel"]["threshold"]
    good, _ = outputs[demo.SEGMENTATION_NAME]
    flagged = (good["anomaly_map"] >= threshold).mean(axis=(1, 2, 3))
    assert flagged.max() < 0.01


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_scores_each_frame_alike_when_batched(name: str, built: Built, frames: Frames) -> None:
    batch = frames.defective[:3]
    together = _run(built.models_dir / name, batch)["score"]
    alone = np.concatenate([_run(built.models_dir / name, batch[i : i + 1])["score"] for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5)


def test_build_keeps_files_when_cached_and_rewrites_when_forced(built: Built, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(built.models_dir, models_dir)
    before = {c.name: _files_state(c) for c in (models_dir / n for n in MODEL_NAMES)}

    components = demo.build_demo_models(models_dir)
    assert {c.name: _files_state(c) for c in components} == before

    components = demo.build_demo_models(models_dir, force=True)
    after = {c.name: _files_state(c) for c in components}
    for name in MODEL_NAMES:
        for file_name in ("model.onnx", "manifest.json"):
            assert after[name][file_name] != before[name][file_name]
        assert _manifest(models_dir / name) == _manifest(built.models_dir / name)  # deterministic fit


def test_build_rebuilds_when_version_marker_stale(built: Built, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    shutil.copytree(built.models_dir, models_dir)
    manifest_path = models_dir / demo.CLASSIFICATION_NAME / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    stale = {**manifest, "demo_version": demo.DEMO_VERSION - 1}
    manifest_path.write_text(json.dumps(stale), encoding="utf-8")
    (models_dir / demo.SEGMENTATION_NAME / "model.onnx").unlink()

    demo.build_demo_models(models_dir)

    for name in MODEL_NAMES:
        assert _manifest(models_dir / name)["demo_version"] == demo.DEMO_VERSION
        assert (models_dir / name / "model.onnx").is_file()


def test_heldout_crops_share_no_pixel_with_training_when_split() -> None:
    pytest.importorskip("skimage", reason="needs the demo extra")
    photo = demo.brick_photo()
    training = demo.training_crops()
    heldout = demo.heldout_crops()
    assert training.shape[1:] == heldout.shape[1:] == (256, 256, 3)
    assert training.dtype == heldout.dtype == np.uint8
    assert len(heldout) >= 20

    def windows(rows: slice) -> dict[bytes, np.ndarray]:
        """The photo's 256x256 windows within these rows, keyed by their first row."""
        return {photo[rows][0, x : x + 256].tobytes(): photo[rows][:, x : x + 256] for x in range(257)}

    def is_window(crop: np.ndarray, among: dict[bytes, np.ndarray]) -> bool:
        match = among.get(np.ascontiguousarray(crop[0]).tobytes())
        return match is not None and np.array_equal(crop, match)

    top, bottom = windows(slice(0, 256)), windows(slice(256, 512))
    assert all(is_window(crop, top) for crop in training)
    for crop in heldout:
        views = (crop, crop[:, ::-1], crop[::-1], crop[::-1, ::-1])
        assert any(is_window(view, bottom) for view in views)


@pytest.mark.parametrize("kind", demo.DEFECT_KINDS)
def test_paint_defect_changes_only_masked_pixels_when_kind_known(kind: str) -> None:
    frame = np.full((256, 256, 3), 110, dtype=np.uint8)
    area_bounds = {
        "scratch": (60 * 1.5, 150 * 4 + 20),
        "hole": (np.pi * 7.5**2, np.pi * 20.5**2),
        "stain": (np.pi * (15 * 0.7) ** 2, np.pi * (35 * 1.3) ** 2),
    }
    for seed in range(20):
        defective, mask = demo.paint_defect(frame, kind, np.random.default_rng(seed))
        assert mask.shape == (256, 256) and mask.dtype == bool
        assert np.array_equal(defective[~mask], frame[~mask])
        assert np.any(defective[mask] != frame[mask], axis=-1).mean() > 0.9
        low, high = area_bounds[kind]
        assert low <= mask.sum() <= high
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    assert np.all(frame == 110)  # the input is left alone
    if kind == "stain":
        assert np.ptp(defective[mask].astype(int), axis=-1).min() > 0  # coloured, not grey


def test_paint_defect_raises_when_kind_unknown() -> None:
    with pytest.raises(ValueError, match="unknown defect kind"):
        demo.paint_defect(np.zeros((256, 256, 3), np.uint8), "dent", np.random.default_rng(0))


def test_write_demo_samples_writes_frames_the_models_judge_right_when_called(
    built: Built, tmp_path: Path
) -> None:
    from PIL import Image

    paths = demo.write_demo_samples(tmp_path / "samples")
    assert [p.name for p in paths] == ["good_1.png", "good_2.png", "scratch.png", "hole.png", "stain.png"]
    images = []
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (256, 256)
            images.append(np.asarray(image))
    for component in built.components:
        threshold = _manifest(component)["decision"]["image"]["threshold"]
        scores = _run(component, np.stack(images))["score"]
        assert np.all(scores[:2] < threshold) and np.all(scores[2:] >= threshold), scores


def test_build_raises_install_hint_when_skimage_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(RuntimeError, match=r"pip install 'edge-agent\[demo\]'"):
        demo.build_demo_models(tmp_path / "models")
    assert not (tmp_path / "models" / demo.SEGMENTATION_NAME / "manifest.json").exists()
