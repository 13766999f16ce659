"""Peak resident memory of the agent process: idle, with one model running, with two.

Each state is reached in a fresh ``edge-agent serve`` process and read from /proc/PID/status
(VmHWM, the peak; VmRSS, now). "Running" means started and then serving a few DetectAnomalies
calls of the largest frame of the run, inline and by shared memory, so the peak includes the
buffers a large request needs. The floor is ONNX Runtime alone in a fresh process holding and
running the same models (``bench/ort_memory.py``). With one model selected, "two models" runs
a second copy of it.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.agent import REPO_ROOT, AgentProcess, FrameSender
from bench.config import BenchConfig
from bench.models import ModelSpec
from bench.timing import Row, Stats, ratio_of

MIB = float(1 << 20)
STATES = ("idle", "1 model running", "2 models running")


def memory_rows(config: BenchConfig, models: list[ModelSpec], models_dir: Path, frame_name: str,
                frame: np.ndarray, workdir: Path) -> list[Row]:
    components = [spec.component for spec in models[:2]]
    if len(components) == 1:  # a second running model: a copy of the first under another name
        copy = f"{components[0]}-copy"
        shutil.copytree(models_dir / components[0], models_dir / copy, dirs_exist_ok=True)
        components.append(copy)
    agent_runs: dict[str, list[tuple[int, int]]] = {state: [] for state in STATES}
    floor_runs: dict[str, list[int]] = {state: [] for state in STATES}
    model_files = [str(models_dir / c / "model.onnx") for c in components]
    for _ in range(config.memory_runs):
        with AgentProcess(models_dir, workdir) as agent:
            time.sleep(0.3)
            reading = agent.memory()
            agent_runs[STATES[0]].append((reading.hwm, reading.rss))
            for index, component in enumerate(components, start=1):
                agent.start_model(component)
                for shared in (False, True):
                    with FrameSender(f"unix://{agent.socket_path}", component, frame, shared_memory=shared) as sender:
                        for _ in range(config.memory_calls):
                            sender.detect()
                reading = agent.memory()
                agent_runs[STATES[index]].append((reading.hwm, reading.rss))
        alone = _ort_alone(model_files)
        for index, state in enumerate(STATES):
            floor_runs[state].append(alone["idle" if index == 0 else str(index)]["vmhwm"])
    rows = []
    label = ", ".join(components)
    for state in STATES:
        hwm = [h / MIB for h, _ in agent_runs[state]]
        rss = [r / MIB for _, r in agent_runs[state]]
        floor = statistics.median(floor_runs[state]) / MIB
        stats = Stats.of(hwm)
        rows.append(Row("memory", f"agent peak RSS, {state}", model="+".join(m.key for m in models),
                        frame=frame_name if state != "idle" else "-", unit="MiB", n=stats.n, median=stats.median,
                        p99=stats.p99, floor="ORT alone, same models", floor_value=floor,
                        ratio=ratio_of(stats.median, floor),
                        note=f"VmRSS now {statistics.median(rss):.0f} MiB",
                        extra={"components": label, "vmrss_mib": rss, "vmhwm_mib": hwm,
                               "ort_alone_vmhwm_mib": [v / MIB for v in floor_runs[state]]}))
    return rows


def _ort_alone(model_files: list[str]) -> dict[str, dict[str, int]]:
    output = subprocess.run([sys.executable, "-m", "bench.ort_memory", *model_files], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True, timeout=300)
    return json.loads(output.stdout.strip().splitlines()[-1])
