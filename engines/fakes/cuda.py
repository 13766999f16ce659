"""A fake CUDA device: host memory posing as device memory, failing like the real driver.

It enforces what bites real multi-threaded servers: every call needs a current
context on the calling thread (else ``CUDA_ERROR_INVALID_CONTEXT``), allocations
beyond the configured total fail with ``CUDA_ERROR_OUT_OF_MEMORY``, and pointers
and streams must be live. It counts what is allocated so tests can check that
unloading gives everything back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.engines.cuda import (
    CUDA_ERROR_INVALID_CONTEXT,
    CUDA_ERROR_INVALID_HANDLE,
    CUDA_ERROR_INVALID_VALUE,
    CUDA_ERROR_OUT_OF_MEMORY,
    CudaError,
    DeviceProperties,
)

# Device addresses look like real ones and are aligned like cudaMalloc's.
_BASE_ADDRESS = 0x7F00_0000_0000
_ALIGNMENT_BYTES = 256
_HOST_BASE_ADDRESS = 0x5500_0000_0000


@dataclass(frozen=True)
class FakeContext:
    device_index: int
    generation: int  # bumps when the primary context is fully released and recreated


@dataclass
class FakeStream:
    handle: int


class FakeCudaDriver:
    """A CUDA driver over one fake GPU; thread-safe like the real one."""

    name = "fake"

    def __init__(
        self,
        total_bytes: int,
        *,
        gpu_name: str = "Fake GPU",
        compute_capability: tuple[int, int] = (8, 7),
        integrated: bool = False,
        driver_version: str = "12.2",
    ) -> None:
        if total_bytes <= 0:
            raise ValueError(f"total_bytes must be positive, got {total_bytes}")
        self.total_bytes = int(total_bytes)
        self.gpu_name = gpu_name
        self.compute_capability = compute_capability
        self.integrated = integrated
        self._driver_version = driver_version
        # Guards everything below; CUDA calls from many threads serialize here.
        self._lock = threading.Lock()
        self._allocations: dict[int, np.ndarray] = {}  # device address -> backing bytes
        self._host: dict[int, np.ndarray] = {}  # pinned address -> backing bytes
        self._streams: dict[int, FakeStream] = {}
        self._next_address = _BASE_ADDRESS
        self._next_host_address = _HOST_BASE_ADDRESS
        self._next_stream = 1
        self._retains = 0
        self._generation = 0
        self._local = threading.local()  # .stack: this thread's context stack
        self.peak_bytes = 0

    # -- bookkeeping the tests read ---------------------------------------------------------

    @property
    def allocated_bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._allocations.values())

    @property
    def allocation_count(self) -> int:
        with self._lock:
            return len(self._allocations)

    @property
    def host_allocation_count(self) -> int:
        with self._lock:
            return len(self._host)

    @property
    def stream_count(self) -> int:
        with self._lock:
            return len(self._streams)

    def snapshot(self) -> tuple[int, int, int, int]:
        """(device bytes, device allocations, pinned buffers, streams): compare before and after."""
        with self._lock:
            used = sum(a.nbytes for a in self._allocations.values())
            return used, len(self._allocations), len(self._host), len(self._streams)

    # -- context ----------------------------------------------------------------------------

    def _stack(self) -> list[FakeContext]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def has_current_context(self) -> bool:
        stack = self._stack()
        with self._lock:
            return bool(stack) and self._retains > 0 and stack[-1].generation == self._generation

    def require_context(self, call: str) -> None:
        """Fails like the driver when this thread has no usable current context."""
        stack = self._stack()
        if not stack:
            raise CudaError(call, CUDA_ERROR_INVALID_CONTEXT,
                            "invalid device context: no CUDA context is current on this thread")
        with self._lock:
            if self._retains == 0 or stack[-1].generation != self._generation:
                raise CudaError(call, CUDA_ERROR_INVALID_CONTEXT,
                                "invalid device context: the current context was released")

    def device_properties(self, index: int) -> DeviceProperties:
        if index != 0:
            raise CudaError("cuDeviceGet", "CUDA_ERROR_INVALID_DEVICE", f"no GPU {index} (the fake has one)")
        return DeviceProperties(0, self.gpu_name, self.compute_capability, self.total_bytes, self.integrated)

    def retain_primary_context(self, index: int) -> FakeContext:
        self.device_properties(index)
        with self._lock:
            self._retains += 1
            return FakeContext(index, self._generation)

    def release_primary_context(self, index: int, context: Any) -> None:
        with self._lock:
            if self._retains == 0:
                raise CudaError("cuDevicePrimaryCtxRelease", CUDA_ERROR_INVALID_CONTEXT,
                                "the primary context is not retained")
            self._retains -= 1
            if self._retains == 0:  # the driver resets the context: everything in it is gone
                self._allocations.clear()
                self._streams.clear()
                self._generation += 1

    def push_context(self, context: Any) -> None:
        if not isinstance(context, FakeContext):
            raise CudaError("cuCtxPushCurrent", CUDA_ERROR_INVALID_CONTEXT, f"not a context: {context!r}")
        self._stack().append(context)

    def pop_context(self) -> None:
        stack = self._stack()
        if not stack:
            raise CudaError("cuCtxPopCurrent", CUDA_ERROR_INVALID_CONTEXT,
                            "no context is current on this thread")
        stack.pop()

    # -- memory -----------------------------------------------------------------------------

    def mem_get_info(self) -> tuple[int, int]:
        self.require_context("cuMemGetInfo")
        with self._lock:
            used = sum(a.nbytes for a in self._allocations.values())
        return self.total_bytes - used, self.total_bytes

    def malloc(self, nbytes: int) -> int:
        self.require_context("cuMemAlloc")
        return self.allocate("cuMemAlloc", nbytes)

    def allocate(self, call: str, nbytes: int) -> int:
        """Allocates device memory for ``call`` (the fake TensorRT uses this for its own memory)."""
        if nbytes <= 0:
            raise CudaError(call, CUDA_ERROR_INVALID_VALUE, f"cannot allocate {nbytes} bytes")
        with self._lock:
            used = sum(a.nbytes for a in self._allocations.values())
            if used + nbytes > self.total_bytes:
                raise CudaError(call, CUDA_ERROR_OUT_OF_MEMORY,
                                f"out of memory: {nbytes} bytes asked, {self.total_bytes - used} free")
            address = self._next_address
            self._next_address += (nbytes + _ALIGNMENT_BYTES - 1) // _ALIGNMENT_BYTES * _ALIGNMENT_BYTES
            self._allocations[address] = np.zeros(nbytes, dtype=np.uint8)
            self.peak_bytes = max(self.peak_bytes, used + nbytes)
            return address

    def free(self, address: int) -> None:
        self.require_context("cuMemFree")
        self.release("cuMemFree", address)

    def release(self, call: str, address: int) -> None:
        with self._lock:
            if self._allocations.pop(address, None) is None:
                raise CudaError(call, CUDA_ERROR_INVALID_VALUE, f"no allocation starts at {address:#x}")

    def _locate(self, call: str, address: int, nbytes: int) -> np.ndarray:
        """The writable bytes [address, address + nbytes) (caller holds the lock)."""
        for start, block in self._allocations.items():
            if start <= address < start + block.nbytes:
                offset = address - start
                if offset + nbytes > block.nbytes:
                    raise CudaError(call, CUDA_ERROR_INVALID_VALUE,
                                    f"{nbytes} bytes at {address:#x} run past the end of a "
                                    f"{block.nbytes}-byte allocation")
                return block[offset:offset + nbytes]
        raise CudaError(call, CUDA_ERROR_INVALID_VALUE, f"{address:#x} is not device memory")

    def read(self, call: str, address: int, nbytes: int) -> bytes:
        """Copies bytes out of device memory (what a kernel reading its inputs does)."""
        with self._lock:
            return self._locate(call, address, nbytes).tobytes()

    def write(self, call: str, address: int, data: bytes | np.ndarray) -> None:
        """Writes bytes into device memory (what a kernel writing its outputs does)."""
        raw = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)  # type: ignore[arg-type]
        with self._lock:
            self._locate(call, address, raw.nbytes)[:] = raw

    def host_alloc(self, nbytes: int) -> tuple[int, np.ndarray]:
        self.require_context("cuMemAllocHost")
        if nbytes <= 0:
            raise CudaError("cuMemAllocHost", CUDA_ERROR_INVALID_VALUE, f"cannot allocate {nbytes} bytes")
        array = np.zeros(nbytes, dtype=np.uint8)
        with self._lock:
            address = self._next_host_address
            self._next_host_address += (nbytes + 4095) // 4096 * 4096
            self._host[address] = array
        return address, array

    def host_free(self, address: int) -> None:
        self.require_context("cuMemFreeHost")
        with self._lock:
            if self._host.pop(address, None) is None:
                raise CudaError("cuMemFreeHost", CUDA_ERROR_INVALID_VALUE,
                                f"no pinned buffer at {address:#x}")

    def _require_stream(self, call: str, stream: Any) -> None:
        with self._lock:
            if not isinstance(stream, FakeStream) or stream.handle not in self._streams:
                raise CudaError(call, CUDA_ERROR_INVALID_HANDLE,
                                f"invalid resource handle: stream {stream!r}")

    def memcpy_htod_async(self, device_address: int, host: np.ndarray, stream: Any) -> None:
        self.require_context("cuMemcpyHtoDAsync")
        self._require_stream("cuMemcpyHtoDAsync", stream)
        self.write("cuMemcpyHtoDAsync", device_address, np.ascontiguousarray(host))

    def memcpy_dtoh_async(self, host: np.ndarray, device_address: int, stream: Any) -> None:
        self.require_context("cuMemcpyDtoHAsync")
        self._require_stream("cuMemcpyDtoHAsync", stream)
        data = self.read("cuMemcpyDtoHAsync", device_address, host.nbytes)
        host.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)

    # -- streams ----------------------------------------------------------------------------

    def stream_create(self) -> FakeStream:
        self.require_context("cuStreamCreate")
        with self._lock:
            stream = FakeStream(self._next_stream)
            self._next_stream += 1
            self._streams[stream.handle] = stream
        return stream

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def is_live_stream(self, handle: int) -> bool:
        with self._lock:
            return handle in self._streams

    def stream_synchronize(self, stream: Any) -> None:
        self.require_context("cuStreamSynchronize")
        self._require_stream("cuStreamSynchronize", stream)  # work on a fake stream completes at once

    def stream_destroy(self, stream: Any) -> None:
        self.require_context("cuStreamDestroy")
        self._require_stream("cuStreamDestroy", stream)
        with self._lock:
            del self._streams[stream.handle]

    def driver_version(self) -> str:
        return self._driver_version

    def runtime_version(self) -> str:
        return self._driver_version
