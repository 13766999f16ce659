"""Choosing the inference engine for this agent.

One provider per agent makes a backend for each model it starts. Engines with
heavy optional dependencies are imported only when chosen.
"""

from __future__ import annotations

import logging

from edge_agent.engines.base import Backend, MemoryInfo
from edge_agent.errors import BackendUnavailableError
from edge_agent.manifest import Manifest

LOGGER = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "onnxruntime")


class OnnxRuntimeProvider:
    """ONNX Runtime's CPU execution provider."""

    kind = "onnxruntime"

    def __init__(self, intra_op_threads: int = 0) -> None:
        self.intra_op_threads = intra_op_threads

    def create(self, manifest: Manifest) -> Backend:
        from edge_agent.engines.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            manifest.model_file, label=manifest.component_dir.name, intra_op_threads=self.intra_op_threads
        )

    def estimate_bytes(self, manifest: Manifest) -> int:
        return manifest.memory_bytes or 0

    def memory_info(self) -> MemoryInfo | None:
        # Host memory is not admission-checked on the CPU backend: the kernel shares it with
        # everything else and a model's footprint is close to its file size.
        return None


def select_provider(name: str, *, intra_op_threads: int = 0) -> OnnxRuntimeProvider:
    """Returns the provider for ``--backend``; ``auto`` picks the best usable one."""
    if name in ("auto", "onnxruntime"):
        provider = OnnxRuntimeProvider(intra_op_threads)
        LOGGER.info("inference backend: %s (CPU)", provider.kind)
        return provider
    raise BackendUnavailableError(
        f"Unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}."
    )
