"""ONNX Runtime on the CPU: the backend for machines without a usable GPU."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.engines.base import Backend, LoadReport, TensorInfo
from edge_agent.errors import InferenceError, ModelLoadError

LOGGER = logging.getLogger(__name__)

# ONNX Runtime's element type names -> numpy.
_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


# Loads ONNX Runtime and the model the way the agent does, in a throw-away process.
PROBE_CODE = """
import sys
import onnxruntime as ort
options = ort.SessionOptions()
options.log_severity_level = 3
ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
"""
PROBE_TIMEOUT_S = 300.0
_probed_lock = threading.Lock()  # guards _probed
_probed: set[tuple[str, int, int]] = set()  # (path, size, mtime) of files that loaded in a probe


def probe_in_child(path: Path, *, code: str = PROBE_CODE, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Loads the model once in a child process before the agent loads it in its own.

    A model file that crashes ONNX Runtime (a malformed graph can), or whose load the kernel
    kills for memory, then fails that model instead of taking the agent and every other
    model down. A file that loaded once is not probed again until it changes.

    Raises:
        ModelLoadError: the child died by a signal or ran out of time.
    """
    info = os.stat(path)
    key = (str(Path(path).resolve()), info.st_size, info.st_mtime_ns)
    with _probed_lock:
        if key in _probed:
            return
    try:
        result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                                timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"{path}: loading this model took more than {timeout_s:.0f} s in a test process; the agent did not "
            "load it. Check the model's size, or simplify the graph."
        ) from None
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        cause = " (the kernel's OOM killer sends this when memory runs out)" if name == "SIGKILL" else ""
        raise ModelLoadError(
            f"{path}: ONNX Runtime was killed by {name}{cause} while loading this model in a test process; the "
            "agent did not load it, so it keeps serving the other models. Re-export the model, or free memory."
        )
    if result.returncode == 0:
        with _probed_lock:
            _probed.add(key)
    # A plain failure (an exception in the child) is reported by the in-process load itself.


SPIN_STOP_CONFIG_KEY = "session.force_spinning_stop"


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX file with ONNX Runtime's CPU execution provider."""

    kind = "onnxruntime"

    def __init__(self, model_path: Path, *, label: str | None = None, intra_op_threads: int = 0,
                 spinning: bool = False, isolate_load: bool = False) -> None:
        """``spinning``: keep ONNX Runtime's threads spin-waiting after each run, as ORT does by
        default (the agent stops them when a run returns)."""
        super().__init__(model_path, label=label)
        self._isolate_load = isolate_load
        self._intra_op_threads = intra_op_threads
        self._spinning = spinning
        self._session: ort.InferenceSession | None = None
        # Keep total threads near the core count: with intra-op threads on every core (0, the
        # default) runs go one at a time; with N threads each, cores // N run side by side.
        cores = os.cpu_count() or 1
        self.max_concurrency = max(1, cores // intra_op_threads) if intra_op_threads > 0 else 1

    def _load_impl(self) -> LoadReport:
        if self._isolate_load:
            probe_in_child(self.model_path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._intra_op_threads
        # ONNX Runtime's threads spin-wait between the operators of a run (that keeps a run fast)
        # and, by default, for tens of milliseconds after it too: a core taken from camera capture
        # and from other models on the device. Stop at the end of each run unless asked not to.
        options.add_session_config_entry(SPIN_STOP_CONFIG_KEY, "0" if self._spinning else "1")
        options.log_severity_level = 3  # errors only: the agent reports load problems itself
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises several unrelated types for a bad file
            raise ModelLoadError(
                f"{self.model_path}: ONNX Runtime cannot load this model ({_first_line(exc)}). "
                "Check that it is a complete ONNX file (re-export or copy it again)."
            ) from None
        return LoadReport(source="onnxruntime", memory_bytes=os.path.getsize(self.model_path))

    def _describe_io(self) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        assert self._session is not None
        return (
            tuple(_info(arg, self.model_path) for arg in self._session.get_inputs()),
            tuple(_info(arg, self.model_path) for arg in self._session.get_outputs()),
        )

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session
        assert session is not None
        names = [t.name for t in self._outputs]
        try:
            values = session.run(names, dict(feeds))
        except Exception as exc:  # ORT raises its own unrelated types for a failed run
            raise InferenceError(f"model {self.label}: ONNX Runtime failed to run the model "
                                 f"({_first_line(exc)}).") from None
        return dict(zip(names, values, strict=True))

    def _unload_impl(self) -> None:
        # Requests still holding the session keep it alive until they finish.
        self._session = None


def _info(arg: Any, path: Path) -> TensorInfo:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(
            f"{path}: tensor {arg.name!r} has element type {arg.type}, which the agent does not handle. "
            "Export the model with float32, float16 or uint8 inputs and outputs."
        )
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorInfo(name=arg.name, shape=shape, dtype=np.dtype(dtype))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
