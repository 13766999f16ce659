"""A fake ``tensorrt`` module: TensorRT's names and signatures for the subset the agent uses.

Built by :func:`make_fake_tensorrt` over a :class:`FakeCudaDriver`. What it
mimics, and why it matters:

* ``Builder.build_serialized_network`` returns a plan (bytes carrying the
  TensorRT version, the GPU and the ONNX model) or None after logging an error,
  as TensorRT does for dynamic inputs without an optimization profile or a
  workspace that does not fit;
* ``Runtime.deserialize_cuda_engine`` returns None, logging TensorRT's message,
  for a plan from another TensorRT version or compute capability and for a
  truncated, empty or foreign blob;
* engines and execution contexts hold fake device memory (weights and
  activations) until they are dropped, so leaks show up in the device's counters;
* ``IExecutionContext.execute_async_v3`` reads the input tensors from fake device
  memory, runs the ONNX model with ONNX Runtime and writes the outputs back, and
  fails (returns False, logs) without a current CUDA context, on a dead stream or
  with a tensor address unset.

API differences between versions follow the version string given: TensorRT 10
drops the implicit-batch API (``Builder.max_batch_size``), 10.1 adds
``device_memory_size_v2``, 11 removes ``BuilderFlag.FP16``,
``platform_has_fast_fp16``, ``device_memory_size`` and ``EXPLICIT_BATCH``. The
fake is a little stricter than TensorRT, which quietly binds the primary context
on threads that have none: it insists on a current context, which is what the
agent promises anyway.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import struct
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from edge_agent.engines.cuda import CudaError
from edge_agent.engines.fakes.cuda import FakeCudaDriver

PLAN_MAGIC = b"FAKE-TRT-PLAN\x00"
TIMING_CACHE_MAGIC = b"FAKE-TRT-TIMING-CACHE\x00"
_HEADER_LENGTH = struct.Struct("<I")
_MIN_ACTIVATION_BYTES = 64 * 1024


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3


_NP_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
             DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8,
             DataType.INT64: np.int64}
# ONNX TensorProto element types -> TensorRT's.
_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
               2: DataType.UINT8, 7: DataType.INT64}


def nptype(trt_type: DataType) -> type:
    """The numpy type of a TensorRT type (raises TypeError for types numpy lacks, like TensorRT)."""
    try:
        return _NP_TYPES[DataType(trt_type)]
    except (KeyError, ValueError):
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype: "
                        f"{trt_type}") from None


def volume(shape: Sequence[int]) -> int:
    result = 1
    for dim in shape:
        result *= int(dim)
    return result


class ILogger:
    """Base class of loggers: subclasses call ``ILogger.__init__(self)`` and override ``log``."""

    Severity = Severity
    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE

    def __init__(self) -> None:
        pass

    def log(self, severity: int, msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    """TensorRT's default logger: prints what is at least as severe as ``min_severity``."""

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: int, msg: str) -> None:
        if severity <= self.min_severity:
            sys.stderr.write(f"[TRT] [{Severity(severity).name[0]}] {msg}\n")


class HostMemory(bytes):
    """IHostMemory: a buffer (serialized plan or timing cache)."""

    @property
    def nbytes(self) -> int:
        return len(self)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


class _World:
    """What one fake module shares: its device, version and features."""

    def __init__(self, driver: FakeCudaDriver, version: str, fast_fp16: bool,
                 build_hook: Callable[[], None] | None) -> None:
        self.driver = driver
        self.version = version
        parts = [int(p) for p in (version.split(".") + ["0", "0"])[:2]]
        self.major, self.minor = parts[0], parts[1]
        self.fast_fp16 = fast_fp16
        self.build_hook = build_hook

    @property
    def device_id(self) -> dict[str, str]:
        cc = self.driver.compute_capability
        return {"name": self.driver.gpu_name, "compute_capability": f"{cc[0]}.{cc[1]}"}

    def no_context_error(self, logger: ILogger, where: str) -> bool:
        """Logs TensorRT's message and returns True when this thread has no current context."""
        if self.driver.has_current_context():
            return False
        message = f"1: [{where}] Error Code 1: Cuda Runtime (invalid device context)"
        logger.log(Severity.ERROR, message)
        return True


