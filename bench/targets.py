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
BATCHING_GAIN = 1.05
OVERLOAD_P99_LIMIT = 2.0


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
    targets += _batching_targets(rows, models)
    targets += _overload_targets(rows, models)
    return targets


def _batching_targets(rows: list[Row], models: list[str]) -> list[Target]:
    """Batching's effect at 8 clients, per backend: the best variant's throughput over batching off."""
    targets = []
    for model in models:
        for backend in ("cpu", "fake-gpu"):
            name = f"dynamic batching: 8 clients' throughput >= {BATCHING_GAIN} x batching off ({backend})"
            found = [r for r in rows if r.group == "batching" and r.model == model and r.status == "ok"
                     and r.name.endswith(f"({backend})") and r.extra.get("clients") == 8
                     and r.extra.get("batching_on")]
            if not found:
                targets.append(Target(name, model, "-", None, f">= {BATCHING_GAIN}", None,
                                      "no 8-client row with batching on in this run (see the rows' notes)"))
                continue
            best = max(found, key=lambda r: r.ratio or 0.0)
            if best.ratio is None:
                targets.append(Target(name, model, best.frame, None, f">= {BATCHING_GAIN}", None,
                                      "batching off not measured"))
                continue
            targets.append(Target(name, model, best.frame, best.ratio, f">= {BATCHING_GAIN}",
                                  best.ratio >= BATCHING_GAIN,
                                  f"{best.name.split(', ', 1)[1]}: {best.throughput:.1f}/s vs {best.floor} = "
                                  f"{best.ratio:.2f}x; p99 {best.p99:.0f} ms; mean batch "
                                  f"{best.extra.get('mean_batch') or 0:.2f}"))
    return targets


def _overload_targets(rows: list[Row], models: list[str]) -> list[Target]:
    """Under overload, answered calls' p99 stays within 2x of the bound's own p99, refusals come at once."""
    targets = []
    for model in models:
        name = f"overload: answered p99 <= {OVERLOAD_P99_LIMIT:.0f}x the bound's p99 without overload"
        over = next((r for r in rows if r.group == "overload" and r.model == model and r.status == "ok"
                     and r.name.endswith(": answered") and "bound" in r.name and "no bound" not in r.name), None)
        calm = next((r for r in rows if r.group == "overload" and r.model == model and r.status == "ok"
                     and r.name.endswith("back to back")), None)
        refused = next((r for r in rows if r.group == "overload" and r.model == model and r.status == "ok"
                        and r.name.endswith("RESOURCE_EXHAUSTED")), None)
        if over is None or calm is None or not calm.p99 or over.p99 is None:
            targets.append(Target(name, model, "-", None, f"<= {OVERLOAD_P99_LIMIT}", None, "rows not in this run"))
        else:
            share = over.p99 / calm.p99
            targets.append(Target(name, model, over.frame, share, f"<= {OVERLOAD_P99_LIMIT}",
                                  share <= OVERLOAD_P99_LIMIT,
                                  f"p99 {over.p99:.0f} ms under overload vs {calm.p99:.0f} ms at the bound; "
                                  f"{over.extra.get('refused', 0)} calls refused"))
        name = "overload: RESOURCE_EXHAUSTED at once (refusals' median < half the answered median)"
        if refused is None or over is None or over.median is None or refused.median is None:
            targets.append(Target(name, model, "-", None, "< 0.5", None, "no refusal measured in this run"))
        else:
            share = refused.median / over.median
            targets.append(Target(name, model, refused.frame, share, "< 0.5", share < 0.5,
                                  f"refusals median {refused.median:.1f} ms (p99 {refused.p99:.1f} ms) vs answered "
                                  f"median {over.median:.1f} ms"))
    return targets
