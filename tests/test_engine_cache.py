"""The on-disk engine cache: keys, atomic entries, stale entries, timing caches."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest

from edge_agent.engine_cache import EngineCache, EngineKey, EngineMetadata, default_cache_dir, utc_now

KEY = EngineKey(onnx_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                fp16=False, workspace_bytes=256 << 20, max_batch=1, input_shape=(1, 3, 64, 64))
PLAN = b"\x01plan-bytes" * 100


def metadata_for(key: EngineKey, plan: bytes = PLAN) -> EngineMetadata:
    return EngineMetadata(key=key.as_dict(), plan_bytes=len(plan), onnx_bytes=10, device_memory_bytes=4096,
                          build_seconds=1.5, built_at=utc_now(), fp16=key.fp16,
                          workspace_bytes=key.workspace_bytes)


@pytest.fixture
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "engines")


@pytest.mark.parametrize("change", [
    {"onnx_sha256": "cd" * 32}, {"tensorrt_version": "10.4.0"}, {"gpu_name": "RTX 4090"},
    {"compute_capability": "8.9"}, {"fp16": True}, {"workspace_bytes": 1 << 30}, {"max_batch": 4},
    {"input_shape": (1, 3, 128, 128)},
])
def test_key_digest_changes_when_any_part_changes(change: dict[str, object]) -> None:
    assert dataclasses.replace(KEY, **change).digest != KEY.digest  # type: ignore[arg-type]


def test_lookup_returns_the_entry_when_it_was_stored(cache: EngineCache) -> None:
    assert cache.lookup(KEY) is None
    cache.store(KEY, PLAN, metadata_for(KEY))
    entry = cache.lookup(KEY)
    assert entry is not None
    assert entry.metadata.plan_bytes == len(PLAN)
    assert cache.read_plan(entry) == PLAN
    assert sorted(p.name for p in cache.root.iterdir() if not p.name.endswith(".lock")) == [
        f"{KEY.digest}.json", f"{KEY.digest}.plan"]  # no temporary files left behind


def test_store_leaves_the_old_entry_intact_when_writing_fails(cache: EngineCache, monkeypatch) -> None:
    cache.store(KEY, PLAN, metadata_for(KEY))

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    new_plan = b"other" * 10
    with pytest.raises(OSError):
        cache.store(KEY, new_plan, metadata_for(KEY, new_plan))
    monkeypatch.undo()
    entry = cache.lookup(KEY)
    assert entry is not None and cache.read_plan(entry) == PLAN
    assert not [p for p in cache.root.iterdir() if p.name.endswith(".tmp")]


def test_lookup_repair_deletes_the_entry_when_the_plan_is_truncated(cache: EngineCache) -> None:
    entry = cache.store(KEY, PLAN, metadata_for(KEY))
    entry.plan_path.write_bytes(PLAN[:10])
    assert cache.lookup(KEY) is None
    assert entry.plan_path.exists()  # a plain lookup only skips it: a store may be under way
    assert cache.lookup(KEY, repair=True) is None
    assert not entry.plan_path.exists() and not cache.metadata_path(KEY).exists()


def test_lookup_skips_without_deleting_when_the_metadata_is_not_written_yet(cache: EngineCache) -> None:
    entry = cache.store(KEY, PLAN, metadata_for(KEY))
    cache.metadata_path(KEY).unlink()  # what a reader sees between the plan's rename and the metadata's
    assert cache.lookup(KEY) is None
    assert entry.plan_path.exists()
    assert cache.lookup(KEY, repair=True) is None
    assert not entry.plan_path.exists()


@pytest.mark.parametrize("text", ["{not json", '{"format": 99}', "[]"])
def test_lookup_deletes_the_entry_when_the_metadata_is_unreadable(cache: EngineCache, text: str) -> None:
    entry = cache.store(KEY, PLAN, metadata_for(KEY))
    cache.metadata_path(KEY).write_text(text)
    assert cache.lookup(KEY, repair=True) is None
    assert not entry.plan_path.exists()


def test_lookup_deletes_the_entry_when_its_metadata_names_another_key(cache: EngineCache) -> None:
    other = dataclasses.replace(KEY, gpu_name="another GPU")
    cache.store(KEY, PLAN, metadata_for(KEY))
    cache.metadata_path(KEY).write_text(metadata_for(other).to_json())
    assert cache.lookup(KEY) is None
    assert cache.lookup(KEY, repair=True) is None
    assert not cache.plan_path(KEY).exists()


def test_discard_keeps_the_entry_when_it_was_rebuilt_since_it_was_read(cache: EngineCache) -> None:
    stale = cache.store(KEY, PLAN, metadata_for(KEY))
    fresh_plan = b"rebuilt" * 50
    cache.store(KEY, fresh_plan, metadata_for(KEY, fresh_plan))
    cache.discard(stale, "TensorRT refused it")
    cache.update(stale, loaded_bytes=1)
    entry = cache.lookup(KEY)
    assert entry is not None and cache.read_plan(entry) == fresh_plan and entry.metadata.loaded_bytes == 0
    cache.discard(entry, "TensorRT refused it")
    assert cache.lookup(KEY) is None and not entry.plan_path.exists()


def test_update_rewrites_the_metadata_when_a_load_measured_memory(cache: EngineCache) -> None:
    entry = cache.store(KEY, PLAN, metadata_for(KEY))
    assert cache.update(entry, loaded_bytes=12345).metadata.loaded_bytes == 12345
    again = cache.lookup(KEY)
    assert again is not None and again.metadata.loaded_bytes == 12345


def test_store_refuses_metadata_that_does_not_describe_the_plan(cache: EngineCache) -> None:
    with pytest.raises(ValueError):
        cache.store(KEY, PLAN + b"x", metadata_for(KEY))


def test_timing_cache_path_differs_per_device_and_version(cache: EngineCache) -> None:
    orin = cache.timing_cache_path("Orin", "8.7", "10.3.0")
    assert orin != cache.timing_cache_path("RTX 4090", "8.9", "10.3.0")
    assert orin != cache.timing_cache_path("Orin", "8.7", "8.6.2")
    assert cache.load_timing_cache(orin) == b""
    cache.save_timing_cache(orin, b"tactics")
    assert cache.load_timing_cache(orin) == b"tactics"


def test_file_sha256_changes_when_the_file_changes(cache: EngineCache, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"one")
    first = cache.file_sha256(model)
    assert cache.file_sha256(model) == first
    model.write_bytes(b"two, longer")
    assert cache.file_sha256(model) != first


def test_lock_serializes_builders_of_the_same_key(cache: EngineCache) -> None:
    order: list[str] = []
    inside = threading.Event()

    def builder() -> None:
        with cache.lock(KEY):
            order.append("second")

    with cache.lock(KEY):
        thread = threading.Thread(target=builder)
        thread.start()
        inside.wait(0.2)
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]


def test_default_cache_dir_is_under_the_user_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "edge-agent" / "engines"
    assert EngineCache().root == tmp_path / "edge-agent" / "engines"


def test_model_hash_changes_when_external_weights_change(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_agent.engine_cache import EngineCache

    def save(weight: float) -> Path:
        init = numpy_helper.from_array(np.full((64, 64), weight, np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [init])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        path = tmp_path / "model.onnx"
        (tmp_path / "model.onnx.data").unlink(missing_ok=True)  # onnx.save appends to an existing one
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=0)
        return path

    path = save(1.0)
    first = EngineCache(tmp_path / "cache").model_sha256(path)
    graph_bytes = path.read_bytes()
    save(2.0)
    assert path.read_bytes() == graph_bytes  # only the weights file changed
    assert EngineCache(tmp_path / "cache").model_sha256(path) != first
