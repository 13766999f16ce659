"""One wrapper for everything CUDA, every call checked.

:class:`CudaDevice` is what the rest of the agent uses: device properties, the
device's primary context (retained once per agent and made current around
every CUDA call, on whatever thread makes it), the free-memory query, device
and pinned host allocations, async copies and streams. Behind it sits a
*driver*, one of:

* ``pycuda`` (``pycuda.driver``),
* ``cuda-python`` (NVIDIA's ``cuda.bindings.driver``, or ``cuda.cuda`` before 12.6),
* the fake device in :mod:`edge_agent.engines.fakes.cuda` (tests, ``--fake-gpu-memory``).

Every driver turns a failed call into :class:`CudaError` naming the call and
the CUDA error (``CUDA_ERROR_OUT_OF_MEMORY``, ``CUDA_ERROR_INVALID_CONTEXT``...),
so the same ``except`` catches the real bug and its fake. The real bindings are
imported lazily, in :func:`import_optional`, which names the extra to install.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from edge_agent.engines.base import MemoryInfo
from edge_agent.errors import BackendUnavailableError, EdgeAgentError

LOGGER = logging.getLogger(__name__)

GPU_EXTRA_HINT = "pip install 'edge-agent[gpu]'"
BINDING_CHOICES = ("auto", "cuda-python", "pycuda")
# Tried in this order by "auto": cuda-python is what NVIDIA's TensorRT samples use now.
_AUTO_ORDER = ("cuda-python", "pycuda")

MEMINFO_PATH = Path("/proc/meminfo")
DEVICE_NAME_MAX_BYTES = 256

# CUDA error names the agent reacts to; the same names come from every driver.
CUDA_ERROR_OUT_OF_MEMORY = "CUDA_ERROR_OUT_OF_MEMORY"
CUDA_ERROR_INVALID_CONTEXT = "CUDA_ERROR_INVALID_CONTEXT"
CUDA_ERROR_INVALID_VALUE = "CUDA_ERROR_INVALID_VALUE"
CUDA_ERROR_INVALID_HANDLE = "CUDA_ERROR_INVALID_HANDLE"


class CudaError(EdgeAgentError):
    """A CUDA call failed; ``call`` and ``code`` say which and how."""

    def __init__(self, call: str, code: str, detail: str = "") -> None:
        self.call = call
        self.code = code
        self.detail = detail
        text = f"CUDA call {call} failed with {code}"
        if detail and detail != code:
            text += f" ({detail})"
        super().__init__(text + ".")

    @property
    def out_of_memory(self) -> bool:
        return self.code == CUDA_ERROR_OUT_OF_MEMORY

    @property
    def invalid_context(self) -> bool:
        return self.code == CUDA_ERROR_INVALID_CONTEXT


@dataclass(frozen=True)
class DeviceProperties:
    """What the agent needs to know about one GPU."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_bytes: int
    integrated: bool  # shares memory with the CPU (Jetson)

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


class CudaDriver(Protocol):
    """The raw operations one CUDA binding provides; each raises CudaError naming the call."""

    name: str

    def device_properties(self, index: int) -> DeviceProperties: ...
    def retain_primary_context(self, index: int) -> Any: ...
    def release_primary_context(self, index: int, context: Any) -> None: ...
    def push_context(self, context: Any) -> None: ...
    def pop_context(self) -> None: ...
    def mem_get_info(self) -> tuple[int, int]: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, address: int) -> None: ...
    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]: ...
    def host_free(self, address: int) -> None: ...
    def memcpy_htod_async(self, device_address: int, host: np.ndarray, stream: Any) -> None: ...
    def memcpy_dtoh_async(self, host: np.ndarray, device_address: int, stream: Any) -> None: ...
    def stream_create(self) -> Any: ...
    def stream_handle(self, stream: Any) -> int: ...
    def stream_synchronize(self, stream: Any) -> None: ...
    def stream_destroy(self, stream: Any) -> None: ...
    def driver_version(self) -> str: ...
    def runtime_version(self) -> str: ...


