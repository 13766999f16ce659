"""Regenerate the anomalib test data: train, export and run a real anomalib model.

Runs ONLY in a separate virtual environment holding anomalib (never in the agent's):
with anomalib 2.x it writes ``anomalib-<version>/`` (ONNX export, expected.json, masks/),
with anomalib 1.x the same for that version; both share ``images/``. README.md beside
this script says exactly which environments produced the committed files.

    python tests/data/anomalib/make_data.py            # from the repository root

What it does:

1. builds an anomalib ``Folder`` dataset from scikit-image's brick photo (the demo
   models' photo, via edge_agent/demo.py, loaded by path): 132 defect-free 256x256
   training frames from the photo's top half (windows every 8 px, and their mirror
   images), and 32 good + 32 defective validation/test frames from its bottom half, with
   defects painted by ``edge_agent.demo.paint_defect`` (scratches and holes) and their
   masks;
2. trains PaDiM on the CPU from scratch (timm ``resnet10t`` with random weights, no
   download: ``pre_trained=False``), layer1 features, 20 of them, images resized to
   128x128 by the model's pre-processor; anomalib picks its thresholds and
   normalization statistics on the validation split;
3. exports it with anomalib's own export call, ``Engine.export(model, "onnx")``, into
   ``anomalib-<version>/weights/onnx/`` (the layout anomalib writes). anomalib 1.x predates
   torch 2.9, whose ``torch.onnx.export`` switched to the dynamo exporter; so that the 1.x
   export is what 1.x users got, ``torch.onnx.export`` is called with ``dynamo=False``
   (the TorchScript exporter) under anomalib 1.x. Nothing else is changed;
4. runs anomalib's own inferencer, ``anomalib.deploy.OpenVINOInferencer``, on the
   exported ``model.onnx`` (with ``metadata.json`` for 1.x) for each image in
   ``images/`` (written here when absent, checked pixel for pixel when present), and
   records its ``pred_score`` and ``pred_label`` in ``expected.json`` and a mask at the
   image's size in ``masks/``:

   * anomalib 1.x: the inferencer's ``pred_mask``, which it computes at the model's
     resolution (``anomaly_map >= pixel_threshold``) and resizes to the image with
     ``cv2.resize``;
   * anomalib 2.x: its ``pred_mask`` is at the model's resolution only, so the mask at
     the image's size is its normalized ``anomaly_map`` resized to the image with
     ``torch.nn.functional.interpolate`` (bilinear, half-pixel centres, as the exported
     graph's own Resize) and compared with the graph's pixel threshold (``> 0.5``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

LOGGER = logging.getLogger("make_data")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
IMAGES = HERE / "images"
MODEL_SIZE = (128, 128)
FRAME = 256
SEED = 20240607
# Stains are left out of validation: anomalib picks the F1-best threshold there, and faint
# stains would pull it below many defect-free frames.
VALIDATION_DEFECTS = ("scratch", "hole")
# A score this close to 0.5 would make the comparison fragile (the agent matches anomalib to
# about 1e-5); pick other images then.
MIN_MARGIN = 0.001


def _demo():
    """edge_agent/demo.py, loaded by path: the agent's package needs grpc, this venv has none."""
    spec = importlib.util.spec_from_file_location("edge_agent_demo", REPO / "edge_agent" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def _half(frame: np.ndarray) -> np.ndarray:
    """A camera at half the resolution: 2x2 box average."""
    return np.asarray(Image.fromarray(frame).reduce(2))


def build_dataset(demo, root: Path) -> None:
    photo = demo.brick_photo()
    top, bottom = photo[:FRAME], photo[FRAME:]
    count = 0
    for x in range(0, top.shape[1] - FRAME + 1, 8):
        window = top[:, x:x + FRAME]
        for frame in (window, window[:, ::-1], window[::-1], window[::-1, ::-1]):
            _save(frame, root / "train" / "good" / f"{count:03d}.png")
            count += 1
    rng = np.random.default_rng(SEED)
    count = 0
    for x in range(8, bottom.shape[1] - FRAME + 1, 16):
        window = bottom[:, x:x + FRAME]
        for frame in (window, window[::-1, ::-1]):
            frame = np.ascontiguousarray(frame)
            _save(frame, root / "test" / "good" / f"{count:03d}.png")
            defective, mask = demo.paint_defect(frame, VALIDATION_DEFECTS[count % 2], rng)
            _save(defective, root / "test" / "defect" / f"{count:03d}.png")
            _save(mask.astype(np.uint8) * 255, root / "ground_truth" / "defect" / f"{count:03d}.png")
            count += 1


def comparison_images(demo) -> dict[str, np.ndarray]:
    """The images the agent is compared on: good and defective, at three sizes."""
    photo = demo.brick_photo()
    bottom = photo[FRAME:]
    rng = np.random.default_rng(SEED + 1)

    def window(x: int, width: int = FRAME) -> np.ndarray:
        return np.ascontiguousarray(bottom[:, x:x + width])

    def painted(frame: np.ndarray, kind: str) -> np.ndarray:
        return demo.paint_defect(frame, kind, rng)[0]

    return {
        "good_1.png": window(40),
        "good_2.png": np.ascontiguousarray(window(232)[::-1, ::-1]),
        "good_wide.png": window(100, 320),
        "good_small.png": _half(window(136)),
        "scratch.png": painted(window(72), "scratch"),
        "hole.png": painted(window(184), "hole"),
        "stain.png": painted(window(24), "stain"),
        "stain_wide.png": painted(window(160, 320), "stain"),
        "hole_small.png": _half(painted(window(120), "hole")),
    }


def write_images(demo) -> dict[str, np.ndarray]:
    images = comparison_images(demo)
    for name, pixels in images.items():
        path = IMAGES / name
        if path.exists():
            existing = np.asarray(Image.open(path).convert("RGB"))
            if existing.shape != pixels.shape or not np.array_equal(existing, pixels):
                raise SystemExit(f"{path} differs from what this script makes; delete images/ to regenerate all")
        else:
            _save(pixels, path)
    return images


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    import anomalib
    import lightning
    import openvino
    import torch
    from anomalib.data import Folder
    from anomalib.deploy import OpenVINOInferencer
    from anomalib.engine import Engine
    from anomalib.models import Padim

    version = anomalib.__version__
    major = int(version.split(".")[0])
    out = HERE / f"anomalib-{version}"
    if out.exists():
        shutil.rmtree(out)
    demo = _demo()
    images = write_images(demo)
    work = Path(tempfile.mkdtemp(prefix="anomalib-data-"))
    os.chdir(work)  # the OpenVINO inferencer writes a cache folder into the working directory
    build_dataset(demo, work / "brick")
    lightning.seed_everything(0, workers=True)
    folder_args = dict(name="brick", root=work / "brick", normal_dir="train/good", normal_test_dir="test/good",
                       abnormal_dir="test/defect", mask_dir="ground_truth/defect", train_batch_size=8,
                       eval_batch_size=8, num_workers=0, seed=0)
    model_args = dict(backbone="resnet10t", layers=["layer1"], pre_trained=False, n_features=20)
    if major >= 2:
        datamodule = Folder(**folder_args)
        model = Padim(**model_args, pre_processor=Padim.configure_pre_processor(image_size=MODEL_SIZE))
        exporter = "dynamo (torch.onnx.export default, as anomalib 2.7 requires)"
    else:
        datamodule = Folder(**folder_args, task="segmentation", image_size=MODEL_SIZE)
        model = Padim(**model_args)
        torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)
        exporter = "TorchScript (torch.onnx.export(..., dynamo=False), the exporter anomalib 1.x was written for)"
    engine = Engine(default_root_dir=work / "run", accelerator="cpu", devices=1, logger=False)
    engine.fit(model=model, datamodule=datamodule)
    test_metrics = engine.test(model=model, datamodule=datamodule)[0]
    model_path = Path(engine.export(model=model, export_type="onnx", export_root=out))
    metadata_path = model_path.parent / "metadata.json"
    if major >= 2:
        inferencer = OpenVINOInferencer(path=model_path, device="CPU")
    else:
        inferencer = OpenVINOInferencer(path=model_path, metadata=metadata_path, device="CPU")

    results = {}
    for name, pixels in images.items():
        height, width = pixels.shape[:2]
        result = inferencer.predict(pixels.astype(np.float32) / 255.0)
        if major >= 2:
            score = float(np.asarray(result.pred_score).reshape(-1)[0])
            label = bool(np.asarray(result.pred_label).reshape(-1)[0])
            anomaly_map = torch.from_numpy(np.asarray(result.anomaly_map, dtype=np.float32)).reshape(1, 1, *MODEL_SIZE)
            resized = torch.nn.functional.interpolate(anomaly_map, size=(height, width), mode="bilinear",
                                                      align_corners=False)
            mask = (resized[0, 0] > 0.5).numpy()
            model_mask_pixels = int(np.asarray(result.pred_mask).sum())
        else:
            score = float(result.pred_score)
            label = int(result.pred_label) == 1  # LabelName.ABNORMAL
            mask = np.asarray(result.pred_mask) > 0
            model_mask_pixels = None
        if abs(score - 0.5) < MIN_MARGIN:
            LOGGER.warning("%s: pred_score %.4f is within %s of 0.5", name, score, MIN_MARGIN)
        assert mask.shape == (height, width), (name, mask.shape)
        mask_path = out / "masks" / name
        _save(mask.astype(np.uint8) * 255, mask_path)
        results[name] = {
            "width": width, "height": height, "pred_score": score, "pred_label": label,
            "mask": f"masks/{name}", "mask_pixels": int(mask.sum()),
            **({"model_mask_pixels": model_mask_pixels} if model_mask_pixels is not None else {}),
        }
        LOGGER.info("%-16s %dx%d pred_score %.4f label %s mask %d px", name, width, height, score, label,
                    int(mask.sum()))

    expected = {
        "made_by": "tests/data/anomalib/make_data.py",
        "anomalib": version, "torch": torch.__version__, "openvino": openvino.__version__,
        "python": platform.python_version(), "numpy": np.__version__,
        "model": {"class": "Padim", **model_args, "image_size": list(MODEL_SIZE)},
        "onnx_exporter": exporter,
        "export_files": {p.relative_to(out).as_posix(): _sha256(p) for p in sorted(model_path.parent.iterdir())},
        "test_metrics": {k: round(float(v), 4) for k, v in test_metrics.items()},
        "inferencer": "anomalib.deploy.OpenVINOInferencer(device='CPU') on the exported model.onnx"
                      + (" and metadata.json" if major < 2 else ""),
        "mask_rule": ("the inferencer's pred_mask (anomaly_map >= pixel_threshold at the model's resolution, "
                      "then cv2.resize to the image)" if major < 2 else
                      "the inferencer's anomaly_map resized to the image by torch interpolate (bilinear, "
                      "align_corners=False), > 0.5"),
        "images": results,
    }
    if metadata_path.exists():
        expected["metadata"] = json.loads(metadata_path.read_text())
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    LOGGER.info("wrote %s", out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    main()
