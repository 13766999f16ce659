"""The issue's targets, checked against the rows of this run (met / not met, with the numbers)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.timing import Row

MID_FRAME = "1280x720"
BIG_FRAME = "4096x4096"
SHM_LIMIT = 1.10
INLINE_LIMIT = 1.25
SHM_SPEEDUP = 3.0
PREPROCESS_SPEEDUP = 4.0
THROUGHPUT_SHARE = 0.95


@dataclass(frozen=True)
class Target:
    name: str
    model: str
    frame: str
    measured: float | None
    limit: str
    met: bool | None  # None: not measured in this run
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verdict(self) -> str:
        return "not measured" if self.met is None else "MET" if self.met else "NOT MET"


def _find(rows: list[Row], group: str, name: str, model: str, frame: str) -> Row | None:
    for row in rows:
        if (row.group, row.name, row.model, row.frame) == (group, name, model, frame) and row.status == "ok":
            return row
    return None


def check(rows: list[Row], models: list[str]) -> list[Target]:
    targets: list[Target] = []
    for model in models:
        for transport, limit in (("shm", SHM_LIMIT), ("inline", INLINE_LIMIT)):
            row = _find(rows, "grpc", f"DetectAnomalies {transport}", model, MID_FRAME)
            name = f"{transport} DetectAnomalies {MID_FRAME} <= {limit:.2f} x (ORT floor + naive pre-processing)"
            if row is None or row.ratio is None or row.median is None:
                targets.append(Target(name, model, MID_FRAME, None, f"<= {limit}", None, "row not in this run"))
                continue
            targets.append(Target(name, model, MID_FRAME, row.ratio, f"<= {limit}", row.ratio <= limit,
                                  f"median {row.median:.1f} ms vs floor {row.floor_value:.1f} ms "
                                  f"= {row.ratio:.2f}x"))
        inline = _find(rows, "grpc", "DetectAnomalies inline", model, BIG_FRAME)
        shm = _find(rows, "grpc", "DetectAnomalies shm", model, BIG_FRAME)
        name = f"{BIG_FRAME} by shared memory >= {SHM_SPEEDUP:.0f}x faster end to end than inline"
        if inline is None or shm is None or not inline.median or not shm.median:
            targets.append(Target(name, model, BIG_FRAME, None, f">= {SHM_SPEEDUP}", None, "rows not in this run"))
        else:
            speedup = inline.median / shm.median
            targets.append(Target(name, model, BIG_FRAME, speedup, f">= {SHM_SPEEDUP}", speedup >= SHM_SPEEDUP,
                                  f"inline {inline.median:.0f} ms / shm {shm.median:.0f} ms = {speedup:.2f}x"))
        pre = _find(rows, "pipeline", "pre-process (agent)", model, BIG_FRAME)
        name = f"pre-processing {BIG_FRAME} >= {PREPROCESS_SPEEDUP:.0f}x faster than naive Pillow/numpy"
        if pre is None or not pre.median or not pre.floor_value:
            targets.append(Target(name, model, BIG_FRAME, None, f">= {PREPROCESS_SPEEDUP}", None,
                                  "row not in this run"))
        else:
            speedup = pre.floor_value / pre.median
            targets.append(Target(name, model, BIG_FRAME, speedup, f">= {PREPROCESS_SPEEDUP}",
                                  speedup >= PREPROCESS_SPEEDUP,
                                  f"naive {pre.floor_value:.1f} ms / agent {pre.median:.1f} ms = {speedup:.2f}x"))
        eight = [r for r in rows if r.group == "concurrency" and r.model == model and r.status == "ok"
                 and r.extra.get("clients") == 8]
        name = f"8 clients' throughput >= {THROUGHPUT_SHARE} x best ORT-alone throughput"
        if not eight:
            targets.append(Target(name, model, "-", None, f">= {THROUGHPUT_SHARE}", None, "rows not in this run"))
        for row in eight:
            if row.ratio is None or row.throughput is None:
                targets.append(Target(name, model, row.frame, None, f">= {THROUGHPUT_SHARE}", None,
                                      "ORT-alone throughput not measured"))
                continue
            targets.append(Target(name, model, row.frame, row.ratio, f">= {THROUGHPUT_SHARE}",
                                  row.ratio >= THROUGHPUT_SHARE,
                                  f"{row.throughput:.2f}/s vs ORT best {row.floor_value:.2f}/s "
                                  f"({row.extra.get('ort_best_setting')}) = {row.ratio:.2f}"))
    for name in ("dynamic batching at 8 clients (CPU and fake GPU)",
                 "RESOURCE_EXHAUSTED under overload, p99 bounded"):
        targets.append(Target(name, "-", "-", None, "-", None,
                              "not measured by this suite yet: the agent has no batching/queue bound to measure"))
    return targets
