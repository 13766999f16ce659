"""What ``python -m bench profile`` runs under py-spy for the in-process pipeline.

``python -m bench.profile_target MODELS_DIR COMPONENT WIDTHxHEIGHT SECONDS`` starts the component
with the agent's own ModelManager, warms it up, then calls what the servicer calls per request
(``frame_from_bytes``, ``runner.detect``, the mask's bytes) for SECONDS inside ``profiled_loop``:
the profile summary keeps only the samples under that function.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.frames import make_frame, parse_size


def profiled_loop(runner: object, width: int, height: int, data: bytes, seconds: float) -> int:
    from edge_agent.imaging import frame_from_bytes

    calls = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        detection = runner.detect(frame_from_bytes(width, height, data))  # type: ignore[attr-defined]
        if detection.mask is not None:
            detection.mask.tobytes()
        calls += 1
    return calls


def main(argv: list[str]) -> int:
    models_dir, component, size, seconds = Path(argv[0]), argv[1], argv[2], float(argv[3])
    from edge_agent.backends import select_provider
    from edge_agent.models import ModelManager, ModelState

    width, height = parse_size(size)
    data = make_frame(width, height).tobytes()
    manager = ModelManager([models_dir], select_provider("onnxruntime", intra_op_threads=0))
    try:
        manager.start(component)
        if manager.wait_for(component, [ModelState.RUNNING, ModelState.FAILED], 300) is not ModelState.RUNNING:
            print(manager.describe(component).status_message, file=sys.stderr)
            return 1
        with manager.serving(component) as runner:
            profiled_loop(runner, width, height, data, 1.0)  # warm-up, inside the marker too: short
            calls = profiled_loop(runner, width, height, data, seconds)
        print(f"{calls} calls in {seconds:.0f} s", file=sys.stderr)
    finally:
        manager.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
