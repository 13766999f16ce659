"""TensorRT on the GPU: engines built (or shipped), cached, and run from a pool of execution contexts.

The pieces, from the bottom up:

* :class:`GpuRuntime` — the ``tensorrt`` module and the :class:`CudaDevice`,
  once per agent (real, or the fake GPU of :mod:`edge_agent.engines.fakes`);
* :class:`EngineBuilder` — builds an engine from ONNX (parser, explicit batch,
  an optimization profile for the dynamic batch, a workspace capped to what the
  device can spare, FP16 when asked for and available, a persisted timing cache)
  and stores it in the :class:`EngineCache`, in a child process by default so a
  build the kernel kills for memory does not take the agent with it;
* :class:`TensorRTBackend` — one model: deserializes the cached (or shipped)
  plan and runs it on a small pool of execution contexts, each with its own
  stream and pre-allocated device and pinned host buffers;
* :class:`TensorRTProvider` — what :class:`~edge_agent.models.ModelManager` uses:
  backends, memory estimates, the free-memory query, builds ahead of need.

TensorRT calls follow the I/O-tensor API (``num_io_tensors``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and check for features rather than
parse version strings, so the same code runs TensorRT 8.5 to 11.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge_agent.engine_cache import CacheEntry, EngineCache, EngineKey, EngineMetadata, utc_now
from edge_agent.engines.base import Backend, LoadReport, MemoryInfo, TensorInfo
from edge_agent.engines.cuda import (
    MEMINFO_PATH,
    CudaDevice,
    CudaError,
    DeviceBuffer,
    PinnedBuffer,
    import_optional,
    open_device,
)
from edge_agent.errors import (
    BackendUnavailableError,
    EdgeAgentError,
    InferenceError,
    InvalidArgumentError,
    ManifestError,
    ModelLoadError,
)
from edge_agent.manifest import Manifest, load_manifest

LOGGER = logging.getLogger(__name__)

# Build options and limits.
DEFAULT_WORKSPACE_BYTES = 256 * 2**20
MIN_WORKSPACE_BYTES = 2**20
# A build may use at most this share of the device's free memory as workspace.
WORKSPACE_FREE_FRACTION = 0.5
DEFAULT_MAX_BATCH = 1
DEFAULT_CONTEXTS_PER_MODEL = 2
BUILD_TIMEOUT_S = 3600.0
# How long unloading waits for requests still holding an execution context.
UNLOAD_WAIT_S = 30.0
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
# The line the build child prints its result on (everything else goes to stderr).
_RESULT_PREFIX = "EDGE_AGENT_BUILD_RESULT "
_STDERR_TAIL_CHARS = 2000
_TRT_LOG_LINES = 20

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)([bB]?)\s*$")
_OOM_WORDS = ("outofmemory", "out of memory", "could not be allocated", "cuda_error_out_of_memory")


def parse_bytes(text: str | int) -> int:
    """Parses a size: ``512MiB``, ``2GiB``, ``1.5G``, ``300MB``, ``4096``.

    ``KiB/MiB/GiB`` (and bare ``K/M/G``) are powers of 1024, ``kB/MB/GB`` powers of 1000.

    Raises:
        InvalidArgumentError: the text is not a size.
    """
    if isinstance(text, int):
        if text < 0:
            raise InvalidArgumentError(f"size {text} is negative")
        return text
    match = _SIZE.match(text)
    if not match:
        raise InvalidArgumentError(f"{text!r} is not a size; write it like 512MiB, 2GiB or 1073741824.")
    number, prefix, binary, unit_b = match.groups()
    power = "kmgt".find(prefix.lower()) + 1 if prefix else 0
    base = 1024 if (binary or not unit_b) else 1000
    return int(float(number) * base**power)


def is_plan_file(path: Path) -> bool:
    return Path(path).suffix.lower() in PLAN_SUFFIXES


# -- TensorRT's logger -----------------------------------------------------------------------


class _Capture:
    """Messages TensorRT logged on one thread while a step ran."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def summary(self) -> str:
        # In order, without repeats: TensorRT often logs an error twice.
        lines = list(dict.fromkeys(self.messages))[-_TRT_LOG_LINES:]
        return " | ".join(lines) if lines else "TensorRT logged nothing"

    @property
    def out_of_memory(self) -> bool:
        text = " ".join(self.messages).lower()
        return any(word in text for word in _OOM_WORDS)


def _make_logger(trt: ModuleType) -> Any:
    """A ``trt.ILogger`` that forwards to logging and lets a thread capture what a step logged."""
    base = trt.ILogger

    class AgentTrtLogger(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._local = threading.local()

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity)).upper()
            if "VERBOSE" in name:
                return
            capture: _Capture | None = getattr(self._local, "capture", None)
            is_problem = "ERROR" in name or "WARNING" in name
            if capture is not None and is_problem:
                capture.messages.append(msg.strip())
                level = logging.DEBUG  # the step that captured it reports the failure itself
            elif "ERROR" in name:
                level = logging.ERROR
            elif "WARNING" in name:
                level = logging.WARNING
            else:
                level = logging.DEBUG
            LOGGER.log(level, "TensorRT: %s", msg.strip())

        @contextlib.contextmanager
        def capture(self) -> Iterator[_Capture]:
            previous = getattr(self._local, "capture", None)
            self._local.capture = current = _Capture()
            try:
                yield current
            finally:
                self._local.capture = previous

    return AgentTrtLogger()


