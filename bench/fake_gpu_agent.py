"""Serves like ``edge-agent serve``, but with TensorRT on the fake GPU (for the StartModel rows).

``python -m bench.fake_gpu_agent --socket S --models-dir D --cache-dir C --fake-gpu-memory 8GiB``.
The fake GPU computes with ONNX Runtime on the CPU and builds (and caches) engines as TensorRT
would, so cold starts pay a build and warm starts load from the engine cache.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_gpu_agent")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--models-dir", required=True, action="append")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--fake-gpu-memory", default="8GiB")
    parser.add_argument("--metrics-port", type=int, default=0)
    args = parser.parse_args(argv)

    from prometheus_client import CollectorRegistry

    from edge_agent import logs
    from edge_agent.backends import select_provider
    from edge_agent.config import AgentConfig
    from edge_agent.metrics import AgentMetrics
    from edge_agent.models import ModelManager
    from edge_agent.server import run

    logs.configure("warning", "text")
    config = AgentConfig(socket_path=args.socket, models_dirs=[Path(p) for p in args.models_dir],
                         metrics_port=args.metrics_port, metrics_address="127.0.0.1", backend="tensorrt")
    provider = select_provider("tensorrt", fake_gpu_memory=args.fake_gpu_memory, cache_dir=Path(args.cache_dir))
    manager = ModelManager(config.models_dirs, provider, loader_threads=config.loader_threads)
    metrics = AgentMetrics(CollectorRegistry(), manager, provider) if args.metrics_port else None
    try:
        return run(config, manager, metrics=metrics)
    finally:
        close = getattr(provider, "close", None)
        if close is not None:
            close()


if __name__ == "__main__":
    sys.exit(main())
