"""Dynamic batching and overload, against agents running as their own processes.

Batching: the same model served as several components that differ only in their manifest's
``batching`` (off, up to 4, up to 8, up to 8 with a 2 ms queue delay), on the CPU and on the fake
GPU. Eight clients (each with its own connection and segments, frames by shared memory) call one
component at a time; the variants are measured in turn, in several rounds (each round in another
order), so a noisy machine shifts them alike. Each row's floor is the same model with batching off,
measured in the same rounds: the ratio is throughput with batching / throughput without (higher is
better). The note gives the mean batch the agent formed (its ``edge_agent_detect_batch_size``
histogram) and what its status says about batching: a model that cannot batch is served one image
at a time whatever its manifest asks, and its rows measure nothing but noise.

Overload: more calls than the agent holds per model (``--max-requests-per-model``). First as many
clients as the bound call back to back: the most the bound lets in, never refused (the floor).
Then more clients than the bound, each calling at a fixed rate as a camera does, together offering
three times the throughput just measured; a call that is refused (RESOURCE_EXHAUSTED) or answered
late is followed by the next frame at the next tick. Rows: the answered calls' latency, the
refusals' latency, and the same offered load against an agent whose bound is out of reach
(requests queue instead).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.agent import AgentProcess, FrameSender, free_port
from bench.config import BenchConfig
from bench.models import ModelSpec
from bench.startup import fake_gpu_unavailable
from bench.timing import Row, Stats, ratio_of

# (row label, component suffix, the manifest's "batching")
VARIANTS: tuple[tuple[str, str, object], ...] = (
    ("batching off", "b-off", False),
    ("batching up to 4", "b-4", {"max_batch": 4, "max_queue_delay_ms": 0}),
    ("batching up to 8", "b-8", {"max_batch": 8, "max_queue_delay_ms": 0}),
    ("batching up to 8, 2 ms delay", "b-8d2", {"max_batch": 8, "max_queue_delay_ms": 2}),
)
UNREACHABLE_BOUND = 1000
OVERLOAD_FACTOR = 3.0  # offered calls per second, in multiples of what the bound's clients get answered


@dataclass
class Load:
    """What a set of clients got: latencies (s) of answered and refused calls, and the wall time."""

    answered: list[float]
    refused: list[float]
    seconds: float

    def merge(self, other: Load) -> Load:
        return Load(self.answered + other.answered, self.refused + other.refused, self.seconds + other.seconds)

    @property
    def per_second(self) -> float:
        return len(self.answered) / self.seconds


def run_clients(address: str, component: str, frame: np.ndarray, clients: int, *, requests: int | None = None,
                seconds: float | None = None, period_s: float | None = None) -> Load:
    """``clients`` callers, each making ``requests`` calls or calling for ``seconds``.

    Without ``period_s`` each client calls back to back. With it, each calls once per period (a
    camera's frame rate, phases spread over the period), skipping the ticks that passed while a
    call was out; a refused call is simply not retried.
    """
    senders = [FrameSender(address, component, frame, shared_memory=True, separate_connection=True)
               for _ in range(clients)]
    answered: list[list[float]] = [[] for _ in senders]
    refused: list[list[float]] = [[] for _ in senders]
    errors: list[BaseException] = []
    try:
        for sender in senders:  # connect and warm each client
            sender.detect()
        barrier = threading.Barrier(clients + 1)
        start = [0.0]

        def client(index: int) -> None:
            barrier.wait()
            try:
                count = 0
                tick = start[0] + (period_s or 0.0) * index / clients
                end = start[0] + (seconds or 0.0)
                while (requests is not None and count < requests) or (
                        requests is None and time.perf_counter() < end):
                    if period_s is not None:
                        now = time.perf_counter()
                        if tick > now:
                            time.sleep(tick - now)
                        tick += period_s * max(1, math.ceil((time.perf_counter() - tick) / period_s))
                    count += 1
                    t0 = time.perf_counter()
                    try:
                        senders[index].detect()
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        refused[index].append(time.perf_counter() - t0)
                        continue
                    answered[index].append(time.perf_counter() - t0)
            except BaseException as exc:  # reported below, after every thread has finished
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        start[0] = time.perf_counter()
        barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start[0]
    finally:
        for sender in senders:
            sender.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed; first: {errors[0]!r}")
    return Load([x for xs in answered for x in xs], [x for xs in refused for x in xs], elapsed)


def write_variants(models_dir: Path, models: list[ModelSpec], target: Path) -> dict[tuple[str, str], str]:
    """Copies each component once per batching variant; returns (model key, suffix) -> component name."""
    names = {}
    for spec in models:
        source = models_dir / spec.component
        for _label, suffix, batching in VARIANTS:
            name = f"{spec.component}--{suffix}"
            directory = target / name
            if directory.exists():
                shutil.rmtree(directory)
            shutil.copytree(source, directory)
            manifest = json.loads((directory / "manifest.json").read_text())
            manifest["batching"] = batching
            (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            names[spec.key, suffix] = name
    return names


def batching_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path, frames: dict[str, np.ndarray],
                  workdir: Path) -> list[Row]:
    variants_dir = workdir / "batching-models"
    names = write_variants(models_dir, models, variants_dir)
    unavailable = None if config.fake_gpu else "fake GPU skipped (--no-fake-gpu)"
    if unavailable is None:
        unavailable = fake_gpu_unavailable()
    rows: list[Row] = []
    for backend in ("cpu", "fake-gpu"):
        if backend == "fake-gpu" and unavailable is not None:
            rows += [Row.unavailable("batching", f"{config.batching_clients} clients, {label} ({backend})",
                                     unavailable, model=spec.key) for spec in models for label, _, _ in VARIANTS]
            continue
        cache = workdir / "batching-engine-cache" if backend == "fake-gpu" else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        with AgentProcess(variants_dir, workdir, fake_gpu_cache=cache, metrics_port=free_port()) as agent:
            address = f"unix://{agent.socket_path}"
            for name in names.values():
                agent.start_model(name)
            for spec in models:
                for frame_name in config.batching_frames:
                    rows += _variant_rows(config, address, spec, frame_name, frames[frame_name], names, backend,
                                          agent)
    return rows


def _variant_rows(config: BenchConfig, address: str, spec: ModelSpec, frame_name: str, frame: np.ndarray,
                  names: dict[tuple[str, str], str], backend: str, agent: AgentProcess) -> list[Row]:
    clients = config.batching_clients
    loads: dict[str, Load] = {}
    before = _batch_sizes(agent)
    for round_index in range(config.batching_rounds):
        shift = round_index % len(VARIANTS)
        for _label, suffix, _batching in VARIANTS[shift:] + VARIANTS[:shift]:
            load = run_clients(address, names[spec.key, suffix], frame, clients,
                               requests=config.batching_requests)
            loads[suffix] = loads[suffix].merge(load) if suffix in loads else load
    after = _batch_sizes(agent)
    off = loads["b-off"].per_second
    rows = []
    for label, suffix, batching in VARIANTS:
        load = loads[suffix]
        name = names[spec.key, suffix]
        status = _status(agent, name)
        effective = _batching_said(status)
        count = after.get(name, (0.0, 0.0))[0] - before.get(name, (0.0, 0.0))[0]
        total = after.get(name, (0.0, 0.0))[1] - before.get(name, (0.0, 0.0))[1]
        mean_batch = total / count if count else None
        note = f"{effective}; mean batch {mean_batch:.2f}" if mean_batch else effective
        row = Row.timed("batching", f"{clients} clients, {label} ({backend})", Stats.of(load.answered),
                        model=spec.key, frame=frame_name, floor=f"batching off {off:.1f}/s", note=note,
                        clients=clients, requests=len(load.answered), seconds=load.seconds, batching=batching,
                        batching_on=effective.startswith("on"), mean_batch=mean_batch, status_message=status)
        row.throughput = load.per_second
        row.floor_value = off
        row.ratio = ratio_of(load.per_second, off)
        rows.append(row)
    return rows


def _batch_sizes(agent: AgentProcess) -> dict[str, tuple[float, float]]:
    """(count, sum) of each component's batch-size histogram (calls, and images in their batches)."""
    counts = agent.metric_samples("edge_agent_detect_batch_size_count")
    sums = agent.metric_samples("edge_agent_detect_batch_size_sum")
    result = {}
    for labels, count in counts.items():
        component = dict(labels).get("model_component", "")
        result[component] = (count, sums.get(labels, 0.0))
    return result


def _batching_said(status: str) -> str:
    """What the model's status says about batching: "on, up to N" or "off (why)"."""
    if "Dynamic batching up to " in status:
        return "on, up to " + status.split("Dynamic batching up to ", 1)[1].split()[0]
    if "Dynamic batching off" in status:
        why = status.split("Dynamic batching off", 1)[1].lstrip(":( ").rstrip(").")
        return f"off ({why[:80]})"
    return "off (not said)"


def _status(agent: AgentProcess, component: str) -> str:
    import edge_agent_pb2 as pb2

    assert agent.stub is not None
    request = pb2.DescribeModelRequest(model_component=component)
    return agent.stub.DescribeModel(request, timeout=30).model_description.status_message


def overload_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path, frames: dict[str, np.ndarray],
                  workdir: Path) -> list[Row]:
    bound = config.overload_bound
    clients = config.overload_clients
    rows: list[Row] = []
    for spec in models:
        for frame_name in config.batching_frames:
            frame = frames[frame_name]
            with AgentProcess(models_dir, workdir, extra_args=("--max-requests-per-model", str(bound))) as agent:
                address = f"unix://{agent.socket_path}"
                agent.start_model(spec.component)
                calm = run_clients(address, spec.component, frame, bound, seconds=config.overload_seconds)
                offered = OVERLOAD_FACTOR * calm.per_second
                period = clients / offered
                over = run_clients(address, spec.component, frame, clients, seconds=config.overload_seconds,
                                   period_s=period)
            with AgentProcess(models_dir, workdir,
                              extra_args=("--max-requests-per-model", str(UNREACHABLE_BOUND))) as agent:
                address = f"unix://{agent.socket_path}"
                agent.start_model(spec.component)
                queued = run_clients(address, spec.component, frame, clients, seconds=config.overload_seconds,
                                     period_s=period)
            rows += _overload_block(spec, frame_name, bound, clients, offered, calm, over, queued)
    return rows


