"""DetectAnomalies over the unix socket, against an agent running as its own process.

Latency rows time one client call end to end, inline and by shared memory in turn with the floors:
for inline bytes, packing the frame into the request, the call, and the mask out of the reply; for
shared memory, the call and a view of the mask in its segment (the frame is already in its segment:
a camera writes it there instead of into a buffer of its own). Throughput rows run 1, 4 or 8
clients, each with its own connection and segments, and count the calls answered per second."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import numpy as np

from bench.agent import AgentProcess, FrameSender
from bench.baselines import ModelFloor, Throughput, ort_throughput
from bench.config import BenchConfig
from bench.frames import parse_size
from bench.models import ModelSpec
from bench.timing import Row, Stats, ratio_of, sample_paired

TRANSPORTS = {"inline": False, "shm": True}


def rpc_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path, frames: dict[str, np.ndarray],
             floors: dict[str, ModelFloor], best: dict[str, Throughput], workdir: Path) -> list[Row]:
    rows: list[Row] = []
    latency = "grpc" in config.groups
    throughput = "concurrency" in config.groups
    with AgentProcess(models_dir, workdir) as agent:
        address = f"unix://{agent.socket_path}"
        for spec in models:
            agent.start_model(spec.component)
        for spec in models:
            floor = floors[spec.key]
            for name, frame in frames.items():
                width, height = parse_size(name)
                if latency:
                    rows += _latency_rows(config, address, spec, name, frame, floor)
                if throughput and (config.concurrency_frames is None or name in config.concurrency_frames):
                    block = [concurrency_row(address, spec, name, frame, clients, config.requests_for(width, height),
                                             best.get(spec.key)) for clients in config.clients]
                    rows += with_adjacent_floor(block, floor, best.get(spec.key), config.ort_runs)
    return rows


def _latency_rows(config: BenchConfig, address: str, spec: ModelSpec, name: str, frame: np.ndarray,
                  floor: ModelFloor) -> list[Row]:
    """Inline and shared memory, timed round-robin with the floors: a noisy machine shifts them all
    alike, so their ratios (and inline / shm) hold."""
    width, height = parse_size(name)
    with FrameSender(address, spec.component, frame, shared_memory=False) as inline, \
            FrameSender(address, spec.component, frame, shared_memory=True) as shared:
        shm_samples, theirs = sample_paired(
            shared.detect, {"ort": floor.run, "naive": floor.preprocess(frame), "inline": inline.detect},
            warmup=config.warmup, repeats=config.repeats_for(width, height), budget_s=2 * config.row_budget_s)
    ort_ms = statistics.median(theirs["ort"]) * 1e3
    naive_ms = statistics.median(theirs["naive"]) * 1e3
    rows = []
    for transport, samples in (("inline", theirs["inline"]), ("shm", shm_samples)):
        rows.append(Row.timed("grpc", f"DetectAnomalies {transport}", Stats.of(samples), model=spec.key, frame=name,
                              floor="ORT + naive pre", floor_ms=ort_ms + naive_ms, ort_floor_ms=ort_ms,
                              naive_pre_ms=naive_ms))
    return rows


def with_adjacent_floor(rows: list[Row], floor: ModelFloor, best: Throughput | None, runs: int) -> list[Row]:
    """Re-measures ORT's best setting just after a block of throughput rows and holds the rows to the
    mean of that and the sweep's figure: on a shared machine, a floor measured minutes away drifts."""
    if best is None:
        return rows
    again = ort_throughput(floor.component_dir / "model.onnx", floor.spec.name, floor.tensor, best.setting, runs=runs,
                           settle_s=floor.settle_s)
    per_second = (best.per_second + again.per_second) / 2
    for row in rows:
        if row.throughput is None:
            continue
        row.floor_value = per_second
        row.floor = f"ORT best {per_second:.1f}/s"
        row.ratio = ratio_of(row.throughput, per_second)
        row.extra["ort_best_sweep_per_s"] = best.per_second
        row.extra["ort_best_adjacent_per_s"] = again.per_second
    return rows


def concurrency_row(address: str, spec: ModelSpec, frame_name: str, frame: np.ndarray, clients: int,
                    requests: int, best: Throughput | None, transport: str = "shm") -> Row:
    senders = [FrameSender(address, spec.component, frame, shared_memory=TRANSPORTS[transport],
                           separate_connection=True) for _ in range(clients)]
    try:
        for sender in senders:  # connect and warm each client
            sender.detect()
        latencies: list[list[float]] = [[] for _ in senders]
        errors: list[BaseException] = []
        barrier = threading.Barrier(clients + 1)

        def client(index: int) -> None:
            barrier.wait()
            try:
                for _ in range(requests):
                    t0 = time.perf_counter()
                    senders[index].detect()
                    latencies[index].append(time.perf_counter() - t0)
            except BaseException as exc:  # reported below, after every thread has finished
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        for sender in senders:
            sender.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed; first: {errors[0]!r}")
    flat = [x for xs in latencies for x in xs]
    per_second = len(flat) / elapsed
    floor_value = best.per_second if best else None
    row = Row.timed("concurrency", f"{clients} client{'s' if clients > 1 else ''} ({transport})", Stats.of(flat),
                    model=spec.key, frame=frame_name,
                    floor=f"ORT best {floor_value:.1f}/s" if floor_value else "ORT best (not measured)",
                    clients=clients, requests=len(flat), seconds=elapsed,
                    ort_best_setting=best.setting.label if best else None)
    row.throughput = per_second
    row.floor_value = floor_value
    # Throughput rows: the ratio is throughput / ORT's best throughput (higher is better).
    row.ratio = ratio_of(per_second, floor_value)
    return row
