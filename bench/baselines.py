"""The floors every row is compared with, measured in the same run.

* ONNX Runtime alone: ``session.run`` on an input tensor prepared beforehand, with the
  session options the agent's CPU backend uses (all graph optimizations, ORT's default thread
  count, threads that stop spin-waiting when a run returns), and with ORT's own defaults (its
  threads go on spin-waiting for tens of milliseconds after each run).
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
from edge_agent.engines.onnxruntime import SPIN_STOP_CONFIG_KEY

# How a session's threads spin-wait: "agent" during a run only (OnnxRuntimeBackend's default),
# "ort" during and after it (ONNX Runtime's default; serve --ort-spinning), "off" never.
SPIN_MODES = ("agent", "ort", "off")
# Longest wait for a spinning session's threads to go idle after a run (see spin_window_s).
MAX_SPIN_WINDOW_S = 0.5

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "area": Image.Resampling.BOX,
             "nearest": Image.Resampling.NEAREST, "bicubic": Image.Resampling.BICUBIC}


def session_options(intra: int = 0, inter: int = 0, *, parallel: bool = False,
                    spin: str = "agent") -> ort.SessionOptions:
    """Session options; the defaults are what the agent's CPU backend uses (``spin``: SPIN_MODES)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    options.log_severity_level = 3
    if parallel:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    if spin not in SPIN_MODES:
        raise ValueError(f"spin {spin!r}: one of {SPIN_MODES}")
    if spin == "agent":
        options.add_session_config_entry(SPIN_STOP_CONFIG_KEY, "1")
    elif spin == "off":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(model_path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_path), sess_options=options or session_options(),
                                providers=["CPUExecutionProvider"])