def _overload_block(spec: ModelSpec, frame_name: str, bound: int, clients: int, offered: float, calm: Load,
                    over: Load, queued: Load) -> list[Row]:
    calm_stats = Stats.of(calm.answered)
    calm_ms = calm_stats.median * 1e3
    floor = f"{bound} clients, no overload"
    load = f"{clients} clients offering {offered:.0f}/s"
    rows = []
    calm_row = Row.timed("overload", f"{bound} clients (the bound), back to back", calm_stats, model=spec.key,
                         frame=frame_name, floor="itself", floor_ms=calm_ms, clients=bound,
                         refused=len(calm.refused))
    calm_row.throughput = calm.per_second
    rows.append(calm_row)
    for label, load_result in ((f"{load}, bound {bound}: answered", over),
                               (f"{load}, no bound reached: answered", queued)):
        total = len(load_result.refused) + len(load_result.answered)
        row = Row.timed("overload", label, Stats.of(load_result.answered), model=spec.key, frame=frame_name,
                        floor=floor, floor_ms=calm_ms, clients=clients, offered_per_s=offered,
                        refused=len(load_result.refused), refused_share=len(load_result.refused) / max(1, total),
                        p99_vs_no_overload_p99=ratio_of(Stats.of(load_result.answered).p99, calm_stats.p99),
                        note=f"{len(load_result.refused)} of {total} refused")
        row.throughput = load_result.per_second
        rows.append(row)
        if load_result is over:
            name = f"{load}, bound {bound}: RESOURCE_EXHAUSTED"
            if over.refused:
                rows.append(Row.timed("overload", name, Stats.of(over.refused), model=spec.key, frame=frame_name,
                                      floor=floor, floor_ms=calm_ms, clients=clients, refused=len(over.refused)))
            else:
                rows.append(Row.unavailable("overload", name, "no call was refused", model=spec.key,
                                            frame=frame_name))
    return rows