# -- the runtime: TensorRT + the GPU, once per agent ----------------------------------------


@dataclass(frozen=True)
class RuntimeSpec:
    """How to open the GPU runtime; plain data, so a build child can open the same one."""

    kind: str = "real"  # "real" or "fake"
    cuda_binding: str = "auto"
    device_index: int = 0
    meminfo_path: str = str(MEMINFO_PATH)
    # The fake GPU (kind == "fake"):
    fake_total_bytes: int = 0
    fake_gpu_name: str = "Fake GPU"
    fake_compute_capability: tuple[int, int] = (8, 7)
    fake_integrated: bool = False
    fake_tensorrt_version: str = "10.3.0"
    fake_fast_fp16: bool = True
    # Test hook: a build child on the fake GPU kills itself with this signal (as the OOM killer would).
    fake_kill_build_child_with: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuntimeSpec:
        values = dict(data)
        values["fake_compute_capability"] = tuple(values.get("fake_compute_capability", (8, 7)))
        return cls(**values)

    def create(self, *, build_hook: Callable[[], None] | None = None,
               in_build_child: bool = False) -> GpuRuntime:
        """Opens the runtime.

        Raises:
            BackendUnavailableError: TensorRT or a CUDA binding is missing, or no GPU answers.
        """
        if self.kind == "fake":
            from edge_agent.engines.fakes.cuda import FakeCudaDriver
            from edge_agent.engines.fakes.tensorrt import make_fake_tensorrt

            if in_build_child and self.fake_kill_build_child_with is not None:
                build_hook = functools.partial(os.kill, os.getpid(), self.fake_kill_build_child_with)
            driver = FakeCudaDriver(self.fake_total_bytes, gpu_name=self.fake_gpu_name,
                                    compute_capability=self.fake_compute_capability,
                                    integrated=self.fake_integrated)
            trt = make_fake_tensorrt(driver, version=self.fake_tensorrt_version,
                                     fast_fp16=self.fake_fast_fp16, build_hook=build_hook)
            device = CudaDevice(driver, self.device_index, meminfo_path=Path(self.meminfo_path))
            return GpuRuntime(trt, device, self)
        if self.kind != "real":
            raise BackendUnavailableError(f"unknown GPU runtime kind {self.kind!r}")
        trt = import_optional("tensorrt", "The TensorRT backend")
        device = open_device(self.cuda_binding, self.device_index, meminfo_path=Path(self.meminfo_path))
        return GpuRuntime(trt, device, self)


class GpuRuntime:
    """The ``tensorrt`` module, its logger and runtime, and the GPU: one per agent."""

    def __init__(self, trt: ModuleType, device: CudaDevice, spec: RuntimeSpec | None = None) -> None:
        self.trt = trt
        self.device = device
        self.spec = spec or RuntimeSpec()
        self.logger = _make_logger(trt)
        self._lock = threading.Lock()  # guards _runtime
        self._runtime: Any = None

    @property
    def tensorrt_version(self) -> str:
        return str(getattr(self.trt, "__version__", "unknown"))

    def runtime(self) -> Any:
        """The shared ``trt.Runtime`` (TensorRT's plugins registered first, once)."""
        with self._lock:
            if self._runtime is None:
                init_plugins = getattr(self.trt, "init_libnvinfer_plugins", None)
                if init_plugins is not None:
                    init_plugins(self.logger, "")
                self._runtime = self.trt.Runtime(self.logger)
            return self._runtime

    def deserialize(self, plan: bytes) -> tuple[Any, _Capture]:
        """Deserializes a plan; the engine is None when TensorRT refuses it (see the capture)."""
        with self.device.activate(), self.logger.capture() as capture:
            try:
                engine = self.runtime().deserialize_cuda_engine(plan)
            except Exception as exc:  # some versions raise instead of returning None
                capture.messages.append(f"{type(exc).__name__}: {exc}")
                engine = None
        return engine, capture

    def versions(self) -> dict[str, str]:
        """Versions for the info metric: tensorrt, cuda_driver, cuda_runtime, gpu, compute_capability."""
        return {"tensorrt": self.tensorrt_version, **self.device.versions()}

    def describe(self) -> str:
        props = self.device.properties
        return (f"TensorRT {self.tensorrt_version} on {props.name} (compute {props.compute_capability_str}, "
                f"{props.total_bytes / 2**20:.0f} MiB, via {self.device.driver.name})")

    def close(self) -> None:
        with self._lock:
            self._runtime = None
        self.device.close()


# -- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = False
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    input_shape: tuple[int, ...] | None = None  # the image input as the agent feeds it (batch 1)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildOptions:
        values = dict(data)
        if values.get("input_shape") is not None:
            values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)


@dataclass(frozen=True)
class BuildResult:
    """What ``build_ahead`` did for one component."""

    component: str
    plan_path: Path
    built: bool  # False: the cache already held the engine, or the component ships a plan
    seconds: float
    metadata: EngineMetadata | None = None


def _network_flags(trt: ModuleType) -> int:
    # Explicit batch is the only mode from TensorRT 10 (the implicit-batch API is gone) and the
    # flag itself is gone in 11; set it only where implicit batch still exists.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if flag is None or not hasattr(trt.Builder, "max_batch_size"):
        return 0
    return 1 << int(flag)


def _workspace_limit(requested: int, free_bytes: int) -> int:
    spare = int(free_bytes * WORKSPACE_FREE_FRACTION)
    return max(MIN_WORKSPACE_BYTES, min(requested, spare))


