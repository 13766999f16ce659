"""The memory floor: ONNX Runtime alone in a fresh process, holding and running the same models.

``python -m bench.ort_memory MODEL.onnx [MODEL.onnx ...]`` prints one JSON object: VmRSS and VmHWM
(bytes) after the imports (``idle``), then after loading and running each model in turn
(``1``, ``2``, ...), with the session options the agent's CPU backend uses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence


def _memory() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key.lower()] = int(value.split()[0]) * 1024
    return fields


def main(argv: Sequence[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    import numpy as np
    import onnxruntime as ort

    report = {"idle": _memory()}
    sessions = []
    for index, path in enumerate(paths, start=1):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        sessions.append(session)
        arg = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        feeds = {arg.name: np.random.default_rng(index).random(shape, dtype=np.float32)}
        for _ in range(3):
            session.run(None, feeds)
        report[str(index)] = _memory()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
