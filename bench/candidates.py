"""Candidate implementations, measured side by side with the agent's code on the same inputs.

Nothing here is used by the agent. These are reference versions of the changes BENCHMARKS.md
proposes, so that each proposal comes with a measured gain and a check that it gives the same answer:

* ``box_reduce_preprocess``: pre-processing that never hands the full frame to Pillow. Pillow keeps
  RGB images four bytes a pixel, so wrapping a 4096x4096 frame unpacks 48 MiB into a new 64 MiB
  image before any resizing (most of today's cost at that size). Instead, numpy averages the rows of
  the integer box blocks Pillow's ``reducing_gap`` would reduce (straight from the frame buffer or its
  padded rows); Pillow reduces the columns and resizes only that image, ``fy`` times smaller. Same
  factors as Pillow; rounding the vertical and horizontal means separately keeps the result within
  one grey level of Pillow's.
* ``streamed_reduce``: the same for a shared-memory frame, read with ``preadv`` in blocks of rows into
  one reused buffer (still never mapping the client's segment, so a client that shrinks it cannot
  crash the agent), instead of copying the whole frame into a new array first. Applied to the agent
  (``Frame.row_means``, ``server.shared_memory_frame``): its row now times the agent's own path.
* ``fast_mask``: the anomaly map upscaled bilinearly exactly as Pillow does (same taps and weights, same
  double accumulation rounded to float32), but thresholded without materializing the full-size float
  map: a pixel between two source rows that are both above (or both below) the threshold is above (or
  below) it too, so only the columns that straddle the threshold are interpolated; whole rows of the
  painted mask are copied from a small painted image. Same mask and areas as today.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.config import BenchConfig
from bench.frames import parse_size
from bench.models import ModelSpec
from bench.timing import Row, Stats, sample_paired

# Applied to the agent (edge_agent/imaging.py): the candidates below call its own versions.
from edge_agent.imaging import _REDUCING_GAP as REDUCING_GAP
from edge_agent.imaging import reduce_factors, threshold_mask, vertical_means

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "area": Image.Resampling.BOX,
             "nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}

STREAM_BLOCK_BYTES = 1 << 20  # about 1 MiB of rows per read: stays in cache while it is summed


# -- pre-processing -------------------------------------------------------------------------------


def _resize_reduced(vertical: np.ndarray, width: int, height: int, fx: int, fy: int, target: tuple[int, int],
                    resample: Image.Resampling) -> np.ndarray:
    """Pillow finishes: the horizontal box reduce, then the resize of what remains (Pillow's own box)."""
    image = Image.fromarray(vertical)
    if fx > 1:
        image = image.reduce((fx, 1))
    return np.asarray(image.resize(target, resample, box=(0.0, 0.0, width / fx, height / fy)))


def box_reduce_resize(pixels: np.ndarray, target: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """(H, W, 3) uint8 (rows may be padded) -> (th, tw, 3) uint8, as Pillow's reducing-gap resize.

    The vertical box reduce is numpy's, straight from the frame; Pillow only ever holds an image
    ``fy`` times smaller than the frame. Rounding the vertical and horizontal means separately puts the
    result within one grey level of Pillow's single-step reduce.
    """
    height, width = pixels.shape[:2]
    if (width, height) == target:
        return pixels
    mode = _RESAMPLE[resample]
    fx, fy = reduce_factors(width, height, target)
    if mode == Image.Resampling.NEAREST or fy == 1:  # nothing to gain: Pillow's copy is small already
        image = Image.fromarray(np.ascontiguousarray(pixels))
        return np.asarray(image.resize(target, mode, reducing_gap=None if mode == Image.Resampling.NEAREST
                                       else REDUCING_GAP))
    return _resize_reduced(vertical_means(pixels, fy), width, height, fx, fy, target, mode)


class Normalizer:
    """``(x * scale - mean) / std`` per channel, as one multiply-add, into an NCHW float32 batch of one."""

    def __init__(self, scale: float, mean: np.ndarray, std: np.ndarray) -> None:
        self.gain = (np.float32(scale) / std.astype(np.float32)).astype(np.float32)
        self.bias = (-mean.astype(np.float32) / std.astype(np.float32)).astype(np.float32)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape[:2]
        out = np.empty((1, 3, height, width), np.float32)
        for channel in range(3):
            plane = out[0, channel]
            np.multiply(pixels[:, :, channel], self.gain[channel], out=plane, dtype=np.float32)
            plane += self.bias[channel]
        return out


def box_reduce_preprocess(pixels: np.ndarray, target: tuple[int, int], normalize: Normalizer,
                          resample: str = "bilinear") -> np.ndarray:
    return normalize(box_reduce_resize(pixels, target, resample))


def streamed_reduce(path: str, offset: int, width: int, height: int, stride: int, target: tuple[int, int],
                    buffer: np.ndarray | None = None, resample: str = "bilinear") -> np.ndarray:
    """A shared-memory frame -> resized (th, tw, 3) uint8, read in blocks of rows with ``preadv``
    into ``buffer`` (reused between calls) and reduced block by block."""
    fx, fy = reduce_factors(width, height, target)
    rows_per_block = max(fy, (STREAM_BLOCK_BYTES // stride) // fy * fy)
    if buffer is None or buffer.size < rows_per_block * stride:
        buffer = np.empty(rows_per_block * stride, np.uint8)
    vertical = np.empty((math.ceil(height / fy), width, 3), np.uint8)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start in range(0, height, rows_per_block):
            count = min(rows_per_block, height - start)
            view = memoryview(buffer)[: count * stride]
            done = 0
            while done < view.nbytes:
                got = os.preadv(fd, [view[done:]], offset + start * stride + done)
                if got == 0:
                    raise OSError("the segment shrank while it was read")
                done += got
            block = buffer[: count * stride].reshape(count, stride)[:, : width * 3].reshape(count, width, 3)
            first = start // fy
            vertical_means(block, fy, out=vertical[first: first + math.ceil(count / fy)])
    finally:
        os.close(fd)
    mode = _RESAMPLE[resample]
    if mode == Image.Resampling.NEAREST or fy == 1:
        return np.asarray(Image.fromarray(vertical).resize(target, mode, reducing_gap=None
                                                             if mode == Image.Resampling.NEAREST else REDUCING_GAP))
    return _resize_reduced(vertical, width, height, fx, fy, target, mode)


# -- post-processing ------------------------------------------------------------------------------


# Applied to the agent: its implementation now lives in edge_agent/imaging.py (threshold_mask).
def fast_mask(amap: np.ndarray, width: int, height: int, threshold: float, palette: np.ndarray, *,
              strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(mask (H, W, 3) uint8, pixel counts per class) for a one-channel map, as the agent computes them."""
    mask, counts = threshold_mask(amap, width, height, threshold, palette, strict=strict)
    return mask, np.asarray(counts, dtype=np.int64)


# -- rows -----------------------------------------------------------------------------------------


def candidate_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path,
                   frames: dict[str, np.ndarray]) -> list[Row]:
    from edge_agent.backends import select_provider
    from edge_agent.models import ModelManager, ModelState

    rows: list[Row] = []
    manager = ModelManager([models_dir], select_provider("onnxruntime", intra_op_threads=0))
    try:
        for spec in models:
            manager.start(spec.component)
            if manager.wait_for(spec.component, [ModelState.RUNNING, ModelState.FAILED], 300) is not ModelState.RUNNING:
                continue
            with manager.serving(spec.component) as runner:
                for name, frame in frames.items():
                    rows += _frame_candidates(config, spec, runner, name, frame)
            manager.stop(spec.component)
    finally:
        manager.close()
    return rows


def _frame_candidates(config: BenchConfig, spec: ModelSpec, runner: Any, name: str, frame: np.ndarray) -> list[Row]:
    """Each candidate next to the agent's code it would replace, on one frame."""
    from edge_agent import shm
    from edge_agent.client import OwnedSegment
    from edge_agent.imaging import frame_from_bytes
    from edge_agent.server import shared_memory_frame

    rows = []
    width, height = parse_size(name)
    repeats = config.repeats_for(width, height)
    pre = runner.manifest.input
    target = (pre.width, pre.height)
    normalize = Normalizer(pre.scale, np.asarray(pre.mean), np.asarray(pre.std))
    view = frame_from_bytes(width, height, frame.tobytes())
    pixels = view.array()

    def today_pre() -> np.ndarray:
        return runner.preprocess(view)

    def mine_pre() -> np.ndarray:
        return box_reduce_preprocess(pixels, target, normalize, pre.resize)

    rows.append(_compare("pre-process: numpy box pre-reduce, Pillow on the small image", spec, name, today_pre,
                         mine_pre, config, repeats, _tensor_difference(today_pre(), mine_pre(), normalize)))

    field = "bitmap.shared_memory_handle"
    with OwnedSegment(frame.nbytes, prefix="edge-agent-bench") as segment:
        segment.write(frame)
        path = os.path.join("/dev/shm", segment.name[1:])
        fx, fy = reduce_factors(width, height, target)
        buffer = np.empty(max(fy, (STREAM_BLOCK_BYTES // (width * 3)) // fy * fy) * width * 3, np.uint8)

        def today_shm() -> np.ndarray:  # the agent's own path since the candidate was applied
            handle = shm.check_range(segment.name, 0, segment.size, field)
            return runner.preprocess(shared_memory_frame(width, height, handle, field))

        def mine_shm() -> np.ndarray:
            return normalize(streamed_reduce(path, 0, width, height, width * 3, target, buffer, pre.resize))

        rows.append(_compare("shm frame -> tensor: streamed preadv + box pre-reduce", spec, name, today_shm,
                             mine_shm, config, repeats, _tensor_difference(today_shm(), mine_shm(), normalize)))

    map_name = runner.manifest.outputs.anomaly_map
    if map_name is None or runner.manifest.pixel_threshold is None:
        return rows
    outputs = runner.backend.infer({runner.input_name: runner.preprocess(view)})
    amap = np.asarray(outputs[map_name]).reshape(outputs[map_name].shape[-2:])
    threshold = runner.manifest.pixel_threshold.threshold
    strict = getattr(runner.manifest.pixel_threshold, "compare", ">=") == ">"
    if amap.shape[0] > height or amap.shape[1] > width:
        return rows  # a map larger than the frame is downscaled: not handled by the candidate

    def today_post() -> Any:
        return runner.postprocess(outputs, width, height)

    def mine_post() -> tuple[np.ndarray, np.ndarray]:
        return fast_mask(amap, width, height, threshold, runner.palette, strict=strict)

    detection = today_post()
    mask, counts = mine_post()
    differing = int(np.count_nonzero((mask != detection.mask).any(axis=2)))
    areas = {area.name: area.fraction for area in detection.anomalies}
    mine_area = counts[1] / (width * height)
    today_area = areas.get(runner.class_names[1], 0.0)
    rows.append(_compare("post-process: threshold-aware upscale, row-copied paint", spec, name, today_post, mine_post,
                         config, repeats, f"{differing} mask pixels differ; anomalous area {mine_area:.5f} vs "
                         f"{today_area:.5f} today"))
    return rows


def _compare(name: str, spec: ModelSpec, frame: str, today: Callable[[], object], mine: Callable[[], object],
             config: BenchConfig, repeats: int, difference: str) -> Row:
    mine_s, theirs = sample_paired(mine, {"today": today}, warmup=config.warmup, repeats=repeats,
                                   budget_s=config.row_budget_s)
    today_ms = statistics.median(theirs["today"]) * 1e3
    return Row.timed("candidates", name, Stats.of(mine_s), model=spec.key, frame=frame, floor="agent today",
                     floor_ms=today_ms, note=difference, today_ms=today_ms)


def _tensor_difference(today: np.ndarray, mine: np.ndarray, normalize: Normalizer) -> str:
    if today.shape != mine.shape:
        return f"shape {mine.shape} vs {today.shape} today"
    # In grey levels: divide the normalized difference by the per-channel gain.
    grey = np.abs(today.astype(np.float64) - mine.astype(np.float64)) / np.abs(normalize.gain)[None, :, None, None]
    return f"max {grey.max():.2f} grey levels from today (mean {grey.mean():.3f})"


def thread_setting_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path,
                        frames: dict[str, np.ndarray], floors: dict[str, Any], best: dict[str, Any], workdir: Path,
                        measured: list[Row]) -> list[Row]:
    """The most clients against an agent started with ``EDGE_AGENT_INTRA_OP_THREADS=1`` (a setting,
    not code): one ONNX Runtime thread per inference, so ``cores`` inferences run side by side."""
    from bench.agent import AgentProcess
    from bench.rpc import concurrency_row, with_adjacent_floor

    rows = []
    clients = max(config.clients)
    with AgentProcess(models_dir, workdir, env={"EDGE_AGENT_INTRA_OP_THREADS": "1"}) as agent:
        for spec in models:
            agent.start_model(spec.component)
        for spec in models:
            for name, frame in frames.items():
                if config.concurrency_frames is not None and name not in config.concurrency_frames:
                    continue
                width, height = parse_size(name)
                row = concurrency_row(f"unix://{agent.socket_path}", spec, name, frame, clients,
                                      config.requests_for(width, height), best.get(spec.key))
                with_adjacent_floor([row], floors[spec.key], best.get(spec.key), config.ort_runs)
                row.group = "candidates"
                row.name = f"{row.name}, EDGE_AGENT_INTRA_OP_THREADS=1"
                today = next((r for r in measured if r.group == "concurrency" and r.model == spec.key
                              and r.frame == name and r.extra.get("clients") == clients and r.throughput), None)
                if today is not None:
                    row.note = f"default settings: {today.throughput:.1f}/s"
                    row.extra["default_per_s"] = today.throughput
                rows.append(row)
    return rows
