"""The floors every row is compared with, measured in the same run.

* ONNX Runtime alone: ``session.run`` on an input tensor prepared beforehand, with the
  session options the agent's CPU backend uses (all graph optimizations, ORT's default threads).
* Naive pre-processing: Pillow's resize straight to the model's input (no reducing gap) and the
  normalization in plain numpy, as a first version of any pipeline would do it.
* ONNX Runtime's best throughput on this machine: a few thread settings and several threads
  calling ``session.run`` on one session; the best one is what the agent's throughput is held to.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from bench.timing import Row, Stats

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "area": Image.Resampling.BOX,
             "nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}


def session_options(intra: int = 0, inter: int = 0, *, parallel: bool = False,
                    spinning: bool | None = None) -> ort.SessionOptions:
    """Session options; ``intra=0`` and no other setting is what the agent's CPU backend uses."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    options.log_severity_level = 3
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def make_session(model_path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), sess_options=options or session_options(),
                                providers=["CPUExecutionProvider"])


@dataclass
class InputSpec:
    """What the bench needs of a manifest's ``input`` (read from the JSON, not the agent's parser)."""

    name: str
    width: int
    height: int
    scale: float
    mean: np.ndarray
    std: np.ndarray
    resize: str

    @classmethod
    def of_component(cls, component_dir: Path) -> InputSpec:
        data: dict[str, Any] = json.loads((component_dir / "manifest.json").read_text())["input"]
        return cls(data.get("name") or "image", int(data["width"]), int(data["height"]),
                   float(data.get("scale", 1 / 255)), np.asarray(data.get("mean", [0, 0, 0]), np.float32),
                   np.asarray(data.get("std", [1, 1, 1]), np.float32), data.get("resize", "bilinear"))


def naive_preprocess(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Pillow resize straight to the input size, then numpy scaling and normalization: (1, 3, H, W)."""
    image = Image.fromarray(frame)
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), _RESAMPLE[spec.resize])
    pixels = np.asarray(image).astype(np.float32) * np.float32(spec.scale)
    pixels = (pixels - spec.mean) / spec.std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis])


@dataclass
class ModelFloor:
    """The floor of one model: a session as the agent configures it, and a prepared input."""

    component_dir: Path
    spec: InputSpec
    session: ort.InferenceSession
    tensor: np.ndarray

    @classmethod
    def load(cls, component_dir: Path, frame: np.ndarray) -> ModelFloor:
        spec = InputSpec.of_component(component_dir)
        session = make_session(component_dir / "model.onnx")
        return cls(component_dir, spec, session, naive_preprocess(frame, spec))

    def run(self) -> None:
        self.session.run(None, {self.spec.name: self.tensor})

    def preprocess(self, frame: np.ndarray) -> Callable[[], np.ndarray]:
        return lambda: naive_preprocess(frame, self.spec)


@dataclass(frozen=True)
class OrtSetting:
    intra: int
    inter: int
    parallel: bool
    spinning: bool | None
    callers: int

    @property
    def label(self) -> str:
        text = f"intra={self.intra or 'default'}"
        if self.parallel:
            text += f" parallel inter={self.inter}"
        if self.spinning is False:
            text += " no-spin"
        return f"{text}, {self.callers} caller{'s' if self.callers > 1 else ''}"


def ort_settings(cores: int) -> list[OrtSetting]:
    """The settings tried: ORT's defaults, one thread per call with as many callers as cores
    (and twice that), all cores per call with concurrent callers, and the parallel executor."""
    settings = [
        OrtSetting(0, 0, False, None, 1),  # the agent's backend: one call at a time, all cores
        OrtSetting(cores, 0, False, False, 1),
        OrtSetting(1, 0, False, None, cores),
        OrtSetting(1, 0, False, None, 2 * cores),
        OrtSetting(0, 0, False, None, cores),
        OrtSetting(0, 0, False, False, cores),
        OrtSetting(1, cores, True, None, 1),
    ]
    unique: list[OrtSetting] = []
    for setting in settings:
        if setting not in unique:
            unique.append(setting)
    return unique


@dataclass
class Throughput:
    setting: OrtSetting
    per_second: float
    latency: Stats


def ort_throughput(model_path: Path, input_name: str, tensor: np.ndarray, setting: OrtSetting, *,
                   runs: int, warmup: int = 2) -> Throughput:
    """``runs`` inferences spread over ``setting.callers`` threads sharing one session."""
    session = make_session(model_path, session_options(setting.intra, setting.inter, parallel=setting.parallel,
                                                       spinning=setting.spinning))
    feeds = {input_name: tensor}
    for _ in range(warmup):
        session.run(None, feeds)
    per_caller = max(1, runs // setting.callers)
    latencies: list[list[float]] = [[] for _ in range(setting.callers)]
    barrier = threading.Barrier(setting.callers + 1)

    def caller(index: int) -> None:
        barrier.wait()
        for _ in range(per_caller):
            t0 = time.perf_counter()
            session.run(None, feeds)
            latencies[index].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(setting.callers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = [x for xs in latencies for x in xs]
    return Throughput(setting, len(flat) / elapsed, Stats.of(flat))


def ort_sweep(model_key: str, model_path: Path, input_name: str, tensor: np.ndarray, *, runs: int,
              floor_ms: float) -> tuple[list[Row], Throughput]:
    """Rows for every setting, and the best throughput."""
    rows = []
    best: Throughput | None = None
    for setting in ort_settings(os.cpu_count() or 1):
        result = ort_throughput(model_path, input_name, tensor, setting, runs=runs)
        row = Row.timed("ort-alone", f"ORT alone, {setting.label}", result.latency, model=model_key,
                        floor="ORT floor", floor_ms=floor_ms)
        row.throughput = result.per_second
        row.extra = {"intra": setting.intra, "inter": setting.inter, "parallel": setting.parallel,
                     "spinning": setting.spinning, "callers": setting.callers}
        rows.append(row)
        if best is None or result.per_second > best.per_second:
            best = result
    assert best is not None
    for row in rows:
        if row.throughput == best.per_second:
            row.note = "best"
    return rows, best
