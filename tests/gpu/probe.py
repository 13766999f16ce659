"""Cached capability probes: is a real GPU (and TensorRT) usable in this process?

Each probe runs once per test session and returns None when the capability is
there, or the reason it is not (the skip message).
"""

from __future__ import annotations

import functools

from edge_agent.errors import EdgeAgentError


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str | None:
    from edge_agent.engines.cuda import open_device

    try:
        device = open_device("auto")
        with device.activate():
            device.driver.mem_get_info()
        device.close()
    except EdgeAgentError as exc:
        return f"no usable CUDA GPU: {exc}"
    return None


@functools.lru_cache(maxsize=1)
def tensorrt_unavailable_reason() -> str | None:
    reason = cuda_unavailable_reason()
    if reason is not None:
        return reason
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not installed ({exc})"
    return None
