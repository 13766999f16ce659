"""Choosing the inference engine for this agent.

One provider per agent makes a backend for each model it starts. Engines with
heavy optional dependencies are imported only when chosen: ``auto`` tries
TensorRT (which needs ``tensorrt``, a CUDA binding and a GPU that answers) and
falls back to ONNX Runtime on the CPU, saying why in the log.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edge_agent.engines.base import Backend, MemoryInfo
from edge_agent.errors import BackendUnavailableError, EdgeAgentError
from edge_agent.manifest import Manifest, load_manifest
from edge_agent.models import BackendProvider, ModelManager, ModelState

LOGGER = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "tensorrt", "onnxruntime")


class OnnxRuntimeProvider:
    """ONNX Runtime's CPU execution provider."""

    kind = "onnxruntime"

    def __init__(self, intra_op_threads: int = 0, *, spinning: bool = False, isolate_loads: bool = True) -> None:
        self.intra_op_threads = intra_op_threads
        self.spinning = spinning  # ORT's threads keep spin-waiting after each run (see OnnxRuntimeBackend)
        # Load each new model file once in a child process first: a file that crashes ONNX
        # Runtime then fails its model instead of the agent.
        self.isolate_loads = isolate_loads
        self.description = "ONNX Runtime on the CPU"

    def create(self, manifest: Manifest) -> Backend:
        from edge_agent.engines.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            manifest.model_file, label=manifest.component_dir.name, intra_op_threads=self.intra_op_threads,
            spinning=self.spinning, isolate_load=self.isolate_loads,
        )

    def estimate_bytes(self, manifest: Manifest) -> int:
        return manifest.memory_bytes or 0

    def prepare_runtime(self) -> threading.Thread:
        """Creates ONNX Runtime's environment (thread pools, kernel registry) on a background thread.

        ONNX Runtime builds it on the first session of a process, which otherwise lands on
        the first StartModel after a restart (about a quarter of a second). A one-node model
        in memory is enough.
        """
        thread = threading.Thread(target=_warm_onnxruntime, name="onnxruntime-warm-up", daemon=True)
        thread.start()
        return thread

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def memory_info(self) -> MemoryInfo | None:
        # Host memory is not admission-checked on the CPU backend: the kernel shares it with
        # everything else and a model's footprint is close to its file size.
        return None


def _warm_onnxruntime() -> None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warm-up",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception:  # only a head start: the first StartModel does it anyway, and reports errors
        LOGGER.debug("ONNX Runtime warm-up failed", exc_info=True)


def select_provider(
    name: str,
    *,
    intra_op_threads: int = 0,
    ort_spinning: bool = False,
    cache_dir: Path | None = None,
    fake_gpu_memory: int | str | None = None,
    cuda_binding: str = "auto",
    **tensorrt_options: Any,
) -> BackendProvider:
    """Returns the provider for ``--backend``; ``auto`` picks the best usable one.

    Args:
        name: ``auto``, ``tensorrt`` or ``onnxruntime``.
        intra_op_threads: ONNX Runtime's thread count (0: its default).
        ort_spinning: keep ONNX Runtime's threads spin-waiting after each run (its default; the
            agent stops them when a run returns: the spin costs a core for tens of milliseconds).
        cache_dir: where TensorRT engines are cached (default ``~/.cache/edge-agent/engines``).
        fake_gpu_memory: run TensorRT on the fake GPU with this much memory (``512MiB``).
        cuda_binding: ``auto``, ``cuda-python`` or ``pycuda``.
        tensorrt_options: passed to ``TensorRTProvider`` (``workspace_bytes``, ``contexts_per_model``...).

    Raises:
        BackendUnavailableError: the backend is unknown, or ``tensorrt`` was asked for and is not usable.
    """
    if name not in BACKEND_CHOICES:
        raise BackendUnavailableError(f"Unknown backend {name!r}; choose one of "
                                      f"{', '.join(BACKEND_CHOICES)}.")
    if fake_gpu_memory is not None:
        if name == "onnxruntime":
            raise BackendUnavailableError(
                "--fake-gpu-memory runs TensorRT on a fake GPU, but --backend onnxruntime was asked "
                "for; drop one of the two."
            )
        from edge_agent.engines.tensorrt import fake_gpu_provider

        provider = fake_gpu_provider(fake_gpu_memory, cache_dir, **tensorrt_options)
        LOGGER.warning("inference backend: tensorrt on a FAKE GPU (%s); results come from ONNX "
                       "Runtime on the CPU", provider.description)
        return provider
    if name in ("auto", "tensorrt"):
        try:
            from edge_agent.engines.tensorrt import tensorrt_provider

            trt_provider = tensorrt_provider(cache_dir=cache_dir, cuda_binding=cuda_binding,
                                             **tensorrt_options)
        except BackendUnavailableError as exc:
            if name == "tensorrt":
                raise
            LOGGER.info("inference backend: onnxruntime (CPU); TensorRT is not usable here: %s", exc)
            fallback = OnnxRuntimeProvider(intra_op_threads, spinning=ort_spinning)
            fallback.description = f"ONNX Runtime on the CPU (auto: TensorRT is not usable here: {exc})"
            return fallback
        LOGGER.info("inference backend: tensorrt (%s)", trt_provider.description)
        return trt_provider
    provider_cpu = OnnxRuntimeProvider(intra_op_threads, spinning=ort_spinning)
    LOGGER.info("inference backend: %s (CPU)", provider_cpu.kind)
    return provider_cpu


class Prebuilder:
    """Builds missing TensorRT engines as components are discovered, so StartModel only deserializes.

    A build that fails (or whose child process the kernel kills for memory) leaves the
    component FAILED with the reason; the agent and the other models carry on.
    """

    def __init__(self, manager: ModelManager, provider: Any) -> None:
        self.manager = manager
        self.provider = provider
        self._lock = threading.Lock()  # guards _started
        self._started: set[str] = set()

    def attach(self) -> None:
        self.manager.add_listener(self._on_state)

    def _on_state(self, name: str, state: ModelState | None, _message: str) -> None:
        if state is not ModelState.STOPPED:
            if state is None:
                with self._lock:
                    self._started.discard(name)
            return
        with self._lock:
            if name in self._started:
                return
            self._started.add(name)
        try:
            manifest = load_manifest(self._component_dir(name))
            if not self.provider.needs_build(manifest):
                return
        except (EdgeAgentError, OSError):
            return
        LOGGER.info("model %s: building its TensorRT engine ahead of need", name)
        self.manager.set_idle_status(name, "Building the TensorRT engine ahead of StartModel.")
        future = self.provider.prebuild_async(manifest)
        future.add_done_callback(lambda done: self._finished(name, done))

    def _component_dir(self, name: str) -> Path:
        for models_dir in self.manager.models_dirs:
            candidate = Path(models_dir) / name
            if candidate.is_dir():
                return candidate
        raise OSError(name)

    def _finished(self, name: str, future: Future) -> None:  # type: ignore[type-arg]
        try:
            result = future.result()
        except EdgeAgentError as exc:
            self.manager.set_idle_status(name, f"Engine build failed: {exc}", failed=True)
            return
        except Exception as exc:  # a crash in the build must not take the agent down
            LOGGER.exception("model %s: engine build crashed", name)
            self.manager.set_idle_status(name, f"Engine build failed: {exc!r}. See the agent log.", failed=True)
            return
        self.manager.set_idle_status(
            name, f"Engine built ahead of need in {result.seconds:.1f} s; StartModel will load it from the cache.")
