"""The backend interface every inference engine implements.

Template-method style: :class:`Backend` owns the invariants (state checks,
feed validation, timing, logging) in its public ``load``/``infer``/``unload``;
each engine implements only the ``_load_impl``/``_infer_impl``/``_unload_impl``
hooks. A backend is cheap to construct and loads late; a second ``load`` or
``unload`` is harmless, and backends work as context managers.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.errors import InferenceError, InvalidArgumentError, ModelLoadError

LOGGER = logging.getLogger(__name__)

Dim = int | str | None  # a static size, or a symbolic / unknown one


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and element type of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def accepts(self, array: np.ndarray) -> bool:
        if array.dtype != self.dtype or array.ndim != len(self.shape):
            return False
        return all(not isinstance(d, int) or d == n for d, n in zip(self.shape, array.shape, strict=True))


@dataclass(frozen=True)
class LoadReport:
    """What a load did: where the model came from and what it holds."""

    source: str  # e.g. "onnxruntime", "engine-built", "engine-cache"
    memory_bytes: int  # device (or host, for CPU engines) memory the loaded model holds
    seconds: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class MemoryInfo:
    """Memory of the device models load into, as the admission check and metrics see it."""

    total_bytes: int
    free_bytes: int
    source: str  # which figure "free" is, e.g. "cudaMemGetInfo" or "MemAvailable (/proc/meminfo)"


class Backend(ABC):
    """One loaded model on one inference engine."""

    #: Short engine name, shown in logs and DescribeModel.
    kind: str = "base"
    #: How many inferences may run at once on this backend; more requests queue.
    max_concurrency: int = 1

    @property
    def max_batch_size(self) -> int | None:
        """The largest batch the loaded engine takes on a dynamic batch dimension (None: no limit)."""
        return None

    def __init__(self, model_path: Path, *, label: str | None = None) -> None:
        self.model_path = Path(model_path)
        self.label = label or self.model_path.parent.name
        self._lock = threading.Lock()  # guards _loaded and the load/unload transition
        self._loaded = False
        self._inputs: tuple[TensorInfo, ...] = ()
        self._outputs: tuple[TensorInfo, ...] = ()
        self.report: LoadReport | None = None

    # -- public API (invariants live here) -------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        self._require_loaded()
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        self._require_loaded()
        return self._outputs

    def load(self) -> LoadReport:
        """Loads the model; a second call returns the first load's report."""
        with self._lock:
            if self._loaded and self.report is not None:
                return self.report
            if not self.model_path.is_file():
                raise ModelLoadError(
                    f"{self.model_path}: model file not found. Put the model file there or fix "
                    "model_file in the manifest."
                )
            started = time.perf_counter()
            report = self._load_impl()
            self._inputs, self._outputs = self._describe_io()
            seconds = time.perf_counter() - started
            self.report = LoadReport(report.source, report.memory_bytes, seconds, report.detail)
            self._loaded = True
        LOGGER.debug("%s: loaded %s with %s in %.3f s", self.label, self.model_path.name, self.kind, seconds)
        return self.report

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model on named input arrays and returns every output by name."""
        self._require_loaded()
        expected = {t.name: t for t in self._inputs}
        if set(feeds) != set(expected):
            raise InvalidArgumentError(
                f"model {self.label}: inputs {sorted(feeds)} given, the model takes {sorted(expected)}."
            )
        for name, array in feeds.items():
            if not expected[name].accepts(array):
                raise InvalidArgumentError(
                    f"model {self.label}: input {name!r} is {array.dtype}{list(array.shape)}, the model takes "
                    f"{expected[name].dtype}{list(expected[name].shape)}."
                )
        outputs = self._infer_impl(feeds)
        missing = [t.name for t in self._outputs if t.name not in outputs]
        if missing:
            raise InferenceError(f"model {self.label}: the engine returned no value for outputs {missing}.")
        return outputs

    def unload(self) -> None:
        """Releases the model; harmless when not loaded."""
        with self._lock:
            if not self._loaded:
                return
            self._loaded = False
            self._unload_impl()
        LOGGER.debug("%s: unloaded (%s)", self.label, self.kind)

    def __enter__(self) -> Backend:
        self.load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unload()

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise InferenceError(f"model {self.label}: the {self.kind} backend is not loaded.")

    # -- hooks for engines ------------------------------------------------------------------

    @abstractmethod
    def _load_impl(self) -> LoadReport:
        """Loads the model; raises ModelLoadError naming the file on failure."""

    @abstractmethod
    def _describe_io(self) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        """Returns (inputs, outputs) of the loaded model."""

    @abstractmethod
    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the loaded model."""

    @abstractmethod
    def _unload_impl(self) -> None:
        """Releases what ``_load_impl`` acquired."""