def spin_window_s(run: Callable[[], object], *, tries: int = 3, poll_s: float = 0.005) -> float:
    """How long this process keeps burning CPU after ``run`` returns (ORT's threads spin-waiting).

    Anything timed inside that window shares the cores with the spinning threads, so a row
    measured right after a spinning floor would be charged for the floor's spin: callers sleep
    a little longer than this before the next timed call (``ModelFloor.settle_s``). Read off the
    process's CPU time, polled until it stops growing; the longest of ``tries``.
    """
    longest = 0.0
    for _ in range(tries):
        run()
        started = time.perf_counter()
        last = time.process_time()
        while time.perf_counter() - started < MAX_SPIN_WINDOW_S:
            time.sleep(poll_s)
            now = time.process_time()
            if now - last < poll_s / 4:  # less than a quarter of a core: the threads went idle
                break
            last = now
        longest = max(longest, time.perf_counter() - started)
    return longest


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
    """The floor of one model: a session as the agent configures it, one with ORT's own defaults
    (spinning), and a prepared input."""

    component_dir: Path
    spec: InputSpec
    session: ort.InferenceSession
    tensor: np.ndarray
    spinning_session: ort.InferenceSession
    spin_s: float  # how long the spinning session's threads stay busy after a run

    @property
    def settle_s(self) -> float:
        """The sleep after a spinning run that keeps its spin out of the next measurement."""
        return min(MAX_SPIN_WINDOW_S, 1.5 * self.spin_s + 0.005)

    @classmethod
    def load(cls, component_dir: Path, frame: np.ndarray) -> ModelFloor:
        spec = InputSpec.of_component(component_dir)
        session = make_session(component_dir / "model.onnx")
        spinning = make_session(component_dir / "model.onnx", session_options(spin="ort"))
        tensor = naive_preprocess(frame, spec)
        spin_s = spin_window_s(lambda: spinning.run(None, {spec.name: tensor}))
        return cls(component_dir, spec, session, tensor, spinning, spin_s)

    def run(self) -> None:
        self.session.run(None, {self.spec.name: self.tensor})

    def paired_with_spinning(self, *, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
        """The floor and ORT's defaults (spinning) in turn: seconds per run of each.

        The spinning session is timed warm (a first untimed run wakes its threads, as a loop of
        runs keeps them awake) and then left to settle, so its spin is charged to neither.
        """
        feeds = {self.spec.name: self.tensor}
        mine: list[float] = []
        spinning: list[float] = []
        for index in range(warmup + repeats):
            t0 = time.perf_counter()
            self.session.run(None, feeds)
            t1 = time.perf_counter()
            self.spinning_session.run(None, feeds)
            t2 = time.perf_counter()
            self.spinning_session.run(None, feeds)
            t3 = time.perf_counter()
            time.sleep(self.settle_s)
            if index >= warmup:
                mine.append(t1 - t0)
                spinning.append(t3 - t2)
        return mine, spinning

    def preprocess(self, frame: np.ndarray) -> Callable[[], np.ndarray]:
        return lambda: naive_preprocess(frame, self.spec)


@dataclass(frozen=True)
class OrtSetting:
    intra: int
    inter: int
    parallel: bool
    spin: str  # SPIN_MODES
    callers: int

    @property
    def label(self) -> str:
        text = f"intra={self.intra or 'default'}"
        if self.parallel:
            text += f" parallel inter={self.inter}"
        text += {"agent": " spin-stop (the agent's)", "ort": "", "off": " no-spin"}[self.spin]
        return f"{text}, {self.callers} caller{'s' if self.callers > 1 else ''}"


def ort_settings(cores: int) -> list[OrtSetting]:
    """The settings tried: the agent's, ORT's defaults and no spinning at all; one thread per call
    with as many callers as cores (and twice that), all cores per call with concurrent callers, and
    the parallel executor. Spin modes only matter where a session has pool threads (intra != 1)."""
    settings = [
        OrtSetting(0, 0, False, "agent", 1),  # the agent's backend: one call at a time, all cores
        OrtSetting(0, 0, False, "ort", 1),  # ORT's own defaults (its threads go on spin-waiting)
        OrtSetting(0, 0, False, "off", 1),
        OrtSetting(1, 0, False, "ort", cores),
        OrtSetting(1, 0, False, "ort", 2 * cores),
        OrtSetting(0, 0, False, "ort", cores),
        OrtSetting(0, 0, False, "off", cores),
        OrtSetting(1, cores, True, "ort", 1),
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
                   runs: int, warmup: int = 2, settle_s: float = 0.0) -> Throughput:
    """``runs`` inferences spread over ``setting.callers`` threads sharing one session, then
    ``settle_s`` of sleep so that a spinning setting's threads are idle before anything else is timed."""
    session = make_session(model_path, session_options(setting.intra, setting.inter, parallel=setting.parallel,
                                                       spin=setting.spin))
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
    if setting.spin == "ort":
        time.sleep(settle_s)
    flat = [x for xs in latencies for x in xs]
    return Throughput(setting, len(flat) / elapsed, Stats.of(flat))


def ort_sweep(model_key: str, model_path: Path, input_name: str, tensor: np.ndarray, *, runs: int,
              floor_ms: float, settle_s: float = 0.0) -> tuple[list[Row], Throughput]:
    """Rows for every setting, and the best throughput."""
    rows = []
    best: Throughput | None = None
    for setting in ort_settings(os.cpu_count() or 1):
        result = ort_throughput(model_path, input_name, tensor, setting, runs=runs, settle_s=settle_s)
        row = Row.timed("ort-alone", f"ORT alone, {setting.label}", result.latency, model=model_key,
                        floor="ORT floor", floor_ms=floor_ms)
        row.throughput = result.per_second
        row.extra = {"intra": setting.intra, "inter": setting.inter, "parallel": setting.parallel,
                     "spin": setting.spin, "callers": setting.callers}
        rows.append(row)
        if best is None or result.per_second > best.per_second:
            best = result
    assert best is not None
    for row in rows:
        if row.throughput == best.per_second:
            row.note = "best"
    return rows, best