def _enable_fp16(trt: ModuleType, builder: Any, config: Any, wanted: bool, label: str) -> bool:
    if not wanted:
        return False
    flag = getattr(getattr(trt, "BuilderFlag", None), "FP16", None)
    if flag is None:
        LOGGER.warning("%s: the manifest allows fp16, but this TensorRT has no FP16 builder flag "
                       "(TensorRT 11 builds strongly typed networks: convert the ONNX model to FP16 "
                       "instead); building FP32", label)
        return False
    if not getattr(builder, "platform_has_fast_fp16", False):
        LOGGER.info("%s: the GPU has no fast FP16; building FP32", label)
        return False
    config.set_flag(flag)
    return True


def _add_profile(builder: Any, network: Any, config: Any, options: BuildOptions, label: str) -> None:
    """One optimization profile: batch 1..max_batch, other dynamic sizes from the agent's input shape."""
    profile = builder.create_optimization_profile()
    dynamic = False
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(int(d) for d in tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        dynamic = True
        hint = options.input_shape if options.input_shape and len(options.input_shape) == len(shape) else None
        low: list[int] = []
        for axis, dim in enumerate(shape):
            if dim >= 0:
                low.append(dim)
            elif axis == 0:
                low.append(1)
            elif hint is not None and hint[axis] > 0:
                low.append(hint[axis])
            else:
                raise ModelLoadError(
                    f"{label}: input {tensor.name!r} has shape {list(shape)}: dimension {axis} is dynamic "
                    "and the agent cannot tell its size. Export the model with a fixed height, width and "
                    "channel count (only the batch dimension may be dynamic)."
                )
        high = list(low)
        if shape[0] < 0:
            high[0] = max(1, options.max_batch)
        profile.set_shape(tensor.name, tuple(low), tuple(low), tuple(high))
    if dynamic:
        config.add_optimization_profile(profile)


def build_plan(runtime: GpuRuntime, cache: EngineCache, onnx_path: Path, options: BuildOptions, label: str, *,
               measure: bool) -> tuple[bytes, EngineMetadata, EngineKey]:
    """Builds an engine from ONNX in this process; returns the plan and what to store with it.

    With ``measure`` the plan is deserialized once to read the device memory an
    execution context needs (build children do this; an in-process build learns it
    when the model loads).

    Raises:
        ModelLoadError: the ONNX file does not parse or TensorRT cannot build it.
    """
    trt, device = runtime.trt, runtime.device
    key = engine_key(runtime, cache, onnx_path, options)
    started = time.perf_counter()
    workspace = _workspace_limit(options.workspace_bytes, device.free_memory().free_bytes)
    props = device.properties
    timing_path = cache.timing_cache_path(props.name, props.compute_capability_str, runtime.tensorrt_version)
    LOGGER.info("%s: building a TensorRT engine from %s (workspace %.0f MiB); this can take minutes", label,
                onnx_path.name, workspace / 2**20)
    with device.activate(), runtime.logger.capture() as capture:
        builder = trt.Builder(runtime.logger)
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, runtime.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ModelLoadError(
                f"{onnx_path}: TensorRT's ONNX parser rejects this model: "
                f"{' | '.join(errors) or capture.summary()}. Check the model with onnx.checker, re-export it "
                "with a supported opset, or run it with --backend onnxruntime."
            )
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        fp16 = _enable_fp16(trt, builder, config, options.fp16, label)
        _add_profile(builder, network, config, options, label)
        timing = _attach_timing_cache(config, cache.load_timing_cache(timing_path))
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            hint = ("not enough GPU memory: stop other models or lower the workspace"
                    if capture.out_of_memory else "see the TensorRT messages")
            raise ModelLoadError(
                f"{onnx_path}: TensorRT {runtime.tensorrt_version} could not build an engine ({hint}): "
                f"{capture.summary()}"
            )
        plan = bytes(serialized)
        del serialized
        if timing:
            _save_timing_cache(cache, timing_path, config)
        device_memory = 0
        if measure:
            engine = runtime.runtime().deserialize_cuda_engine(plan)
            device_memory = _device_memory_size(engine) if engine is not None else 0
            del engine
    seconds = time.perf_counter() - started
    LOGGER.info("%s: engine built in %.1f s (%.1f MiB)", label, seconds, len(plan) / 2**20)
    metadata = EngineMetadata(
        key=key.as_dict(), plan_bytes=len(plan), onnx_bytes=onnx_path.stat().st_size,
        device_memory_bytes=device_memory, build_seconds=round(seconds, 3), built_at=utc_now(), fp16=fp16,
        workspace_bytes=workspace, model_file=str(onnx_path),
    )
    return plan, metadata, key


def _attach_timing_cache(config: Any, data: bytes) -> bool:
    if not hasattr(config, "create_timing_cache"):
        return False
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # Measured on another device or version: start afresh rather than trust it.
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return True


def _save_timing_cache(cache: EngineCache, path: Path, config: Any) -> None:
    timing = config.get_timing_cache()
    if timing is None:
        return
    with cache.timing_lock(path):
        previous = cache.load_timing_cache(path)
        if previous:  # another build may have added tactics since this one loaded the file
            timing.combine(config.create_timing_cache(previous), ignore_mismatch=True)
        cache.save_timing_cache(path, bytes(timing.serialize()))


def _device_memory_size(engine: Any) -> int:
    # device_memory_size_v2 from TensorRT 10.1; device_memory_size before (removed in 11).
    for name in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, name, None)
        if value is not None:
            return int(value)
    return 0