# -- network and parser --------------------------------------------------------------------


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType,
                 symbols: tuple[str | None, ...]) -> None:
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.symbols = symbols  # ONNX dim_param per dimension (None for a fixed size)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": int(self.dtype),
                "symbols": list(self.symbols)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ITensor:
        return cls(data["name"], tuple(data["shape"]), DataType(data["dtype"]), tuple(data["symbols"]))


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.name = "network"
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self.onnx_bytes = b""

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError:
    def __init__(self, desc: str, node: int = -1) -> None:
        self._desc = desc
        self._node = node

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def code(self) -> str:
        return "MODEL_DESERIALIZE_FAILED"

    def __str__(self) -> str:
        return f"In node {self._node} (parseGraph): MODEL_DESERIALIZE_FAILED: {self._desc}"


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network = network
        self.logger = logger
        self._errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse_from_file(self, model: str) -> bool:
        try:
            with open(model, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            self._errors.append(ParserError(f"Failed to open file {model}: {exc.strerror}"))
            return False
        return self.parse(data, model)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx
        from onnx import external_data_helper

        try:
            proto = onnx.load_model_from_string(bytes(model))
            if not proto.graph.output:
                raise ValueError("the graph has no outputs")
        except Exception as exc:  # protobuf raises several types for garbage
            self._errors.append(ParserError(f"Failed to parse ONNX model: {exc}"))
            self.logger.log(Severity.ERROR, "ModelImporter.cpp: Failed to parse ONNX model from file")
            return False
        if any(external_data_helper.uses_external_data(t) for t in proto.graph.initializer):
            # Like TensorRT: weights in a separate file are found beside the model's path.
            if path is None:
                self._errors.append(ParserError("Failed to import initializer: the model keeps its weights in an "
                                                "external data file; parse it with parse_from_file or pass "
                                                "its path."))
                return False
            try:
                external_data_helper.load_external_data_for_model(proto, os.path.dirname(os.path.abspath(path)))
            except Exception as exc:
                self._errors.append(ParserError(f"Failed to import initializer: {exc}"))
                return False
            model = proto.SerializeToString()
        initializers = {init.name for init in proto.graph.initializer}
        try:
            inputs = [_tensor(v) for v in proto.graph.input if v.name not in initializers]
            outputs = [_tensor(v) for v in proto.graph.output]
        except ValueError as exc:
            self._errors.append(ParserError(str(exc)))
            return False
        self.network._inputs = inputs
        self.network._outputs = outputs
        self.network.onnx_bytes = bytes(model)
        return True


def _tensor(value: Any) -> ITensor:
    tensor_type = value.type.tensor_type
    dtype = _ONNX_TYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise ValueError(f"tensor {value.name}: ONNX element type {tensor_type.elem_type} is not supported")
    shape: list[int] = []
    symbols: list[str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(int(dim.dim_value))
            symbols.append(None)
        else:
            shape.append(-1)
            symbols.append(dim.dim_param or f"unk_{value.name}_{len(shape)}")
    return ITensor(value.name, tuple(shape), dtype, tuple(symbols))


# -- builder ----------------------------------------------------------------------------------


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    # TensorRT's keyword names (input, min, max) shadow builtins; callers may pass them by name.
    def set_shape(self, input: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]) -> None:
        lo, mid, hi = tuple(int(d) for d in min), tuple(int(d) for d in opt), tuple(int(d) for d in max)
        if not (len(lo) == len(mid) == len(hi)) or any(d < 0 for d in lo):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        if any(a > b for a, b in zip(lo, mid, strict=True)):
            raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
        if any(a > b for a, b in zip(mid, hi, strict=True)):
            raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
        self._shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[tuple[int, ...]]:
        return list(self._shapes.get(input, ()))

    def __bool__(self) -> bool:
        return True


class ITimingCache:
    def __init__(self, device: dict[str, str], version: str, entries: dict[str, str] | None = None) -> None:
        self.device = device
        self.version = version
        self.entries = dict(entries or {})

    def serialize(self) -> HostMemory:
        body = json.dumps({"device": self.device, "version": self.version, "entries": self.entries},
                          sort_keys=True).encode()
        return HostMemory(TIMING_CACHE_MAGIC + body)

    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if (input_cache.device, input_cache.version) != (self.device, self.version) and not ignore_mismatch:
            return False
        for key, value in input_cache.entries.items():
            self.entries.setdefault(key, value)
        return True

    def reset(self) -> bool:
        self.entries.clear()
        return True


class _BuilderConfigBase:
    _world: _World

    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self._pools: dict[int, int] = {int(MemoryPoolType.WORKSPACE): self._world.driver.total_bytes}
        self._flags: set[int] = set()
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self._pools[int(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(int(pool), 0)

    def set_flag(self, flag: Any) -> None:
        self._flags.add(int(flag))

    def clear_flag(self, flag: Any) -> None:
        self._flags.discard(int(flag))

    def get_flag(self, flag: Any) -> bool:
        return int(flag) in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        world = self._world
        if not data:
            return ITimingCache(world.device_id, world.version)
        if not data.startswith(TIMING_CACHE_MAGIC):
            self._logger.log(Severity.WARNING, "Timing cache is corrupted or not a TensorRT timing cache; "
                                               "starting an empty one.")
            return ITimingCache(world.device_id, world.version)
        try:
            body = json.loads(data[len(TIMING_CACHE_MAGIC):])
            return ITimingCache(body["device"], body["version"], body["entries"])
        except (ValueError, KeyError):
            self._logger.log(Severity.WARNING, "Timing cache is truncated; starting an empty one.")
            return ITimingCache(world.device_id, world.version)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        world = self._world
        if (cache.device, cache.version) != (world.device_id, world.version) and not ignore_mismatch:
            message = "Timing cache was created on a different device or TensorRT version."
            self._logger.log(Severity.ERROR, message)
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache


class _BuilderBase:
    _world: _World
    _config_class: type
    _builder_flag: Any

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.max_threads = 1

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> Any:
        return self._config_class(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: Any) -> HostMemory | None:
        world = self._world
        log = self.logger.log
        if world.build_hook is not None:
            world.build_hook()
        if world.no_context_error(self.logger, "builder.cpp::buildSerializedNetwork"):
            return None
        if not network.num_outputs:
            log(Severity.ERROR, "4: [network.cpp::validate] Error Code 4: Internal Error (Network must have "
                                "at least one output)")
            return None
        profile = config._profiles[0] if config._profiles else None
        profile_json: dict[str, list[list[int]]] = {}
        for tensor in network._inputs:
            if -1 not in tensor.shape:
                continue
            shapes = profile.get_shape(tensor.name) if profile is not None else []
            if not shapes:
                log(Severity.ERROR, "4: [network.cpp::validate] Error Code 4: Internal Error "
                                    f"({tensor.name}: dynamic input is missing dimensions in profile 0.)")
                return None
            if any(s != -1 and s != m for s, m in zip(tensor.shape, shapes[0], strict=True)):
                log(Severity.ERROR, "4: [network.cpp::validate] Error Code 4: Internal Error "
                                    f"({tensor.name}: profile dimensions differ from the network's "
                                    "fixed dimensions.)")
                return None
            profile_json[tensor.name] = [list(s) for s in shapes]
        workspace = config.get_memory_pool_limit(MemoryPoolType.WORKSPACE)
        try:  # tactics run in the workspace: it must fit on the device while building
            scratch = world.driver.allocate("cudaMalloc", max(workspace, 1))
        except CudaError:
            log(Severity.ERROR, f"2: [virtualMemoryBuffer.cpp::resizePhysical] Error Code 2: OutOfMemory "
                                f"(Requested size was {workspace} bytes.)")
            return None
        try:
            onnx_sha = hashlib.sha256(network.onnx_bytes).hexdigest()
            cache = config.get_timing_cache()
            if cache is not None:
                cache.entries.setdefault(onnx_sha[:16], f"tactics for {network.name}")
            fp16 = self._fp16_set(config)
            header = {
                "trt_version": world.version,
                "device": world.device_id,
                "fp16": fp16,
                "onnx_sha256": onnx_sha,
                "onnx_bytes": len(network.onnx_bytes),
                "inputs": [t.to_json() for t in network._inputs],
                "outputs": [t.to_json() for t in network._outputs],
                "profile": profile_json,
                "device_memory_size": _activation_bytes(network, profile_json),
            }
        finally:
            world.driver.release("cudaFree", scratch)
        blob = json.dumps(header, sort_keys=True).encode()
        return HostMemory(PLAN_MAGIC + _HEADER_LENGTH.pack(len(blob)) + blob + network.onnx_bytes)

    def _fp16_set(self, config: Any) -> bool:
        flag = getattr(self._builder_flag, "FP16", None)
        return flag is not None and config.get_flag(flag)


def _activation_bytes(network: INetworkDefinition, profile: dict[str, list[list[int]]]) -> int:
    """Scratch the engine needs per execution context: twice its I/O at the largest shapes."""
    values = _bind_symbols(network._inputs, {name: shapes[2] for name, shapes in profile.items()})
    total = 0
    for tensor in (*network._inputs, *network._outputs):
        shape = _resolve(tensor, values, default=1)
        total += volume(shape) * np.dtype(nptype(tensor.dtype)).itemsize
    return max(_MIN_ACTIVATION_BYTES, 2 * total)


def _bind_symbols(inputs: Sequence[ITensor], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    values: dict[str, int] = {}
    for tensor in inputs:
        shape = shapes.get(tensor.name)
        if shape is None:
            continue
        for symbol, dim in zip(tensor.symbols, shape, strict=True):
            if symbol is not None:
                values.setdefault(symbol, int(dim))
    return values


def _resolve(tensor: ITensor, values: dict[str, int], default: int = -1) -> tuple[int, ...]:
    pairs = zip(tensor.shape, tensor.symbols, strict=True)
    return tuple(d if s is None else values.get(s, default) for d, s in pairs)


# -- runtime, engine, execution context -----------------------------------------------------


class _RuntimeBase:
    _world: _World
    _engine_class: type

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.max_threads = 1

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        world = self._world
        log = self.logger.log
        data = bytes(memoryview(serialized_engine))
        if not data.startswith(PLAN_MAGIC):
            log(Severity.ERROR, "1: [runtime.cpp::parsePlan] Error Code 1: Serialization (Serialization "
                                "assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)")
            return None
        try:
            start = len(PLAN_MAGIC)
            (length,) = _HEADER_LENGTH.unpack_from(data, start)
            start += _HEADER_LENGTH.size
            header = json.loads(data[start:start + length])
            onnx_bytes = data[start + length:]
            if len(onnx_bytes) != header["onnx_bytes"] or (
                    hashlib.sha256(onnx_bytes).hexdigest() != header["onnx_sha256"]):
                raise ValueError("truncated or damaged")
        except (struct.error, ValueError, KeyError):
            log(Severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReaderInitCommon] Error Code 1: "
                                "Serialization (Serialization assertion sizeRead == expected failed: the "
                                "plan is truncated or corrupt.)")
            return None
        if header["trt_version"] != world.version:
            log(Severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReaderInitCommon] Error Code 1: "
                                "Serialization (The engine plan file is not compatible with this version of "
                                f"TensorRT, expecting library version {world.version} got "
                                f"{header['trt_version']}, please rebuild.)")
            return None
        device = world.device_id
        if header["device"]["compute_capability"] != device["compute_capability"]:
            log(Severity.ERROR, "6: The engine plan file is generated on an incompatible device, expecting "
                                f"compute {device['compute_capability']} got compute "
                                f"{header['device']['compute_capability']}, please rebuild.")
            return None
        if header["device"]["name"] != device["name"]:
            log(Severity.WARNING, "Using an engine plan file across different models of devices is not "
                                  "recommended and is likely to affect performance or even cause errors.")
        if world.no_context_error(self.logger, "runtime.cpp::deserializeCudaEngine"):
            return None
        try:
            weights = world.driver.allocate("cudaMalloc", max(1, len(onnx_bytes)))
        except CudaError:
            log(Severity.ERROR, f"2: [executionContext.cpp::commonEmitDebugTensor] Error Code 2: OutOfMemory "
                                f"(Requested size was {len(onnx_bytes)} bytes.)")
            return None
        return self._engine_class(header, onnx_bytes, data, weights, self.logger)


class _EngineBase:
    _world: _World
    _context_class: type

    def __init__(self, header: dict[str, Any], onnx_bytes: bytes, plan: bytes, weights: int,
                 logger: ILogger) -> None:
        self._header = header
        self._onnx = onnx_bytes
        self._plan = plan
        self._weights: int | None = weights
        self._logger = logger
        self._inputs = [ITensor.from_json(t) for t in header["inputs"]]
        self._outputs = [ITensor.from_json(t) for t in header["outputs"]]
        self._tensors = {t.name: t for t in (*self._inputs, *self._outputs)}
        self._session: Any = None
        self._session_lock = threading.Lock()  # guards _session creation and _output_shapes
        self._output_shapes: dict[tuple[tuple[str, tuple[int, ...]], ...], dict[str, tuple[int, ...]]] = {}
        self.name = "fake-engine"

    def __del__(self) -> None:
        weights, self._weights = self._weights, None
        if weights is not None:
            try:
                self._world.driver.release("cudaFree", weights)
            except CudaError:  # the primary context was reset: the memory is already gone
                pass

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def _device_memory(self) -> int:
        return int(self._header["device_memory_size"])

    def get_tensor_name(self, index: int) -> str:
        names = [t.name for t in (*self._inputs, *self._outputs)]
        if not 0 <= index < len(names):
            raise IndexError(index)
        return names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        if name in (t.name for t in self._inputs):
            return TensorIOMode.INPUT
        if name in (t.name for t in self._outputs):
            return TensorIOMode.OUTPUT
        return TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        tensor = self._tensors.get(name)
        return tensor.shape if tensor is not None else (-1,)

    def get_tensor_dtype(self, name: str) -> DataType:
        tensor = self._tensors.get(name)
        return tensor.dtype if tensor is not None else DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        shapes = self._header["profile"].get(name)
        if shapes is None:
            shape = self.get_tensor_shape(name)
            return [shape, shape, shape]
        return [tuple(s) for s in shapes]

    def serialize(self) -> HostMemory:
        return HostMemory(self._plan)

    def create_execution_context(self) -> Any:
        world = self._world
        if world.no_context_error(self._logger, "engine.cpp::createExecutionContext"):
            return None
        try:
            memory = world.driver.allocate("cudaMalloc", self._device_memory())
        except CudaError:
            self._logger.log(Severity.ERROR, "1: [defaultAllocator.cpp::allocate] Error Code 1: Cuda Runtime "
                                             "(out of memory)")
            return None
        return self._context_class(self, memory)

    def output_shapes(self, input_shapes: tuple[tuple[str, tuple[int, ...]], ...]) -> dict[str, tuple[int, ...]]:
        """Output shapes for these input shapes, found by running the graph once (cached)."""
        with self._session_lock:
            cached = self._output_shapes.get(input_shapes)
        if cached is not None:
            return cached
        feeds = {}
        for tensor in self._inputs:
            shape = dict(input_shapes)[tensor.name]
            feeds[tensor.name] = np.zeros(shape, dtype=np.dtype(nptype(tensor.dtype)))
        names = [t.name for t in self._outputs]
        values = self.session().run(names, feeds)
        shapes = {name: tuple(int(d) for d in value.shape) for name, value in zip(names, values, strict=True)}
        with self._session_lock:
            self._output_shapes[input_shapes] = shapes
        return shapes

    def session(self) -> Any:
        with self._session_lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.log_severity_level = 3
                self._session = ort.InferenceSession(self._onnx, sess_options=options,
                                                     providers=["CPUExecutionProvider"])
            return self._session


class _ContextBase:
    _world: _World

    def __init__(self, engine: _EngineBase, memory: int) -> None:
        self.engine = engine
        self.name = ""
        self._memory: int | None = memory
        self._addresses: dict[str, int] = {}
        # Static inputs need no set_input_shape; dynamic ones start unset.
        self._shapes = {t.name: t.shape for t in engine._inputs if -1 not in t.shape}
        self._lock = threading.Lock()  # a context runs one enqueue at a time, like TensorRT's contract

    def __del__(self) -> None:
        memory, self._memory = self._memory, None
        if memory is not None:
            try:
                self._world.driver.release("cudaFree", memory)
            except CudaError:
                pass

    def _error(self, text: str) -> bool:
        self.engine._logger.log(Severity.ERROR, text)
        return False

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        engine = self.engine
        if engine.get_tensor_mode(name) is not TensorIOMode.INPUT:
            return self._error("3: [executionContext.cpp::setInputShape] Error Code 3: API Usage Error "
                               f"({name} is not an input tensor.)")
        dims = tuple(int(d) for d in shape)
        lo, _, hi = engine.get_tensor_profile_shape(name, 0)
        if len(dims) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, dims, hi, strict=True)):
            return self._error("3: [executionContext.cpp::setInputShape] Error Code 3: API Usage Error "
                               "(Parameter check failed, condition: satisfyProfile. Set dimension "
                               f"{list(dims)} for tensor {name} does not satisfy any optimization profiles: "
                               f"min {list(lo)}, max {list(hi)}.)")
        self._shapes[name] = dims
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        engine = self.engine
        tensor = engine._tensors.get(name)
        if tensor is None:
            return (-1,)
        if engine.get_tensor_mode(name) is TensorIOMode.INPUT:
            return self._shapes.get(name, tensor.shape)
        shape = _resolve(tensor, _bind_symbols(engine._inputs, self._shapes))
        if -1 in shape and all(t.name in self._shapes for t in engine._inputs):
            # A dimension no input names (e.g. after a Resize): TensorRT's shape analysis knows it
            # once the inputs' shapes are set; the fake finds it by running the graph on zeros.
            shape = engine.output_shapes(tuple((t.name, self._shapes[t.name]) for t in engine._inputs))[name]
        return shape

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self.engine.get_tensor_mode(name) is TensorIOMode.NONE:
            return self._error("3: [executionContext.cpp::setTensorAddress] Error Code 3: Internal Error "
                               f"(Given invalid tensor name: {name})")
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        engine = self.engine
        world = self._world
        if world.no_context_error(engine._logger, "executionContext.cpp::enqueueV3"):
            return False
        if not world.driver.is_live_stream(int(stream_handle)):
            return self._error("1: [executionContext.cpp::enqueueV3] Error Code 1: Cuda Runtime (invalid "
                               "resource handle)")
        for tensor in (*engine._inputs, *engine._outputs):
            if not self._addresses.get(tensor.name):
                kind = "input" if tensor in engine._inputs else "output"
                return self._error(
                    "3: [executionContext.cpp::enqueueV3] Error Code 3: API Usage Error (Parameter check "
                    "failed, condition: mContext.profileObliviousBindings[profileObliviousIndex] || "
                    f"getPtrOrNull(mOutputAllocators, profileObliviousIndex). Address is not set for {kind} "
                    f"tensor {tensor.name}. Call setInputTensorAddress or setTensorAddress before "
                    "enqueue/execute.)")
        feeds: dict[str, np.ndarray] = {}
        with self._lock:
            try:
                for tensor in engine._inputs:
                    shape = self._shapes.get(tensor.name)
                    if shape is None or -1 in shape:
                        return self._error("3: [executionContext.cpp::enqueueV3] Error Code 3: API Usage "
                                           f"Error (Input shape of {tensor.name} is not specified. Call "
                                           "setInputShape.)")
                    dtype = np.dtype(nptype(tensor.dtype))
                    nbytes = volume(shape) * dtype.itemsize
                    raw = world.driver.read("enqueueV3", self._addresses[tensor.name], nbytes)
                    feeds[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
                names = [t.name for t in engine._outputs]
                values = engine.session().run(names, feeds)
                for tensor, value in zip(engine._outputs, values, strict=True):
                    expected = self.get_tensor_shape(tensor.name)
                    if tuple(value.shape) != expected:
                        return self._error("7: [shapeMachine.cpp::execute] Error Code 7: Internal Error "
                                           f"(output {tensor.name} has shape {list(value.shape)}, expected "
                                           f"{list(expected)})")
                    out = np.ascontiguousarray(value, dtype=np.dtype(nptype(tensor.dtype)))
                    if engine._header["fp16"] and out.dtype == np.float32:
                        out = out.astype(np.float16).astype(np.float32)  # what FP16 kernels do to precision
                    world.driver.write("enqueueV3", self._addresses[tensor.name], out)
            except CudaError as exc:
                return self._error(f"1: [executionContext.cpp::enqueueV3] Error Code 1: Cuda Runtime ({exc})")
        return True


def make_fake_tensorrt(
    driver: FakeCudaDriver,
    *,
    version: str = "10.3.0",
    fast_fp16: bool = True,
    build_hook: Callable[[], None] | None = None,
) -> ModuleType:
    """Returns a module object that stands in for ``import tensorrt`` on the fake device.

    Args:
        driver: the fake GPU the engines live on.
        version: the TensorRT version to impersonate; API differences follow it.
        fast_fp16: what ``Builder.platform_has_fast_fp16`` says (before TensorRT 11).
        build_hook: called at the start of every build (tests block or kill the build with it).
    """
    world = _World(driver, version, fast_fp16, build_hook)
    module = ModuleType("tensorrt", "Fake TensorRT (edge_agent.engines.fakes.tensorrt)")
    module.__version__ = version  # type: ignore[attr-defined]

    flag_names = ["INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS"]
    if world.major < 11:
        flag_names.insert(0, "FP16")
    flags = {name: i for i, name in enumerate(flag_names)}
    builder_flag = enum.IntEnum("BuilderFlag", flags)  # type: ignore[misc]
    creation_flags = {}
    if world.major < 11:
        creation_flags["EXPLICIT_BATCH"] = 0
    if world.major >= 10:
        creation_flags["STRONGLY_TYPED"] = 1
    creation_flag = enum.IntEnum("NetworkDefinitionCreationFlag", creation_flags)  # type: ignore[misc]

    config_class = type("IBuilderConfig", (_BuilderConfigBase,), {"_world": world})
    builder_attrs: dict[str, Any] = {"_world": world, "_config_class": config_class,
                                     "_builder_flag": builder_flag}
    if world.major < 11:
        builder_attrs["platform_has_fast_fp16"] = property(lambda self: self._world.fast_fp16)
    if world.major < 10:  # the implicit-batch API, gone in TensorRT 10
        builder_attrs["max_batch_size"] = property(lambda self: 1, lambda self, value: None)
    builder_class = type("Builder", (_BuilderBase,), builder_attrs)

    context_class = type("IExecutionContext", (_ContextBase,), {"_world": world})
    engine_attrs: dict[str, Any] = {"_world": world, "_context_class": context_class}
    if world.major < 11:
        engine_attrs["device_memory_size"] = property(lambda self: self._device_memory())
    if (world.major, world.minor) >= (10, 1):
        engine_attrs["device_memory_size_v2"] = property(lambda self: self._device_memory())
    engine_class = type("ICudaEngine", (_EngineBase,), engine_attrs)
    runtime_class = type("Runtime", (_RuntimeBase,), {"_world": world, "_engine_class": engine_class})

    module.__dict__.update({
        "ILogger": ILogger, "Logger": Logger, "Severity": Severity, "DataType": DataType,
        "TensorIOMode": TensorIOMode, "MemoryPoolType": MemoryPoolType, "BuilderFlag": builder_flag,
        "NetworkDefinitionCreationFlag": creation_flag, "Builder": builder_class,
        "IBuilderConfig": config_class,
        "INetworkDefinition": INetworkDefinition, "ITensor": ITensor, "OnnxParser": OnnxParser,
        "IOptimizationProfile": IOptimizationProfile, "ITimingCache": ITimingCache, "Runtime": runtime_class,
        "ICudaEngine": engine_class, "IExecutionContext": context_class, "IHostMemory": HostMemory,
        "nptype": nptype, "volume": volume, "init_libnvinfer_plugins": lambda logger, namespace: True,
        "float32": DataType.FLOAT, "float16": DataType.HALF,
    })
    return module
