"""The frames the benchmark sends: the same picture at every size, made once per run."""

from __future__ import annotations

import numpy as np
from PIL import Image

_SEED = 11


def parse_size(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> (1280, 720)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"frame size {text!r} is not WIDTHxHEIGHT (for example 1280x720)")
    return int(width), int(height)


def label(width: int, height: int) -> str:
    return f"{width}x{height}"


def _base_picture() -> np.ndarray:
    """A 256x256 RGB picture: a held-out brick crop with a painted defect when the demo extra is
    installed (so the demo model sees what it was fitted for), else a synthetic texture."""
    try:
        from edge_agent import demo

        crop = demo.heldout_crops(flips=False)[0]
        frame, _ = demo.paint_defect(crop, "stain", np.random.default_rng(_SEED))
        return np.ascontiguousarray(frame, dtype=np.uint8)
    except Exception:  # scikit-image missing: any texture will do for timings
        rng = np.random.default_rng(_SEED)
        yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
        base = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
        noise = rng.normal(0, 12, (256, 256, 3))
        return np.clip(base[..., None] + noise, 0, 255).astype(np.uint8)


def make_frame(width: int, height: int) -> np.ndarray:
    """The benchmark picture at ``width`` x ``height``: (H, W, 3) uint8, C-contiguous, with
    per-pixel noise so no two pixels of an upscaled frame are exactly alike."""
    base = Image.fromarray(_base_picture())
    picture = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    noise = np.random.default_rng(_SEED).integers(-6, 7, size=picture.shape, dtype=np.int16)
    return np.ascontiguousarray(np.clip(picture + noise, 0, 255).astype(np.uint8))
