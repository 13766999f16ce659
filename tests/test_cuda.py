"""The CUDA wrapper over the fake device: contexts per thread, checked calls, the free-memory query."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.engines.cuda import (
    CUDA_ERROR_INVALID_CONTEXT,
    CUDA_ERROR_OUT_OF_MEMORY,
    GPU_EXTRA_HINT,
    CudaDevice,
    CudaError,
    import_optional,
    load_driver,
    read_meminfo,
)
from edge_agent.engines.fakes.cuda import FakeCudaDriver
from edge_agent.errors import BackendUnavailableError

MIB = 2**20
MEMINFO = """MemTotal:        7999484 kB
MemFree:          512000 kB
MemAvailable:    6000000 kB
Buffers:          100000 kB
"""


@pytest.fixture
def driver() -> FakeCudaDriver:
    return FakeCudaDriver(64 * MIB, gpu_name="Orin (fake)", compute_capability=(8, 7))


@pytest.fixture
def device(driver: FakeCudaDriver) -> CudaDevice:
    return CudaDevice(driver)


def test_malloc_raises_invalid_context_when_no_context_is_current(device: CudaDevice) -> None:
    with pytest.raises(CudaError, match=r"cuMemAlloc failed with CUDA_ERROR_INVALID_CONTEXT") as info:
        device.malloc(1024)
    assert info.value.invalid_context and info.value.call == "cuMemAlloc"


def test_context_is_current_only_on_the_thread_that_activated_it(device: CudaDevice) -> None:
    seen: list[str] = []
    inside = threading.Event()
    done = threading.Event()

    def other_thread() -> None:
        inside.wait(10)
        try:
            device.stream_create()
            seen.append("ok")
        except CudaError as exc:
            seen.append(exc.code)
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with device.activate():
        stream = device.stream_create()
        inside.set()
        done.wait(10)
        device.stream_destroy(stream)
    thread.join(10)
    assert seen == [CUDA_ERROR_INVALID_CONTEXT]


def test_many_threads_allocate_and_copy_when_each_activates(device: CudaDevice,
                                                            driver: FakeCudaDriver) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            data = np.random.default_rng(seed).random(256).astype(np.float32)
            with device.activate():
                buffer = device.malloc(data.nbytes)
                pinned = device.host_alloc(data.nbytes)
                stream = device.stream_create()
                device.memcpy_htod_async(buffer, data, stream)
                back = pinned.view(np.float32, data.shape)
                device.memcpy_dtoh_async(back, buffer, stream)
                device.synchronize(stream)
                np.testing.assert_array_equal(back, data)
                device.stream_destroy(stream)
                device.host_free(pinned)
                device.free(buffer)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert driver.snapshot() == (0, 0, 0, 0)


def test_malloc_raises_out_of_memory_when_the_device_is_full(device: CudaDevice) -> None:
    with device.activate():
        held = device.malloc(60 * MIB)
        with pytest.raises(CudaError, match=CUDA_ERROR_OUT_OF_MEMORY) as info:
            device.malloc(8 * MIB)
        assert info.value.out_of_memory
        device.free(held)
        device.free(device.malloc(8 * MIB))


def test_free_raises_when_the_pointer_is_not_an_allocation(device: CudaDevice) -> None:
    with device.activate():
        buffer = device.malloc(1024)
        device.free(buffer)
        with pytest.raises(CudaError, match="cuMemFree failed with CUDA_ERROR_INVALID_VALUE"):
            device.free(buffer)


def test_copy_raises_when_the_stream_was_destroyed(device: CudaDevice) -> None:
    with device.activate():
        buffer = device.malloc(64)
        stream = device.stream_create()
        device.stream_destroy(stream)
        with pytest.raises(CudaError, match="CUDA_ERROR_INVALID_HANDLE"):
            device.memcpy_htod_async(buffer, np.zeros(16, np.float32), stream)
        device.free(buffer)


def test_copy_raises_when_the_data_is_larger_than_the_buffer(device: CudaDevice) -> None:
    with device.activate():
        buffer = device.malloc(16)
        stream = device.stream_create()
        with pytest.raises(CudaError, match="do not fit"):
            device.memcpy_htod_async(buffer, np.zeros(16, np.float32), stream)
        device.stream_destroy(stream)
        device.free(buffer)


def test_calls_raise_invalid_context_when_the_primary_context_was_released(driver: FakeCudaDriver) -> None:
    device = CudaDevice(driver)
    with device.activate():
        device.malloc(1024)
    device.close()
    assert driver.allocation_count == 0  # a reset primary context takes its memory with it
    stale = driver.retain_primary_context(0)
    driver.release_primary_context(0, stale)
    driver.push_context(stale)
    try:
        with pytest.raises(CudaError, match="CUDA_ERROR_INVALID_CONTEXT"):
            driver.malloc(16)
    finally:
        driver.pop_context()


def test_free_memory_uses_cuda_when_the_gpu_is_discrete(device: CudaDevice) -> None:
    with device.activate():
        buffer = device.malloc(16 * MIB)
    info = device.free_memory()
    assert (info.total_bytes, info.free_bytes, info.source) == (64 * MIB, 48 * MIB, "cuMemGetInfo")
    with device.activate():
        device.free(buffer)


def test_free_memory_reads_memavailable_when_the_gpu_is_integrated(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    device = CudaDevice(FakeCudaDriver(64 * MIB, integrated=True), meminfo_path=meminfo)
    info = device.free_memory()
    assert info.total_bytes == 7999484 * 1024
    assert info.free_bytes == 6000000 * 1024
    assert info.source == f"MemAvailable ({meminfo})"


def test_read_meminfo_raises_when_memavailable_is_missing(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemFree: 50 kB\n")
    with pytest.raises(BackendUnavailableError, match="MemAvailable"):
        read_meminfo(meminfo)
    with pytest.raises(BackendUnavailableError, match="cannot read"):
        read_meminfo(tmp_path / "missing")


def test_properties_and_versions_come_from_the_driver(device: CudaDevice) -> None:
    props = device.properties
    assert (props.name, props.compute_capability_str, props.integrated) == ("Orin (fake)", "8.7", False)
    assert device.versions()["gpu"] == "Orin (fake)"


def test_import_optional_names_the_extra_when_the_module_is_missing() -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-agent\[gpu\]'") as info:
        import_optional("no_such_module_for_edge_agent", "The test")
    assert GPU_EXTRA_HINT in str(info.value)


def test_load_driver_raises_when_the_binding_is_unknown() -> None:
    with pytest.raises(BackendUnavailableError, match="Unknown CUDA binding 'cupy'"):
        load_driver("cupy")


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="pycuda is installed here")
def test_load_driver_names_the_extra_when_pycuda_is_missing() -> None:
    with pytest.raises(BackendUnavailableError, match=r"edge-agent\[gpu\]"):
        load_driver("pycuda")


def test_load_driver_auto_raises_unavailable_when_no_gpu_is_usable() -> None:
    from tests.gpu.probe import cuda_unavailable_reason

    if cuda_unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    with pytest.raises(BackendUnavailableError):
        load_driver("auto")


# -- error translation of the real bindings (their calls cannot run here without a driver) -----


def test_cuda_python_results_become_cuda_errors_naming_the_call() -> None:
    import enum
    from types import SimpleNamespace

    from edge_agent.engines.cuda import CudaPythonDriver

    class CUresult(enum.IntEnum):
        CUDA_SUCCESS = 0
        CUDA_ERROR_OUT_OF_MEMORY = 2
        CUDA_ERROR_INVALID_CONTEXT = 201

    fake_module = SimpleNamespace(CUresult=CUresult,
                                  cuGetErrorString=lambda err: (CUresult.CUDA_SUCCESS, b"out of memory"))
    driver = object.__new__(CudaPythonDriver)
    driver._drv = fake_module
    assert driver._check("cuMemGetInfo", (CUresult.CUDA_SUCCESS, 10, 20)) == (10, 20)
    assert driver._check("cuMemAlloc", (CUresult.CUDA_SUCCESS, 1234)) == 1234
    assert driver._check("cuMemFree", (CUresult.CUDA_SUCCESS,)) is None
    expected = r"cuMemAlloc failed with CUDA_ERROR_OUT_OF_MEMORY \(out of memory\)"
    with pytest.raises(CudaError, match=expected) as info:
        driver._check("cuMemAlloc", (CUresult.CUDA_ERROR_OUT_OF_MEMORY, None))
    assert info.value.out_of_memory


@pytest.mark.parametrize("message, code", [
    ("cuMemAlloc failed: out of memory", CUDA_ERROR_OUT_OF_MEMORY),
    ("cuMemAlloc failed: invalid device context", CUDA_ERROR_INVALID_CONTEXT),
    ("cuStreamSynchronize failed: invalid resource handle", "CUDA_ERROR_INVALID_HANDLE"),
    ("cuLaunchKernel failed: launch timeout", "CUDA_ERROR (launch timeout)"),
])
def test_pycuda_errors_map_to_the_cuda_error_names(message: str, code: str) -> None:
    from types import SimpleNamespace

    from edge_agent.engines.cuda import _pycuda_code

    class Error(Exception):
        pass

    class MemoryError_(Error):
        pass

    module = SimpleNamespace(Error=Error, MemoryError=MemoryError_)
    assert _pycuda_code(module, Error(message)) == code
