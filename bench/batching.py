"""Dynamic batching and overload, against agents running as their own processes.

Batching: the same model served as several components that differ only in their manifest's
``batching`` (off, up to 4, up to 8, up to 8 with a 2 ms queue delay), on the CPU and on the fake
GPU. Eight clients (each with its own connection and segments, frames by shared memory) call one
component at a time; the variants are measured in turn, twice, so a noisy machine shifts them alike.
Each row's floor is the same model with batching off, measured in the same rounds: the ratio is
throughput with batching / throughput without (higher is better).

Overload: more clients than the agent holds per model (``--max-requests-per-model``). Each client
calls back to back for a fixed time and, when refused with RESOURCE_EXHAUSTED, waits 10 ms (the
back-off the error message asks for) before calling again. Rows: the accepted calls' latency next
to the latency of as many clients as the bound without overload (the floor), the refusals' latency,
and the same overload against an agent whose bound is out of reach (requests queue instead).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.agent import AgentProcess, FrameSender
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
ROUNDS = 2
REFUSED_BACKOFF_S = 0.010
UNREACHABLE_BOUND = 1000


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
                seconds: float | None = None) -> Load:
    """``clients`` callers, each ``requests`` calls or calling for ``seconds``; refusals back off 10 ms."""
    senders = [FrameSender(address, component, frame, shared_memory=True, separate_connection=True)
               for _ in range(clients)]
    answered: list[list[float]] = [[] for _ in senders]
    refused: list[list[float]] = [[] for _ in senders]
    errors: list[BaseException] = []
    try:
        for sender in senders:  # connect and warm each client
            sender.detect()
        barrier = threading.Barrier(clients + 1)
        deadline = [0.0]

        def client(index: int) -> None:
            barrier.wait()
            try:
                count = 0
                while (requests is not None and count < requests) or (
                        requests is None and time.perf_counter() < deadline[0]):
                    count += 1
                    t0 = time.perf_counter()
                    try:
                        senders[index].detect()
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        refused[index].append(time.perf_counter() - t0)
                        time.sleep(REFUSED_BACKOFF_S)
                        continue
                    answered[index].append(time.perf_counter() - t0)
            except BaseException as exc:  # reported below, after every thread has finished
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for thread in threads:
            thread.start()
        deadline[0] = time.perf_counter() + (seconds or 0.0)
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
        with AgentProcess(variants_dir, workdir, fake_gpu_cache=cache) as agent:
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
    for _ in range(ROUNDS):
        for _label, suffix, _batching in VARIANTS:
            load = run_clients(address, names[spec.key, suffix], frame, clients,
                               requests=config.batching_requests)
            loads[suffix] = loads[suffix].merge(load) if suffix in loads else load
    off = loads["b-off"].per_second
    rows = []
    for label, suffix, batching in VARIANTS:
        load = loads[suffix]
        row = Row.timed("batching", f"{clients} clients, {label} ({backend})", Stats.of(load.answered),
                        model=spec.key, frame=frame_name, floor=f"batching off {off:.1f}/s",
                        clients=clients, requests=len(load.answered), seconds=load.seconds, batching=batching,
                        status_message=_status(agent, names[spec.key, suffix]))
        row.throughput = load.per_second
        row.floor_value = off
        row.ratio = ratio_of(load.per_second, off)
        rows.append(row)
    return rows


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
                over = run_clients(address, spec.component, frame, clients, seconds=config.overload_seconds)
            with AgentProcess(models_dir, workdir,
                              extra_args=("--max-requests-per-model", str(UNREACHABLE_BOUND))) as agent:
                address = f"unix://{agent.socket_path}"
                agent.start_model(spec.component)
                queued = run_clients(address, spec.component, frame, clients, seconds=config.overload_seconds)
            calm_stats = Stats.of(calm.answered)
            calm_ms = calm_stats.median * 1e3
            floor = f"{bound} clients, no overload"
            calm_row = Row.timed("overload", f"{bound} clients (the bound), no overload", calm_stats, model=spec.key,
                                 frame=frame_name, floor="itself", floor_ms=calm_ms, clients=bound,
                                 refused=len(calm.refused), answered_per_s=calm.per_second)
            calm_row.throughput = calm.per_second
            rows.append(calm_row)
            over_row = Row.timed("overload", f"{clients} clients, bound {bound}: answered", Stats.of(over.answered),
                                 model=spec.key, frame=frame_name, floor=floor, floor_ms=calm_ms, clients=clients,
                                 refused=len(over.refused), refused_share=len(over.refused) /
                                 max(1, len(over.refused) + len(over.answered)),
                                 p99_vs_no_overload_p99=ratio_of(Stats.of(over.answered).p99, calm_stats.p99))
            over_row.throughput = over.per_second
            rows.append(over_row)
            if over.refused:
                rows.append(Row.timed("overload", f"{clients} clients, bound {bound}: RESOURCE_EXHAUSTED",
                                      Stats.of(over.refused), model=spec.key, frame=frame_name, floor=floor,
                                      floor_ms=calm_ms, clients=clients, refused=len(over.refused)))
            else:
                rows.append(Row.unavailable("overload", f"{clients} clients, bound {bound}: RESOURCE_EXHAUSTED",
                                            "no call was refused", model=spec.key, frame=frame_name))
            queued_row = Row.timed("overload", f"{clients} clients, no bound reached: answered",
                                   Stats.of(queued.answered), model=spec.key, frame=frame_name, floor=floor,
                                   floor_ms=calm_ms, clients=clients, refused=len(queued.refused),
                                   p99_vs_no_overload_p99=ratio_of(Stats.of(queued.answered).p99, calm_stats.p99))
            queued_row.throughput = queued.per_second
            rows.append(queued_row)
    return rows
