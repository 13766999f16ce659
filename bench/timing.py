"""Repeated measurements and the rows they make.

Every number the suite reports is a median and a p99 over repeated runs after
warm-up, next to a floor measured in the same run. With fewer than 100 samples
the p99 (numpy's linear interpolation) is close to the maximum: read it as
"the worst of this run".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MIN_SAMPLES = 3


@dataclass(frozen=True)
class Stats:
    """Summary of samples (seconds, or any other unit)."""

    n: int
    median: float
    p99: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: list[float] | np.ndarray) -> Stats:
        values = np.asarray(samples, dtype=np.float64)
        if values.size == 0:
            raise ValueError("no samples")
        return cls(int(values.size), float(np.median(values)), float(np.percentile(values, 99)),
                   float(values.mean()), float(values.min()), float(values.max()))


def sample(fn: Callable[[], object], *, warmup: int, repeats: int, budget_s: float | None = None) -> list[float]:
    """Calls ``fn`` ``warmup`` times, then times up to ``repeats`` calls (seconds each).

    ``budget_s`` stops the timed calls early once it is spent (never before ``MIN_SAMPLES``),
    so a slow machine shortens a row instead of the whole run overrunning.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if budget_s is not None and len(samples) >= MIN_SAMPLES and time.perf_counter() - started > budget_s:
            break
    return samples


def measure(fn: Callable[[], object], *, warmup: int, repeats: int, budget_s: float | None = None) -> Stats:
    return Stats.of(sample(fn, warmup=warmup, repeats=repeats, budget_s=budget_s))


def sample_paired(subject: Callable[[], object], floors: dict[str, Callable[[], object]], *, warmup: int,
                  repeats: int, budget_s: float | None = None) -> tuple[list[float], dict[str, list[float]]]:
    """Times ``subject`` and each floor in turn (floor, floor, ..., subject; repeat).

    On a shared, noisy machine a floor measured minutes earlier is a different machine; taken
    round-robin, the subject and its floors see the same load, so their ratio holds still.
    """
    for _ in range(warmup):
        for fn in floors.values():
            fn()
        subject()
    mine: list[float] = []
    theirs: dict[str, list[float]] = {name: [] for name in floors}
    started = time.perf_counter()
    for _ in range(repeats):
        for name, fn in floors.items():
            t0 = time.perf_counter()
            fn()
            theirs[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subject()
        mine.append(time.perf_counter() - t0)
        if budget_s is not None and len(mine) >= MIN_SAMPLES and time.perf_counter() - started > budget_s:
            break
    return mine, theirs


@dataclass
class Row:
    """One line of the table.

    ``median``/``p99`` are in ``unit`` (ms for latencies, s for model starts, MiB for memory).
    ``ratio`` is ``median / floor_value``: how many floors the row costs.
    """

    group: str
    name: str
    model: str = "-"
    frame: str = "-"
    unit: str = "ms"
    n: int = 0
    median: float | None = None
    p99: float | None = None
    floor: str = ""  # what the ratio divides by
    floor_value: float | None = None
    ratio: float | None = None
    throughput: float | None = None  # requests per second, for throughput rows
    note: str = ""
    status: str = "ok"  # or "n/a (why)"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def timed(cls, group: str, name: str, stats: Stats, *, model: str = "-", frame: str = "-",
              floor: str = "", floor_ms: float | None = None, note: str = "", **extra: Any) -> Row:
        """A latency row from seconds-based stats, reported in milliseconds."""
        median, p99 = stats.median * 1e3, stats.p99 * 1e3
        return cls(group, name, model, frame, "ms", stats.n, median, p99, floor, floor_ms,
                   ratio_of(median, floor_ms), note=note, extra=extra)

    @classmethod
    def unavailable(cls, group: str, name: str, why: str, *, model: str = "-", frame: str = "-",
                    unit: str = "ms") -> Row:
        return cls(group, name, model, frame, unit, status=f"n/a ({why})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_of(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or not floor > 0 or not math.isfinite(value):
        return None
    return value / floor