def engine_key(runtime: GpuRuntime, cache: EngineCache, onnx_path: Path, options: BuildOptions) -> EngineKey:
    props = runtime.device.properties
    return EngineKey(
        onnx_sha256=cache.model_sha256(onnx_path), tensorrt_version=runtime.tensorrt_version,
        gpu_name=props.name,
        compute_capability=props.compute_capability_str, fp16=options.fp16,
        workspace_bytes=options.workspace_bytes, max_batch=options.max_batch, input_shape=options.input_shape,
    )


class EngineBuilder:
    """Builds engines into the cache, one build per key at a time across threads and processes."""

    def __init__(self, runtime: GpuRuntime, cache: EngineCache, *, in_subprocess: bool = True,
                 timeout_s: float = BUILD_TIMEOUT_S) -> None:
        self.runtime = runtime
        self.cache = cache
        self.in_subprocess = in_subprocess
        self.timeout_s = timeout_s

    def build(self, onnx_path: Path, options: BuildOptions, label: str) -> tuple[CacheEntry, bool]:
        """Returns the cache entry for the model, building it unless it is there; and whether it built.

        Raises:
            ModelLoadError: the build failed, was killed, or its result cannot be stored.
        """
        key = engine_key(self.runtime, self.cache, onnx_path, options)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.cache.lock(key))
            except OSError as exc:
                raise ModelLoadError(
                    f"{label}: cannot use the engine cache {self.cache.root} ({exc}). Pass --cache-dir with "
                    "a writable directory."
                ) from None
            entry = self.cache.lookup(key, repair=True)
            if entry is not None:  # someone built it while this waited for the lock
                return entry, False
            if self.in_subprocess:
                entry = self._build_in_child(key, onnx_path, options, label)
            else:
                plan, metadata, _ = build_plan(self.runtime, self.cache, onnx_path, options, label,
                                               measure=False)
                entry = self._store(key, plan, metadata, label)
            return entry, True

    def _store(self, key: EngineKey, plan: bytes, metadata: EngineMetadata, label: str) -> CacheEntry:
        try:
            return self.cache.store(key, plan, metadata)
        except OSError as exc:
            raise ModelLoadError(
                f"{label}: cannot write the built engine to {self.cache.root} ({exc.strerror}). Pass "
                "--cache-dir with a writable directory."
            ) from None

    def _build_in_child(self, key: EngineKey, onnx_path: Path, options: BuildOptions,
                        label: str) -> CacheEntry:
        request = {"spec": self.runtime.spec.to_dict(), "onnx": str(onnx_path), "options": options.to_dict(),
                   "cache_dir": str(self.cache.root), "label": label}
        command = [sys.executable, "-m", "edge_agent.engines.tensorrt", "--build-child"]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, input=json.dumps(request).encode(), capture_output=True,
                                  timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ModelLoadError(
                f"{label}: the engine build took longer than {self.timeout_s:.0f} s and was stopped. Build "
                "it ahead with `edge-agent build-engines`, or use a smaller model."
            ) from None
        stderr = done.stderr.decode(errors="replace")[-_STDERR_TAIL_CHARS:].strip()
        if done.returncode < 0:
            try:
                name = signal.Signals(-done.returncode).name
            except ValueError:
                name = f"signal {-done.returncode}"
            why = " (the kernel's OOM killer does this when memory runs out)" if name == "SIGKILL" else ""
            raise ModelLoadError(
                f"{label}: the TensorRT engine build process was killed by {name}{why} after "
                f"{time.perf_counter() - started:.1f} s. Free memory (stop other models or processes), lower "
                "the workspace, or build the engine ahead with `edge-agent build-engines`, then call "
                "StartModel again."
            )
        result: dict[str, Any] = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            if line.startswith(_RESULT_PREFIX):
                result = json.loads(line[len(_RESULT_PREFIX):])
        if done.returncode != 0 or not result.get("ok"):
            reason = result.get("error") or stderr or f"exit status {done.returncode}"
            raise ModelLoadError(f"{label}: the engine build failed: {reason}")
        entry = self.cache.lookup(key)
        if entry is None:
            raise ModelLoadError(f"{label}: the build child reported success but the engine is not in "
                                 f"{self.cache.root}. Check that the directory is writable.")
        return entry