def import_optional(module: str, purpose: str) -> ModuleType:
    """Imports an optional GPU dependency, or says which extra installs it.

    Raises:
        BackendUnavailableError: the module is not installed (or fails to import).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{purpose} needs the Python module {module!r}, which cannot be imported here ({exc}). "
            f"Install the GPU extra ({GPU_EXTRA_HINT}; TensorRT itself comes with JetPack or NVIDIA's "
            "wheels), or run with --backend onnxruntime."
        ) from None


def _version_str(version: int) -> str:
    """12020 -> '12.2' (CUDA's major * 1000 + minor * 10)."""
    return f"{version // 1000}.{(version % 1000) // 10}"


# -- cuda-python -----------------------------------------------------------------------------


class CudaPythonDriver:
    """NVIDIA's cuda-python driver-API bindings: every call returns ``(CUresult, *values)``."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            self._drv: Any = importlib.import_module("cuda.bindings.driver")
            self._rt: Any = importlib.import_module("cuda.bindings.runtime")
        except ImportError:  # cuda-python before 12.6 names the modules cuda.cuda / cuda.cudart
            self._drv = import_optional("cuda.cuda", "The CUDA layer (cuda-python)")
            self._rt = import_optional("cuda.cudart", "The CUDA layer (cuda-python)")
        try:
            self._check("cuInit", self._drv.cuInit(0))
        except CudaError:
            raise
        except Exception as exc:  # no libcuda.so: cuda-python raises its own loader error
            raise BackendUnavailableError(
                f"cuda-python cannot load the NVIDIA driver ({exc}). Install the NVIDIA driver, or run "
                "with --backend onnxruntime."
            ) from None
        self._devices: dict[int, Any] = {}

    def _check(self, call: str, result: Any) -> Any:
        err, values = result[0], result[1:]
        if err != self._drv.CUresult.CUDA_SUCCESS:
            code = getattr(err, "name", str(err))
            detail = ""
            try:
                name_err, text = self._drv.cuGetErrorString(err)
                if name_err == self._drv.CUresult.CUDA_SUCCESS and text:
                    detail = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
            except Exception:  # the error text is a courtesy; never mask the real error
                pass
            raise CudaError(call, code, detail)
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def _device(self, index: int) -> Any:
        if index not in self._devices:
            self._devices[index] = self._check("cuDeviceGet", self._drv.cuDeviceGet(index))
        return self._devices[index]

    def device_properties(self, index: int) -> DeviceProperties:
        dev = self._device(index)
        attr = self._drv.CUdevice_attribute
        raw_name = self._check("cuDeviceGetName", self._drv.cuDeviceGetName(DEVICE_NAME_MAX_BYTES, dev))
        if isinstance(raw_name, bytes):
            name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
        else:
            name = str(raw_name)

        def attribute(which: Any) -> int:
            return int(self._check("cuDeviceGetAttribute", self._drv.cuDeviceGetAttribute(which, dev)))

        major = attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        minor = attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        integrated = attribute(attr.CU_DEVICE_ATTRIBUTE_INTEGRATED)
        total = self._check("cuDeviceTotalMem", self._drv.cuDeviceTotalMem(dev))
        return DeviceProperties(index, name, (int(major), int(minor)), int(total), bool(integrated))

    def retain_primary_context(self, index: int) -> Any:
        dev = self._device(index)
        return self._check("cuDevicePrimaryCtxRetain", self._drv.cuDevicePrimaryCtxRetain(dev))

    def release_primary_context(self, index: int, context: Any) -> None:
        self._check("cuDevicePrimaryCtxRelease", self._drv.cuDevicePrimaryCtxRelease(self._device(index)))

    def push_context(self, context: Any) -> None:
        self._check("cuCtxPushCurrent", self._drv.cuCtxPushCurrent(context))

    def pop_context(self) -> None:
        self._check("cuCtxPopCurrent", self._drv.cuCtxPopCurrent())

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._check("cuMemGetInfo", self._drv.cuMemGetInfo())
        return int(free), int(total)

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cuMemAlloc", self._drv.cuMemAlloc(nbytes)))

    def free(self, address: int) -> None:
        self._check("cuMemFree", self._drv.cuMemFree(self._drv.CUdeviceptr(address)))

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        address = int(self._check("cuMemAllocHost", self._drv.cuMemAllocHost(nbytes)))
        array = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(address))
        return address, array

    def host_free(self, address: int) -> None:
        self._check("cuMemFreeHost", self._drv.cuMemFreeHost(address))

    def memcpy_htod_async(self, device_address: int, host: np.ndarray, stream: Any) -> None:
        self._check("cuMemcpyHtoDAsync", self._drv.cuMemcpyHtoDAsync(
            self._drv.CUdeviceptr(device_address), host.ctypes.data, host.nbytes, stream))

    def memcpy_dtoh_async(self, host: np.ndarray, device_address: int, stream: Any) -> None:
        self._check("cuMemcpyDtoHAsync", self._drv.cuMemcpyDtoHAsync(
            host.ctypes.data, self._drv.CUdeviceptr(device_address), host.nbytes, stream))

    def stream_create(self) -> Any:
        return self._check("cuStreamCreate",
                           self._drv.cuStreamCreate(int(self._drv.CUstream_flags.CU_STREAM_NON_BLOCKING)))

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._check("cuStreamSynchronize", self._drv.cuStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._check("cuStreamDestroy", self._drv.cuStreamDestroy(stream))

    def driver_version(self) -> str:
        return _version_str(int(self._check("cuDriverGetVersion", self._drv.cuDriverGetVersion())))

    def runtime_version(self) -> str:
        err, version = self._rt.cudaRuntimeGetVersion()
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError("cudaRuntimeGetVersion", getattr(err, "name", str(err)))
        return _version_str(int(version))


# -- pycuda ----------------------------------------------------------------------------------


class PyCudaDriver:
    """pycuda's driver module: failures raise ``pycuda.driver.Error`` subclasses."""

    name = "pycuda"

    def __init__(self) -> None:
        self._cuda: Any = import_optional("pycuda.driver", "The CUDA layer (pycuda)")
        self._devices: dict[int, Any] = {}
        self._allocations: dict[int, Any] = {}  # address -> DeviceAllocation (freed explicitly)
        self._host: dict[int, np.ndarray] = {}  # address -> page-locked array
        self._lock = threading.Lock()  # guards _devices, _allocations and _host
        self._call("cuInit", self._cuda.init)

    def _call(self, call: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._cuda.Error as exc:
            raise CudaError(call, _pycuda_code(self._cuda, exc), str(exc)) from None

    def _device(self, index: int) -> Any:
        with self._lock:
            if index not in self._devices:
                self._devices[index] = self._call("cuDeviceGet", self._cuda.Device, index)
            return self._devices[index]

    def device_properties(self, index: int) -> DeviceProperties:
        dev = self._device(index)
        name = self._call("cuDeviceGetName", dev.name)
        major, minor = self._call("cuDeviceComputeCapability", dev.compute_capability)
        total = self._call("cuDeviceTotalMem", dev.total_memory)
        integrated = self._call("cuDeviceGetAttribute", dev.get_attribute,
                                self._cuda.device_attribute.INTEGRATED)
        return DeviceProperties(index, str(name), (int(major), int(minor)), int(total), bool(integrated))

    def retain_primary_context(self, index: int) -> Any:
        return self._call("cuDevicePrimaryCtxRetain", self._device(index).retain_primary_context)

    def release_primary_context(self, index: int, context: Any) -> None:
        # pycuda releases a retained primary context when it is detached.
        self._call("cuDevicePrimaryCtxRelease", context.detach)

    def push_context(self, context: Any) -> None:
        self._call("cuCtxPushCurrent", context.push)

    def pop_context(self) -> None:
        self._call("cuCtxPopCurrent", self._cuda.Context.pop)

    def mem_get_info(self) -> tuple[int, int]:
        free, total = self._call("cuMemGetInfo", self._cuda.mem_get_info)
        return int(free), int(total)

    def malloc(self, nbytes: int) -> int:
        allocation = self._call("cuMemAlloc", self._cuda.mem_alloc, nbytes)
        address = int(allocation)
        with self._lock:
            self._allocations[address] = allocation
        return address

    def free(self, address: int) -> None:
        with self._lock:
            allocation = self._allocations.pop(address, None)
        if allocation is None:
            raise CudaError("cuMemFree", CUDA_ERROR_INVALID_VALUE, f"no allocation at {address:#x}")
        self._call("cuMemFree", allocation.free)

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        array = self._call("cuMemHostAlloc", self._cuda.pagelocked_empty, nbytes, np.uint8)
        address = int(array.ctypes.data)
        with self._lock:
            self._host[address] = array
        return address, array

    def host_free(self, address: int) -> None:
        with self._lock:
            array = self._host.pop(address, None)
        if array is None:
            raise CudaError("cuMemFreeHost", CUDA_ERROR_INVALID_VALUE, f"no pinned buffer at {address:#x}")
        self._call("cuMemFreeHost", array.base.free)  # type: ignore[union-attr]  # pycuda's allocation

    def memcpy_htod_async(self, device_address: int, host: np.ndarray, stream: Any) -> None:
        self._call("cuMemcpyHtoDAsync", self._cuda.memcpy_htod_async, device_address, host, stream)

    def memcpy_dtoh_async(self, host: np.ndarray, device_address: int, stream: Any) -> None:
        self._call("cuMemcpyDtoHAsync", self._cuda.memcpy_dtoh_async, host, device_address, stream)

    def stream_create(self) -> Any:
        return self._call("cuStreamCreate", self._cuda.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cuStreamSynchronize", stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        # pycuda destroys a stream when its last reference goes; make sure nothing is pending.
        self._call("cuStreamSynchronize", stream.synchronize)

    def driver_version(self) -> str:
        return _version_str(int(self._call("cuDriverGetVersion", self._cuda.get_driver_version)))

    def runtime_version(self) -> str:
        # The CUDA version pycuda was compiled against, e.g. (12, 2, 0).
        version = self._call("cudaRuntimeGetVersion", self._cuda.get_version)
        return ".".join(str(v) for v in version[:2])


def _pycuda_code(cuda: Any, exc: Exception) -> str:
    """Maps a pycuda exception to the CUDA error name the other drivers report."""
    text = str(exc).lower()
    if isinstance(exc, cuda.MemoryError) or "out of memory" in text:
        return CUDA_ERROR_OUT_OF_MEMORY
    if "invalid device context" in text or "invalid context" in text:
        return CUDA_ERROR_INVALID_CONTEXT
    if "invalid resource handle" in text or "invalid handle" in text:
        return CUDA_ERROR_INVALID_HANDLE
    if "invalid argument" in text or "invalid value" in text:
        return CUDA_ERROR_INVALID_VALUE
    # pycuda words errors as "<call> failed: <cuGetErrorString text>".
    return "CUDA_ERROR (" + (text.split("failed:", 1)[-1].strip() or type(exc).__name__) + ")"


def load_driver(binding: str = "auto") -> CudaDriver:
    """Returns the CUDA driver for ``binding`` (``auto``, ``cuda-python`` or ``pycuda``).

    Raises:
        BackendUnavailableError: the binding (or, for auto, every binding) is missing, or no
            NVIDIA driver is loaded.
    """
    factories: dict[str, Callable[[], CudaDriver]] = {"cuda-python": CudaPythonDriver, "pycuda": PyCudaDriver}
    if binding != "auto":
        if binding not in factories:
            raise BackendUnavailableError(
                f"Unknown CUDA binding {binding!r}; choose one of {', '.join(BINDING_CHOICES)}."
            )
        return factories[binding]()
    reasons: list[str] = []
    for name in _AUTO_ORDER:
        try:
            driver = factories[name]()
        except BackendUnavailableError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        LOGGER.debug("CUDA binding: %s", name)
        return driver
    raise BackendUnavailableError("No usable CUDA binding. " + " | ".join(reasons))


# -- the wrapper -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PinnedBuffer:
    """Page-locked host memory: ``array`` is a uint8 view of it."""

    address: int
    array: np.ndarray

    def view(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return self.array[:count].view(dtype).reshape(shape)


@dataclass(frozen=True)
class DeviceBuffer:
    address: int
    nbytes: int


class CudaDevice:
    """One GPU and its primary context, shared by everything in the agent.

    CUDA calls need a current context on the calling thread; :meth:`activate` makes
    the primary context current for a block of calls and pops it afterwards, so any
    worker thread can use the device. Calls made outside it fail with
    ``CUDA_ERROR_INVALID_CONTEXT``, as the real driver does.
    """

    def __init__(self, driver: CudaDriver, index: int = 0, *, meminfo_path: Path = MEMINFO_PATH) -> None:
        self.driver = driver
        self.index = index
        self.meminfo_path = Path(meminfo_path)
        self._lock = threading.Lock()  # guards _context and _properties
        self._context: Any = None
        self._properties: DeviceProperties | None = None

    @property
    def properties(self) -> DeviceProperties:
        with self._lock:
            if self._properties is None:
                self._properties = self.driver.device_properties(self.index)
            return self._properties

    def _primary_context(self) -> Any:
        with self._lock:
            if self._context is None:
                self._context = self.driver.retain_primary_context(self.index)
                LOGGER.debug("retained the primary context of GPU %d (%s)", self.index, self.driver.name)
            return self._context

    @contextmanager
    def activate(self) -> Iterator[CudaDevice]:
        """Makes the device's primary context current on this thread for the block."""
        self.driver.push_context(self._primary_context())
        try:
            yield self
        finally:
            self.driver.pop_context()

    def close(self) -> None:
        """Releases the primary context (once every user is done with it)."""
        with self._lock:
            context, self._context = self._context, None
        if context is not None:
            self.driver.release_primary_context(self.index, context)

    # -- memory ---------------------------------------------------------------------------

    def free_memory(self) -> MemoryInfo:
        """Total and free memory for models, by the figure that is right for this device.

        On an integrated GPU (Jetson) CPU and GPU share memory and the CUDA figure leaves
        out reclaimable page cache, so it refuses loads that would fit: use the kernel's
        ``MemAvailable`` there. On a discrete GPU, ask CUDA.
        """
        if self.properties.integrated:
            total, available = read_meminfo(self.meminfo_path)
            return MemoryInfo(total, available, f"MemAvailable ({self.meminfo_path})")
        with self.activate():
            free, total = self.driver.mem_get_info()
        return MemoryInfo(total, free, "cuMemGetInfo")

    def malloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(self.driver.malloc(nbytes), nbytes)

    def free(self, buffer: DeviceBuffer) -> None:
        self.driver.free(buffer.address)

    def host_alloc(self, nbytes: int) -> PinnedBuffer:
        address, array = self.driver.host_alloc(nbytes)
        return PinnedBuffer(address, array)

    def host_free(self, buffer: PinnedBuffer) -> None:
        self.driver.host_free(buffer.address)

    def memcpy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: Any) -> None:
        if src.nbytes > dst.nbytes:
            raise CudaError("cuMemcpyHtoDAsync", CUDA_ERROR_INVALID_VALUE,
                            f"{src.nbytes} bytes do not fit in a {dst.nbytes}-byte device buffer")
        self.driver.memcpy_htod_async(dst.address, src, stream)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: Any) -> None:
        if dst.nbytes > src.nbytes:
            raise CudaError("cuMemcpyDtoHAsync", CUDA_ERROR_INVALID_VALUE,
                            f"{dst.nbytes} bytes asked of a {src.nbytes}-byte device buffer")
        self.driver.memcpy_dtoh_async(dst, src.address, stream)

    # -- streams --------------------------------------------------------------------------

    def stream_create(self) -> Any:
        return self.driver.stream_create()

    def stream_handle(self, stream: Any) -> int:
        return self.driver.stream_handle(stream)

    def synchronize(self, stream: Any) -> None:
        self.driver.stream_synchronize(stream)

    def stream_destroy(self, stream: Any) -> None:
        self.driver.stream_destroy(stream)

    # -- versions -------------------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        props = self.properties
        return {
            "cuda_binding": self.driver.name,
            "cuda_driver": self.driver.driver_version(),
            "cuda_runtime": self.driver.runtime_version(),
            "gpu": props.name,
            "compute_capability": props.compute_capability_str,
        }


def read_meminfo(path: Path = MEMINFO_PATH) -> tuple[int, int]:
    """Returns (MemTotal, MemAvailable) in bytes from a /proc/meminfo-format file.

    Raises:
        BackendUnavailableError: the file cannot be read or lacks those fields.
    """
    values: dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if key in ("MemTotal", "MemAvailable") and parts:
                    unit = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                    values[key] = int(parts[0]) * unit
    except (OSError, ValueError) as exc:
        raise BackendUnavailableError(f"cannot read free memory from {path}: {exc}") from None
    if "MemTotal" not in values or "MemAvailable" not in values:
        raise BackendUnavailableError(
            f"{path} has no MemTotal/MemAvailable lines (kernel older than 3.14?); cannot tell free memory."
        )
    return values["MemTotal"], values["MemAvailable"]


def open_device(binding: str = "auto", index: int = 0, *, meminfo_path: Path = MEMINFO_PATH) -> CudaDevice:
    """Opens GPU ``index`` through the chosen binding and checks that it answers.

    Raises:
        BackendUnavailableError: no binding, no driver, or no such GPU.
    """
    if binding == "auto" and os.environ.get("EDGE_AGENT_CUDA_BINDING"):
        binding = os.environ["EDGE_AGENT_CUDA_BINDING"]
    driver = load_driver(binding)
    device = CudaDevice(driver, index, meminfo_path=meminfo_path)
    try:
        props = device.properties
    except CudaError as exc:
        raise BackendUnavailableError(f"GPU {index} is not usable through {driver.name}: {exc}") from None
    LOGGER.info("GPU %d: %s (compute %s, %.0f MiB, %s) via "
                "%s", index, props.name, props.compute_capability_str,
                props.total_bytes / 2**20, "integrated" if props.integrated else "discrete", driver.name)
    return device
