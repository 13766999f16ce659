"""The CUDA layer on a real GPU, with whichever binding is installed (cuda-python or pycuda)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from edge_agent.engines.cuda import BINDING_CHOICES, CudaDevice, CudaError, load_driver, open_device
from edge_agent.errors import BackendUnavailableError


@pytest.fixture(scope="module")
def device() -> Iterator[CudaDevice]:
    dev = open_device("auto")
    yield dev
    dev.close()


def test_free_memory_reports_a_plausible_figure_when_queried(device: CudaDevice) -> None:
    info = device.free_memory()
    assert 0 < info.free_bytes <= info.total_bytes
    props = device.properties
    if props.integrated:
        assert "MemAvailable" in info.source
    else:
        assert info.source == "cuMemGetInfo"
        assert info.total_bytes == pytest.approx(props.total_bytes, rel=0.05)


def test_properties_name_the_gpu_when_read(device: CudaDevice) -> None:
    props = device.properties
    assert props.name
    assert props.compute_capability >= (5, 0)
    versions = device.versions()
    assert versions["cuda_driver"] and versions["gpu"] == props.name


def test_copies_round_trip_on_many_threads_when_each_activates_the_context(device: CudaDevice) -> None:
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            data = np.random.default_rng(seed).random(4096).astype(np.float32)
            with device.activate():
                buffer = device.malloc(data.nbytes)
                pinned_in, pinned_out = device.host_alloc(data.nbytes), device.host_alloc(data.nbytes)
                stream = device.stream_create()
                try:
                    staged = pinned_in.view(np.float32, data.shape)
                    staged[:] = data
                    back = pinned_out.view(np.float32, data.shape)
                    device.memcpy_htod_async(buffer, staged, stream)
                    device.memcpy_dtoh_async(back, buffer, stream)
                    device.synchronize(stream)
                    np.testing.assert_array_equal(back, data)
                finally:
                    device.stream_destroy(stream)
                    device.host_free(pinned_in)
                    device.host_free(pinned_out)
                    device.free(buffer)
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_malloc_raises_invalid_context_when_the_thread_has_no_current_context(device: CudaDevice) -> None:
    caught: list[BaseException] = []

    def work() -> None:
        try:
            device.malloc(1024)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)
    assert len(caught) == 1 and isinstance(caught[0], CudaError), caught
    assert caught[0].invalid_context, caught[0]


@pytest.mark.parametrize("binding", [b for b in BINDING_CHOICES if b != "auto"])
def test_each_installed_binding_opens_the_gpu_when_chosen(binding: str) -> None:
    try:
        driver = load_driver(binding)
    except BackendUnavailableError as exc:
        pytest.skip(f"{binding} is not installed: {exc}")
    device = CudaDevice(driver)
    try:
        info = device.free_memory()
        assert info.free_bytes > 0
    finally:
        device.close()