def _build_child_main(stdin: Any, stdout: Any) -> int:
    """Entry of ``python -m edge_agent.engines.tensorrt --build-child``: one build, result on stdout."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s build-child %(name)s: %(message)s")
    try:
        request = json.load(stdin)
        spec = RuntimeSpec.from_dict(request["spec"])
        runtime = spec.create(in_build_child=True)
        cache = EngineCache(Path(request["cache_dir"]))
        options = BuildOptions.from_dict(request["options"])
        plan, metadata, key = build_plan(runtime, cache, Path(request["onnx"]), options, request["label"],
                                         measure=True)
        cache.store(key, plan, metadata)
        result: dict[str, Any] = {"ok": True, "plan_bytes": len(plan)}
        code = 0
    except (EdgeAgentError, OSError) as exc:
        result, code = {"ok": False, "error": str(exc)}, 1
    stdout.write(_RESULT_PREFIX + json.dumps(result) + "\n")
    stdout.flush()
    return code


# -- one model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # as the engine reports it, -1 where dynamic
    max_shape: tuple[int, ...]  # the largest shape the profile allows (buffers are this big)

    @property
    def max_bytes(self) -> int:
        return int(np.prod(self.max_shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class _Slot:
    """One execution context with its own stream and buffers; used by one request at a time."""

    context: Any
    stream: Any = None
    device: dict[str, DeviceBuffer] = dataclasses.field(default_factory=dict)
    host: dict[str, PinnedBuffer] = dataclasses.field(default_factory=dict)


class _SlotPool:
    """Hands execution contexts to requests; closing waits for them all to come back."""

    def __init__(self) -> None:
        self._cond = threading.Condition()  # guards _free, _all, _closed
        self._free: list[_Slot] = []
        self._all: list[_Slot] = []
        self._closed = False

    def add(self, slot: _Slot) -> None:
        with self._cond:
            self._all.append(slot)
            self._free.append(slot)
            self._cond.notify()

    def acquire(self, label: str) -> _Slot:
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                raise InferenceError(f"model {label}: the TensorRT backend is unloading.")
            return self._free.pop()

    def release(self, slot: _Slot) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def close(self, timeout_s: float) -> list[_Slot]:
        with self._cond:
            self._closed = True
            if not self._cond.wait_for(lambda: len(self._free) == len(self._all), timeout_s):
                LOGGER.error("%d execution contexts still busy after %.0f s; freeing them anyway",
                             len(self._all) - len(self._free), timeout_s)
            slots, self._all, self._free = self._all, [], []
            return slots


class TensorRTBackend(Backend):
    """One model as a TensorRT engine: built from ONNX (cached) or a shipped plan."""

    kind = "tensorrt"

    def __init__(self, model_path: Path, *, label: str | None = None, runtime: GpuRuntime,
                 builder: EngineBuilder, options: BuildOptions | None = None,
                 contexts: int = DEFAULT_CONTEXTS_PER_MODEL) -> None:
        super().__init__(model_path, label=label)
        self.runtime = runtime
        self.builder = builder
        self.options = options or BuildOptions()
        self.contexts = max(1, contexts)
        self.max_concurrency = self.contexts  # one request per execution context; more queue in the runner
        self._engine: Any = None
        self._tensors: list[_Tensor] = []
        self._pool = _SlotPool()
        self._slots: list[_Slot] = []  # every slot made, for release on failure or unload

    # -- loading ----------------------------------------------------------------------------

    def _load_impl(self) -> LoadReport:
        self._pool = _SlotPool()
        try:
            # The engine lives only in self._engine, so _release() frees it even while an
            # exception (and its traceback's frames) is still around.
            if is_plan_file(self.model_path):
                self._engine, source, plan_bytes, entry = self._load_shipped_plan()
            else:
                self._engine, source, plan_bytes, entry = self._load_from_onnx()
            held = self._prepare(plan_bytes)
        except CudaError as exc:
            self._release()
            hint = ("Not enough GPU memory: stop another model with StopModel, then call StartModel again."
                    if exc.out_of_memory else "Check the GPU and its driver (nvidia-smi / tegrastats).")
            raise ModelLoadError(f"{self.model_path}: {exc} {hint}") from None
        except BaseException:
            self._release()
            raise
        if entry is not None and entry.metadata.loaded_bytes != held:
            device_memory = _device_memory_size(self._engine)
            self.builder.cache.update(entry, loaded_bytes=held, device_memory_bytes=device_memory)
        detail = f"TensorRT {self.runtime.tensorrt_version}, {self.contexts} execution contexts"
        return LoadReport(source=source, memory_bytes=held, detail=detail)

    def _load_shipped_plan(self) -> tuple[Any, str, int, CacheEntry | None]:
        plan = self.model_path.read_bytes()
        engine, capture = self.runtime.deserialize(plan)
        if engine is None:
            self._raise_if_out_of_memory(capture)
            props = self.runtime.device.properties
            raise ModelLoadError(
                f"{self.model_path}: TensorRT {self.runtime.tensorrt_version} cannot load this engine plan "
                f"({capture.summary()}). A plan only loads with the TensorRT version and the GPU it was "
                f"built for; this device runs TensorRT {self.runtime.tensorrt_version} on {props.name} "
                f"(compute {props.compute_capability_str}). Rebuild the plan on this device (trtexec "
                f"--onnx=MODEL.onnx --saveEngine={self.model_path.name}), or ship the ONNX model instead so "
                "the agent builds and caches the engine itself."
            )
        return engine, "engine-shipped", len(plan), None

    def _load_from_onnx(self) -> tuple[Any, str, int, CacheEntry | None]:
        cache = self.builder.cache
        key = engine_key(self.runtime, cache, self.model_path, self.options)
        entry = cache.lookup(key)
        if entry is not None:
            engine, plan_bytes = self._deserialize_entry(entry)
            if engine is not None:
                return engine, "engine-cache", plan_bytes, entry
        entry, built = self.builder.build(self.model_path, self.options, self.label)
        engine, plan_bytes = self._deserialize_entry(entry)
        if engine is None:
            raise ModelLoadError(
                f"{self.model_path}: TensorRT built an engine it then could not load. This points at a "
                "broken TensorRT or driver installation; reinstall them, or run with --backend onnxruntime."
            )
        return engine, "engine-built" if built else "engine-cache", plan_bytes, entry

    def _deserialize_entry(self, entry: CacheEntry) -> tuple[Any, int]:
        """The engine from a cache entry; a stale or corrupt entry is deleted (None comes back)."""
        plan = self.builder.cache.read_plan(entry)
        if plan is None:
            return None, 0
        engine, capture = self.runtime.deserialize(plan)
        if engine is None:
            self._raise_if_out_of_memory(capture)
            self.builder.cache.discard(entry, f"TensorRT cannot deserialize it ({capture.summary()})")
            return None, 0
        return engine, len(plan)

    def _raise_if_out_of_memory(self, capture: _Capture) -> None:
        if capture.out_of_memory:  # not the plan's fault: keep it
            raise ModelLoadError(
                f"{self.model_path}: not enough GPU memory to load the engine ({capture.summary()}). Stop "
                "another model with StopModel, then call StartModel again."
            )

    def _prepare(self, plan_bytes: int) -> int:
        """Reads the engine's tensors and makes the execution contexts; returns device bytes held."""
        trt = self.runtime.trt
        engine = self._engine
        tensors: list[_Tensor] = []
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError:
                raise ModelLoadError(
                    f"{self.model_path}: tensor {name!r} has TensorRT type "
                    f"{engine.get_tensor_dtype(name)}, which has no numpy equivalent. Export the model "
                    "with float32, float16 or uint8 inputs and outputs."
                ) from None
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            max_shape = shape
            if is_input and -1 in shape:
                max_shape = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
            tensors.append(_Tensor(name, is_input, dtype, shape, max_shape))
        self._tensors = tensors
        device_memory = _device_memory_size(engine)
        del engine
        held = plan_bytes
        with self.runtime.device.activate():
            for _ in range(self.contexts):
                held += device_memory + self._make_slot()
        return held

    def _make_slot(self) -> int:
        """One execution context with its stream and buffers (caller made the context current).

        The context is reachable only through the slot, so _release() frees it even when an
        exception from here is still alive.
        """
        device = self.runtime.device
        with self.runtime.logger.capture() as capture:
            slot = _Slot(self._engine.create_execution_context())
            if slot.context is None:
                detail = "not enough GPU memory" if capture.out_of_memory else capture.summary()
                raise ModelLoadError(f"{self.model_path}: TensorRT cannot create an execution context "
                                     f"({detail}). Stop another model with StopModel, or lower the "
                                     "contexts per model.")
            self._slots.append(slot)
            slot.stream = device.stream_create()
            for tensor in self._tensors:
                dynamic_input = tensor.is_input and -1 in tensor.shape
                if dynamic_input and not slot.context.set_input_shape(tensor.name, tensor.max_shape):
                    raise ModelLoadError(f"{self.model_path}: TensorRT refuses input shape "
                                         f"{list(tensor.max_shape)} for {tensor.name!r}: {capture.summary()}")
            sized = []
            for tensor in self._tensors:
                if not tensor.is_input:
                    shape = tuple(int(d) for d in slot.context.get_tensor_shape(tensor.name))
                    if any(d < 0 for d in shape):
                        raise ModelLoadError(
                            f"{self.model_path}: output {tensor.name!r} has a data-dependent shape "
                            f"{list(shape)}; the agent needs outputs whose shape follows from the "
                            "input shape."
                        )
                    tensor = dataclasses.replace(tensor, max_shape=shape)
                sized.append(tensor)
            self._tensors = sized
            held = 0
            for tensor in self._tensors:
                nbytes = max(1, tensor.max_bytes)
                slot.device[tensor.name] = device.malloc(nbytes)
                slot.host[tensor.name] = device.host_alloc(nbytes)
                held += nbytes
                if not slot.context.set_tensor_address(tensor.name, slot.device[tensor.name].address):
                    raise ModelLoadError(f"{self.model_path}: TensorRT refuses the buffer for "
                                         f"{tensor.name!r}: {capture.summary()}")
        self._pool.add(slot)
        return held

    @property
    def max_batch_size(self) -> int | None:
        """The optimization profile's largest batch (the first input's, when its batch is dynamic)."""
        for tensor in self._tensors:
            if tensor.is_input and tensor.shape and tensor.shape[0] == -1:
                return tensor.max_shape[0]
        return None

    def _describe_io(self) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
        def info(tensor: _Tensor) -> TensorInfo:
            return TensorInfo(tensor.name, tuple(d if d >= 0 else None for d in tensor.shape), tensor.dtype)

        return (tuple(info(t) for t in self._tensors if t.is_input),
                tuple(info(t) for t in self._tensors if not t.is_input))

    # -- inference --------------------------------------------------------------------------

    def _infer_impl(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        slot = self._pool.acquire(self.label)
        device = self.runtime.device
        try:
            with device.activate(), self.runtime.logger.capture() as capture:
                context = slot.context
                for tensor in self._tensors:
                    if not tensor.is_input:
                        continue
                    array = np.ascontiguousarray(feeds[tensor.name], dtype=tensor.dtype)
                    if not context.set_input_shape(tensor.name, array.shape):
                        raise InferenceError(f"model {self.label}: TensorRT refuses input shape "
                                             f"{list(array.shape)} for {tensor.name!r} (the engine takes up "
                                             f"to {list(tensor.max_shape)}): {capture.summary()}")
                    staged = slot.host[tensor.name].view(tensor.dtype, array.shape)
                    np.copyto(staged, array)
                    device.memcpy_htod_async(slot.device[tensor.name], staged, slot.stream)
                results: dict[str, np.ndarray] = {}
                for tensor in self._tensors:
                    if tensor.is_input:
                        continue
                    shape = tuple(int(d) for d in context.get_tensor_shape(tensor.name))
                    results[tensor.name] = slot.host[tensor.name].view(tensor.dtype, shape)
                if not context.execute_async_v3(device.stream_handle(slot.stream)):
                    raise InferenceError(f"model {self.label}: TensorRT failed to run the engine: "
                                         f"{capture.summary()}")
                for name, host in results.items():
                    device.memcpy_dtoh_async(host, slot.device[name], slot.stream)
                device.synchronize(slot.stream)
                return {name: host.copy() for name, host in results.items()}
        except CudaError as exc:
            raise InferenceError(f"model {self.label}: {exc}") from None
        finally:
            self._pool.release(slot)

    # -- unloading --------------------------------------------------------------------------

    def _unload_impl(self) -> None:
        self._pool.close(UNLOAD_WAIT_S)
        self._release()

    def _release(self) -> None:
        """Frees every buffer, stream and context, then the engine (contexts go before their engine)."""
        slots, self._slots = self._slots, []
        engine, self._engine = self._engine, None
        if not slots and engine is None:
            return
        device = self.runtime.device
        try:
            with device.activate():
                for slot in slots:
                    for buffer in slot.device.values():
                        _quietly(device.free, buffer)
                    for pinned in slot.host.values():
                        _quietly(device.host_free, pinned)
                    if slot.stream is not None:
                        _quietly(device.stream_destroy, slot.stream)
                    slot.device.clear()
                    slot.host.clear()
                    slot.context = None
                # TensorRT frees an engine's memory when its last reference goes: do it here, in context.
                del slots, engine
        except CudaError as exc:
            LOGGER.error("%s: cannot make the CUDA context current to free the model: %s", self.label, exc)


def _quietly(release: Callable[[Any], None], resource: Any) -> None:
    try:
        release(resource)
    except CudaError as exc:
        LOGGER.error("freeing %r failed: %s", resource, exc)


# -- the provider ----------------------------------------------------------------------------


class TensorRTProvider:
    """Makes TensorRT backends for manifests (implements ``edge_agent.models.BackendProvider``)."""

    kind = "tensorrt"

    def __init__(
        self,
        runtime: GpuRuntime,
        *,
        cache: EngineCache | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        contexts_per_model: int = DEFAULT_CONTEXTS_PER_MODEL,
        build_in_subprocess: bool = True,
        build_timeout_s: float = BUILD_TIMEOUT_S,
    ) -> None:
        self.runtime = runtime
        self.cache = cache or EngineCache()
        self.workspace_bytes = workspace_bytes
        self.contexts_per_model = contexts_per_model
        self.builder = EngineBuilder(runtime, self.cache, in_subprocess=build_in_subprocess,
                                     timeout_s=build_timeout_s)
        self._prebuild_lock = threading.Lock()  # guards _prebuilds and _executor
        self._prebuilds: dict[Path, Future[BuildResult]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self.description = runtime.describe()

    # -- BackendProvider ----------------------------------------------------------------------

    def options_for(self, manifest: Manifest) -> BuildOptions:
        """Build options from the manifest: ``fp16`` (optional, default false), the input size, and the
        largest batch (``batching.max_batch``: the profile's upper bound when the batch is dynamic)."""
        fp16 = manifest.extra.get("fp16", False)
        if not isinstance(fp16, bool):
            raise ManifestError(f"{manifest.manifest_path}: field 'fp16' must be true or false, got "
                                f"{fp16!r}. Fix the manifest and call StartModel again.")
        spec = manifest.input
        shape = (1, 3, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, 3)
        return BuildOptions(fp16=fp16, workspace_bytes=self.workspace_bytes,
                            max_batch=max(1, manifest.batching.max_batch), input_shape=shape)

    def create(self, manifest: Manifest) -> Backend:
        return TensorRTBackend(manifest.model_file, label=manifest.component_dir.name, runtime=self.runtime,
                               builder=self.builder, options=self.options_for(manifest),
                               contexts=self.contexts_per_model)

    def estimate_bytes(self, manifest: Manifest) -> int:
        """Device memory the model will hold: measured (cache metadata), declared, or from file sizes."""
        path = manifest.model_file
        try:
            size = path.stat().st_size
            if is_plan_file(path):
                return manifest.memory_bytes or 2 * size
            entry = self.cache.lookup(engine_key(self.runtime, self.cache, path, self.options_for(manifest)))
        except (OSError, EdgeAgentError):
            return manifest.memory_bytes or 0  # the load itself will say what is wrong
        if entry is not None:
            meta = entry.metadata
            if meta.loaded_bytes:
                return meta.loaded_bytes
            if not meta.device_memory_bytes:  # never measured: fall back on the build's own bound
                return manifest.memory_bytes or size + self.workspace_bytes
            # Not loaded here yet: weights, each context's activations, and each context's device
            # I/O buffers (the input at the largest batch, and outputs of the same order).
            io_bytes = 2 * max(1, manifest.batching.max_batch) * _input_bytes(manifest)
            return meta.plan_bytes + self.contexts_per_model * (meta.device_memory_bytes + io_bytes)
        if manifest.memory_bytes:
            return manifest.memory_bytes
        return size + self.workspace_bytes  # a build needs its workspace on top of the weights

    def memory_info(self) -> MemoryInfo:
        try:
            return self.runtime.device.free_memory()
        except CudaError as exc:
            raise BackendUnavailableError(f"cannot query GPU memory: {exc}") from None

    # -- builds ahead of need --------------------------------------------------------------

    def needs_build(self, manifest: Manifest) -> bool:
        """True when starting the model would build an engine (no plan shipped, none cached)."""
        if is_plan_file(manifest.model_file) or not manifest.model_file.is_file():
            return False
        key = engine_key(self.runtime, self.cache, manifest.model_file, self.options_for(manifest))
        return self.cache.lookup(key) is None

    def build_ahead(self, manifest: Manifest) -> BuildResult:
        """Builds and caches the component's engine now (in a child process by default).

        Raises:
            ModelLoadError: the build failed or its process was killed (the message names the signal).
        """
        name = manifest.component_dir.name
        path = manifest.model_file
        if not path.is_file():
            raise ModelLoadError(f"{path}: model file not found. Put the model there or fix model_file in "
                                 f"{manifest.manifest_path}.")
        if is_plan_file(path):
            return BuildResult(name, path, built=False, seconds=0.0)
        started = time.perf_counter()
        entry, built = self.builder.build(path, self.options_for(manifest), name)
        return BuildResult(name, entry.plan_path, built, time.perf_counter() - started, entry.metadata)

    def prebuild_async(self, manifest: Manifest) -> Future[BuildResult]:
        """Starts ``build_ahead`` on a background thread (one build at a time); repeated calls share it."""
        with self._prebuild_lock:
            running = self._prebuilds.get(manifest.model_file)
            if running is not None and not running.done():
                return running
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-build")
            future = self._executor.submit(self.build_ahead, manifest)
            self._prebuilds[manifest.model_file] = future
            return future

    def versions(self) -> dict[str, str]:
        return self.runtime.versions()

    def close(self) -> None:
        with self._prebuild_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self.runtime.close()


def tensorrt_provider(*, cache_dir: Path | None = None, cuda_binding: str = "auto", device_index: int = 0,
                      **options: Any) -> TensorRTProvider:
    """A provider on the real GPU.

    Raises:
        BackendUnavailableError: TensorRT or a CUDA binding is missing, or no GPU answers.
    """
    spec = RuntimeSpec(kind="real", cuda_binding=cuda_binding, device_index=device_index)
    return TensorRTProvider(spec.create(), cache=EngineCache(cache_dir) if cache_dir else None, **options)


def fake_gpu_provider(
    total_bytes: int | str,
    cache_dir: Path | None = None,
    *,
    gpu_name: str = "Fake GPU",
    compute_capability: tuple[int, int] = (8, 7),
    tensorrt_version: str = "10.3.0",
    integrated: bool = False,
    meminfo_path: Path = MEMINFO_PATH,
    fast_fp16: bool = True,
    build_hook: Callable[[], None] | None = None,
    kill_build_child_with: int | None = None,
    **options: Any,
) -> TensorRTProvider:
    """A TensorRT provider on the fake GPU (``serve --fake-gpu-memory 512MiB``, and the tests).

    The engines are real in what they compute (ONNX Runtime runs the model) and fake
    in where: a :class:`~edge_agent.engines.fakes.cuda.FakeCudaDriver` with
    ``total_bytes`` of memory, reachable as ``provider.runtime.device.driver``.
    """
    spec = RuntimeSpec(kind="fake", meminfo_path=str(meminfo_path), fake_total_bytes=parse_bytes(total_bytes),
                       fake_gpu_name=gpu_name, fake_compute_capability=compute_capability,
                       fake_integrated=integrated, fake_tensorrt_version=tensorrt_version,
                       fake_fast_fp16=fast_fp16,
                       fake_kill_build_child_with=kill_build_child_with)
    runtime = spec.create(build_hook=build_hook)
    return TensorRTProvider(runtime, cache=EngineCache(cache_dir) if cache_dir else None, **options)


def _input_bytes(manifest: Manifest) -> int:
    item = {"float32": 4, "float16": 2, "uint8": 1}.get(manifest.input.dtype, 4)
    return manifest.input.width * manifest.input.height * 3 * item


def build_engines(provider: TensorRTProvider, models_dirs: Iterable[Path]
                  ) -> list[tuple[str, BuildResult | EdgeAgentError]]:
    """``edge-agent build-engines``: builds every component's engine for this device.

    Returns one (component, result or error) per component directory found; a
    failure does not stop the others.
    """
    outcomes: list[tuple[str, BuildResult | EdgeAgentError]] = []
    seen: set[str] = set()
    for models_dir in models_dirs:
        try:
            children = sorted(p for p in Path(models_dir).iterdir()
                              if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            LOGGER.warning("cannot read models directory %s: %s", models_dir, exc.strerror)
            continue
        for component in children:
            if component.name in seen or not (component / "manifest.json").is_file():
                continue
            seen.add(component.name)
            try:
                result: BuildResult | EdgeAgentError = provider.build_ahead(load_manifest(component))
            except EdgeAgentError as exc:
                result = exc
            outcomes.append((component.name, result))
    return outcomes


if __name__ == "__main__":
    if sys.argv[1:] == ["--build-child"]:
        sys.exit(_build_child_main(sys.stdin, sys.stdout))
    sys.stderr.write("usage: python -m edge_agent.engines.tensorrt --build-child < request.json\n")
    sys.exit(2)
