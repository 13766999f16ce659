"""What the agent costs the device's CPU, with ONNX Runtime's threads spinning or not.

A production line's device runs more than the agent: camera capture, the client, often a second
model. ONNX Runtime's threads go on spin-waiting after every run by default (tens of milliseconds
of a core each time); the agent stops them when a run returns unless ``--ort-spinning`` asks it
not to. Two agents, one as shipped and one with ``--ort-spinning``, serve the same models,
measured in turn:

* **one camera at a fixed rate**: one client sends a frame every ``1 / cpu_fps`` seconds (by shared
  memory); the row is the agent process's CPU time per call (user + system, from ``/proc``), next
  to ONNX Runtime alone at the same rate with the agent's session options, in this process. The
  note gives the calls' median latency.
* **two models in turn**: one client alternates between the two models, back to back; each model's
  row is its median latency, next to the same model called alone by the same agent just before.
  A spinning model's threads keep a core busy while the other model runs.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.agent import AgentProcess, FrameSender
from bench.baselines import ModelFloor
from bench.config import BenchConfig
from bench.models import ModelSpec
from bench.timing import Row, Stats

VARIANTS = (("as shipped", ()), ("--ort-spinning", ("--ort-spinning",)))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced(call: object, calls: int, period_s: float) -> list[float]:
    """Calls ``call`` every ``period_s`` (a camera's frame rate); returns each call's latency."""
    latencies = []
    next_at = time.perf_counter()
    for _ in range(calls):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        latencies.append(time.perf_counter() - started)
        next_at += period_s
        time.sleep(max(0.0, next_at - time.perf_counter()))
    return latencies


def cpu_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path, frames: dict[str, np.ndarray],
             floors: dict[str, ModelFloor]) -> list[Row]:
    rows: list[Row] = []
    period_s = 1.0 / config.cpu_fps
    settle_s = max(floor.settle_s for floor in floors.values())
    workdirs = [Path(tempfile.mkdtemp(prefix="eab-cpu-", dir=str(models_dir.parent))) for _ in VARIANTS]
    agents = [AgentProcess(models_dir, workdir, extra_args=args) for workdir, (_, args) in zip(workdirs, VARIANTS,
                                                                                            strict=True)]
    try:
        for agent in agents:
            agent.start()
            for spec in models:
                agent.start_model(spec.component)
        for name, frame in frames.items():
            for spec in models:
                rows += _rate_rows(config, agents, spec, name, frame, floors[spec.key], period_s, settle_s)
            if len(models) >= 2:
                rows += _turn_rows(config, agents, models[:2], name, frame, settle_s)
    finally:
        for agent in agents:
            agent.stop()
    return rows


def _rate_rows(config: BenchConfig, agents: list[AgentProcess], spec: ModelSpec, frame_name: str,
               frame: np.ndarray, floor: ModelFloor, period_s: float, settle_s: float) -> list[Row]:
    """Agent CPU per call at a camera's rate, both variants, rounds in turn with ORT alone."""
    cpu: dict[str, list[float]] = {label: [] for label, _ in VARIANTS}
    latency: dict[str, list[float]] = {label: [] for label, _ in VARIANTS}
    ort_cpu: list[float] = []
    senders = [FrameSender(f"unix://{agent.socket_path}", spec.component, frame, shared_memory=True)
               for agent in agents]
    try:
        for sender in senders:
            for _ in range(config.warmup):
                sender.detect()
        for _ in range(config.cpu_rounds):
            for (label, _), agent, sender in zip(VARIANTS, agents, senders, strict=True):
                time.sleep(settle_s)  # the other agent's threads may still be spinning
                before = process_cpu_s(agent.pid)
                latency[label] += paced(sender.detect, config.cpu_calls, period_s)
                cpu[label].append((process_cpu_s(agent.pid) - before) / config.cpu_calls)
            time.sleep(settle_s)
            before_ort = time.process_time()
            paced(floor.run, config.cpu_calls, period_s)
            ort_cpu.append((time.process_time() - before_ort) / config.cpu_calls)
    finally:
        for sender in senders:
            sender.close()
    floor_ms = statistics.median(ort_cpu) * 1e3
    rows = []
    for label, _ in VARIANTS:
        stats = Stats.of(cpu[label])
        row = Row.timed("cpu", f"1 camera at {config.cpu_fps:g} fps: agent CPU per call, {label}", stats,
                        model=spec.key, frame=frame_name, floor="ORT alone, same rate", floor_ms=floor_ms,
                        note=f"CPU ms per call (median of {stats.n} rounds); calls' latency median "
                             f"{statistics.median(latency[label]) * 1e3:.1f} ms",
                        latency_ms=Stats.of(latency[label]).median * 1e3, calls_per_round=config.cpu_calls)
        row.unit = "ms CPU"
        rows.append(row)
    return rows


def _turn_rows(config: BenchConfig, agents: list[AgentProcess], pair: list[ModelSpec], frame_name: str,
               frame: np.ndarray, settle_s: float) -> list[Row]:
    """Two models called in turn against each called alone, on each variant."""
    rows = []
    for (label, _), agent in zip(VARIANTS, agents, strict=True):
        address = f"unix://{agent.socket_path}"
        senders = [FrameSender(address, spec.component, frame, shared_memory=True) for spec in pair]
        alone: list[list[float]] = [[] for _ in pair]
        turns: list[list[float]] = [[] for _ in pair]
        try:
            time.sleep(settle_s)
            for sender in senders:
                for _ in range(config.warmup):
                    sender.detect()
            for _ in range(config.cpu_rounds):
                for index, sender in enumerate(senders):
                    for _ in range(config.cpu_calls):
                        started = time.perf_counter()
                        sender.detect()
                        alone[index].append(time.perf_counter() - started)
                for _ in range(config.cpu_calls):
                    for index, sender in enumerate(senders):
                        started = time.perf_counter()
                        sender.detect()
                        turns[index].append(time.perf_counter() - started)
        finally:
            for sender in senders:
                sender.close()
        for index, spec in enumerate(pair):
            other = pair[1 - index].key
            rows.append(Row.timed("cpu", f"two models in turn ({spec.key} and {other}), {label}",
                                  Stats.of(turns[index]), model=spec.key, frame=frame_name,
                                  floor=f"{spec.key} alone, same agent",
                                  floor_ms=statistics.median(alone[index]) * 1e3))
    return rows
