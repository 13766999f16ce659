"""The agent's pipeline in process, without gRPC: what the agent itself adds to the runtime.

The model is started by the agent's own ``ModelManager`` with the provider ``edge-agent serve
--backend onnxruntime`` uses, so pre-processing, the inference slots and post-processing are the
shipped code. A call here is what the servicer does between reading the request and writing the
reply: wrap the bytes as a frame, ``runner.detect`` (pre-process, infer, decide, upscale and paint
the mask), and turn the mask into bytes for an inline reply.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.baselines import ModelFloor
from bench.config import BenchConfig
from bench.models import ModelSpec
from bench.timing import Row, Stats, sample_paired

START_TIMEOUT_S = 300.0
_PHASES = {"preprocess_ms": "pre", "inference_ms": "infer", "postprocess_ms": "post"}


def pipeline_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path,
                  frames: dict[str, np.ndarray], floors: dict[str, ModelFloor]) -> list[Row]:
    from edge_agent.backends import select_provider
    from edge_agent.imaging import frame_from_bytes
    from edge_agent.models import ModelManager, ModelState

    rows: list[Row] = []
    manager = ModelManager([models_dir], select_provider("onnxruntime", intra_op_threads=0))
    try:
        for spec in models:
            manager.start(spec.component)
            state = manager.wait_for(spec.component, [ModelState.RUNNING, ModelState.FAILED], START_TIMEOUT_S)
            if state is not ModelState.RUNNING:
                reason = manager.describe(spec.component).status_message
                rows.append(Row.unavailable("pipeline", "in-process pipeline", f"model failed: {reason}",
                                            model=spec.key))
                continue
            floor = floors[spec.key]
            with manager.serving(spec.component) as runner:
                for name, frame in frames.items():
                    height, width = frame.shape[:2]
                    data = frame.tobytes()
                    naive = floor.preprocess(frame)
                    repeats, budget = config.repeats_for(width, height), config.row_budget_s
                    frame_view = frame_from_bytes(width, height, data)
                    preprocess = getattr(runner, "preprocess", None)
                    if callable(preprocess):
                        mine, theirs = sample_paired(lambda p=preprocess, f=frame_view: p(f), {"naive": naive},
                                                     warmup=config.warmup, repeats=repeats, budget_s=budget)
                        rows.append(Row.timed("pipeline", "pre-process (agent)", Stats.of(mine), model=spec.key,
                                              frame=name, floor="naive pre-process",
                                              floor_ms=statistics.median(theirs["naive"]) * 1e3))
                    else:
                        rows.append(Row.unavailable("pipeline", "pre-process (agent)",
                                                    "ModelRunner has no preprocess attribute", model=spec.key,
                                                    frame=name))
                    phases: list[Any] = []

                    def detect(r: Any = runner, w: int = width, h: int = height, d: bytes = data,
                               out: list[Any] = phases) -> None:
                        detection = r.detect(frame_from_bytes(w, h, d))
                        out.append(detection.times)
                        if detection.mask is not None:
                            detection.mask.tobytes()

                    mine, theirs = sample_paired(detect, {"ort": floor.run, "naive": naive}, warmup=config.warmup,
                                                 repeats=repeats, budget_s=budget)
                    timed = phases[config.warmup:]
                    breakdown = _phase_medians(timed)
                    floor_ms = (statistics.median(theirs["ort"]) + statistics.median(theirs["naive"])) * 1e3
                    note = " / ".join(f"{short} {breakdown[key]:.1f}" for key, short in _PHASES.items()
                                      if key in breakdown)
                    rows.append(Row.timed("pipeline", "in-process pipeline", Stats.of(mine), model=spec.key,
                                          frame=name, floor="ORT + naive pre", floor_ms=floor_ms,
                                          note=f"phases ms: {note}", phases_ms=breakdown,
                                          ort_floor_ms=statistics.median(theirs["ort"]) * 1e3,
                                          naive_pre_ms=statistics.median(theirs["naive"]) * 1e3))
            manager.stop(spec.component)
    finally:
        manager.close()
    return rows


def _phase_medians(times: list[Any]) -> dict[str, float]:
    if not times:
        return {}
    fields = asdict(times[0]).keys()
    return {f"{key[:-2]}_ms": statistics.median(getattr(t, key) for t in times) * 1e3 for key in fields}
