"""StartModel to RUNNING, cold and warm, on the CPU and on the fake GPU.

Cold: the first StartModel in a freshly started agent process (and, on the fake GPU, an empty
engine cache: the engine is built). Warm: StopModel then StartModel in the same agent (ONNX Runtime
has no session cache, so on the CPU this is a process already warmed up; on the fake GPU the engine
comes from the cache). Timed by the client: StartModel, then DescribeModel every 2 ms until RUNNING.
The floor is ONNX Runtime creating the session and running it once, as the agent's warm-up does.
"""

from __future__ import annotations

import logging
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.agent import AgentProcess
from bench.baselines import ModelFloor, make_session
from bench.config import BenchConfig
from bench.models import ModelSpec
from bench.timing import Row, Stats, measure

BACKENDS = ("cpu", "fake-gpu")


def fake_gpu_unavailable() -> str | None:
    """Why the fake GPU cannot be used here, or None when it can."""
    backends_logger = logging.getLogger("edge_agent.backends")
    disabled, backends_logger.disabled = backends_logger.disabled, True  # the probe's "FAKE GPU" warning
    try:
        from edge_agent.backends import select_provider

        with tempfile.TemporaryDirectory(prefix="eab-probe-") as cache:
            provider = select_provider("tensorrt", fake_gpu_memory="1GiB", cache_dir=Path(cache))
            close = getattr(provider, "close", None)
            if close is not None:
                close()
    except Exception as exc:  # not merged yet, or broken: the rows say so instead of failing the run
        return f"fake GPU not available: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    finally:
        backends_logger.disabled = disabled
    return None


def startup_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path, floors: dict[str, ModelFloor],
                 workdir: Path) -> list[Row]:
    rows: list[Row] = []
    floor_ms: dict[str, float] = {}
    for spec in models:
        floor = floors[spec.key]
        model_path = floor.component_dir / "model.onnx"

        def create_and_run(path: Path = model_path, f: ModelFloor = floor) -> None:
            session = make_session(path)
            session.run(None, {f.spec.name: f.tensor})

        stats = measure(create_and_run, warmup=1, repeats=max(3, config.warm_starts))
        floor_ms[spec.key] = stats.median * 1e3
        rows.append(Row.timed("startup", "ORT session create + 1 run (floor)", stats, model=spec.key,
                              floor="itself", floor_ms=floor_ms[spec.key]))
    backends = ["cpu"]
    unavailable = None if config.fake_gpu else "fake GPU skipped (--no-fake-gpu)"
    if unavailable is None:
        unavailable = fake_gpu_unavailable()
    if unavailable is None:
        backends.append("fake-gpu")
    for backend in BACKENDS:
        if backend not in backends:
            for spec in models:
                for kind in ("cold", "warm"):
                    rows.append(Row.unavailable("startup", f"StartModel->RUNNING {kind} ({backend})",
                                                unavailable or "not measured", model=spec.key))
            continue
        try:
            rows += _measure_backend(config, models, models_dir, workdir, backend, floor_ms)
        except Exception as exc:
            if backend == "cpu":
                raise
            why = f"fake GPU not available: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            for spec in models:
                for kind in ("cold", "warm"):
                    rows.append(Row.unavailable("startup", f"StartModel->RUNNING {kind} ({backend})", why,
                                                model=spec.key))
    return rows


def _measure_backend(config: BenchConfig, models: list[ModelSpec], models_dir: Path, workdir: Path, backend: str,
                     floor_ms: dict[str, float]) -> list[Row]:
    cold: dict[str, list[float]] = {spec.key: [] for spec in models}
    warm: dict[str, list[float]] = {spec.key: [] for spec in models}
    messages: dict[tuple[str, str], list[str]] = {(spec.key, kind): [] for spec in models for kind in ("cold", "warm")}
    for attempt in range(config.cold_starts):
        cache = workdir / f"engine-cache-{attempt}" if backend == "fake-gpu" else None
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
        with AgentProcess(models_dir, workdir, fake_gpu_cache=cache) as agent:
            time.sleep(0.2)  # let the fresh process settle (imports, thread pools) before timing
            for spec in models:
                seconds, message = agent.start_model(spec.component)
                cold[spec.key].append(seconds)
                messages[spec.key, "cold"].append(message)
            for spec in models:
                for _ in range(config.warm_starts):
                    agent.stop_model(spec.component)
                    seconds, message = agent.start_model(spec.component)
                    warm[spec.key].append(seconds)
                    messages[spec.key, "warm"].append(message)
    rows = []
    for spec in models:
        for kind, samples in (("cold", cold[spec.key]), ("warm", warm[spec.key])):
            said = messages[spec.key, kind]
            rows.append(Row.timed("startup", f"StartModel->RUNNING {kind} ({backend})", Stats.of(samples),
                                  model=spec.key, floor="ORT create+run", floor_ms=floor_ms[spec.key],
                                  note=_source(said[-1]), status_message=said[-1],
                                  agent_reported_s=statistics.median(_reported(m) for m in said)))
    return rows


def _source(message: str) -> str:
    """Where the loaded model came from, from the status message ("... from engine-cache) ...")."""
    backend = re.search(r"backend ([\w-]+)", message)
    source = re.search(r"from ([\w-]+)\)", message) or re.search(r"\(([\w-]+)\), loaded", message)
    if backend or source:
        return ", ".join(m.group(1) for m in (backend, source) if m)
    return message[:60]


def _reported(message: str) -> float:
    try:
        return float(message.rsplit("loaded in ", 1)[1].split()[0])
    except (IndexError, ValueError):
        return float("nan")
