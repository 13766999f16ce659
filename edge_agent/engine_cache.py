"""Built TensorRT engines, cached on disk so a restart deserializes instead of building.

An engine is only valid for the ONNX file, TensorRT version and GPU it was built
from, with the same build options, so all of these make up its key. Each entry
is two files named by the key's digest: ``<digest>.plan`` (the serialized
engine) and ``<digest>.json`` (the key, sizes, device memory it needs, build
time). Both are written to a temporary file first and renamed into place, the
plan before its metadata, so a reader never sees half an entry; an entry whose
plan is missing or has the wrong size is stale and is deleted. One timing cache
per GPU and TensorRT version lets later builds reuse measured tactics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import default_data_dir
from edge_agent.files import atomic_write

LOGGER = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
PLAN_SUFFIX = ".plan"
METADATA_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
TIMING_CACHE_DIR = "timing"
_HASH_CHUNK_BYTES = 1 << 20
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-agent/engines`` (``~/.cache/edge-agent/engines``)."""
    return default_data_dir() / "engines"


@dataclass(frozen=True)
class EngineKey:
    """Everything a built engine depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    fp16: bool
    workspace_bytes: int
    max_batch: int
    input_shape: tuple[int, ...] | None = None  # the shape the agent feeds (fills dynamic H/W)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return data

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EngineMetadata:
    """What the cache knows about one built engine."""

    key: dict[str, Any]
    plan_bytes: int
    onnx_bytes: int
    device_memory_bytes: int  # activation memory of one execution context
    build_seconds: float
    built_at: str
    fp16: bool  # whether FP16 kernels were really enabled
    workspace_bytes: int  # the workspace limit the build really had
    model_file: str = ""
    loaded_bytes: int = 0  # device memory a loaded model held, measured at its first load
    format: int = CACHE_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineMetadata:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT_VERSION:
            raise ValueError("not an engine cache metadata file of this format")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class CacheEntry:
    key: EngineKey
    plan_path: Path
    metadata: EngineMetadata
    plan_stamp: tuple[int, int] = (0, 0)  # (inode, mtime_ns) of the plan this entry describes


class EngineCache:
    """A directory of cached engines; safe to share between threads and processes.

    Only a holder of the entry's :meth:`lock` deletes or rewrites it, and only when the
    plan on disk is still the one it looked at: a reader that finds an entry half
    written (a build in another process is storing it) just sees no entry.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self._hash_lock = threading.Lock()  # guards _hashes
        self._hashes: dict[tuple[object, ...], str] = {}

    def plan_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.digest}{PLAN_SUFFIX}"

    def metadata_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.digest}{METADATA_SUFFIX}"

    # -- lookups ----------------------------------------------------------------------------

    def lookup(self, key: EngineKey, *, repair: bool = False) -> CacheEntry | None:
        """The complete entry for ``key``, or None.

        With ``repair`` (the caller holds the entry's lock) an incomplete or inconsistent
        entry is deleted; without it, it is only skipped, as it may be mid-write.
        """
        plan_path, meta_path = self.plan_path(key), self.metadata_path(key)
        try:
            text = meta_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if plan_path.exists():
                return self._skip(key, "its metadata file is missing", repair)
            return None
        except OSError as exc:
            LOGGER.warning("engine cache: cannot read %s (%s); ignoring the entry", meta_path, exc.strerror)
            return None
        try:
            metadata = EngineMetadata.from_json(text)
        except (ValueError, TypeError) as exc:
            return self._skip(key, f"its metadata is unreadable ({exc})", repair)
        if metadata.key != key.as_dict():
            return self._skip(key, "its metadata belongs to another key", repair)
        try:
            st = plan_path.stat()
        except FileNotFoundError:
            return self._skip(key, "its plan file is missing", repair)
        if st.st_size != metadata.plan_bytes:
            return self._skip(key, f"its plan is {st.st_size} bytes, the metadata says {metadata.plan_bytes} "
                                   "(truncated?)", repair)
        return CacheEntry(key, plan_path, metadata, (st.st_ino, st.st_mtime_ns))

    def _skip(self, key: EngineKey, reason: str, repair: bool) -> CacheEntry | None:
        """Deletes (with ``repair``) or skips an unusable entry; returns None for lookup to return."""
        if repair:
            self.invalidate(key, reason)
        else:
            LOGGER.debug("engine cache: skipping entry %s: %s", key.digest, reason)
        return None

    def read_plan(self, entry: CacheEntry) -> bytes | None:
        try:
            return entry.plan_path.read_bytes()
        except OSError as exc:
            LOGGER.warning("engine cache: cannot read %s (%s)", entry.plan_path, exc.strerror)
            return None

    # -- writes -----------------------------------------------------------------------------

    def store(self, key: EngineKey, plan: bytes, metadata: EngineMetadata) -> CacheEntry:
        """Writes the plan, then its metadata, each atomically (the caller holds the lock).

        Raises:
            OSError: the cache directory is not writable (the caller decides whether that matters).
        """
        if metadata.plan_bytes != len(plan) or metadata.key != key.as_dict():
            raise ValueError("metadata does not describe this plan")
        self.root.mkdir(parents=True, exist_ok=True)
        plan_path = self.plan_path(key)
        atomic_write(plan_path, plan)
        atomic_write(self.metadata_path(key), metadata.to_json().encode())
        LOGGER.info("engine cache: stored %s (%.1f MiB)", plan_path, len(plan) / 2**20)
        st = plan_path.stat()
        return CacheEntry(key, plan_path, metadata, (st.st_ino, st.st_mtime_ns))

    def update(self, entry: CacheEntry, **changes: Any) -> CacheEntry:
        """Rewrites an entry's metadata with ``changes`` (e.g. the measured ``loaded_bytes``)."""
        metadata = dataclasses.replace(entry.metadata, **changes)
        try:
            with self.lock(entry.key):
                if not self._unchanged(entry):
                    return entry  # rebuilt meanwhile: the new entry has its own metadata
                atomic_write(self.metadata_path(entry.key), metadata.to_json().encode())
        except OSError as exc:
            LOGGER.warning("engine cache: cannot update %s (%s)", self.metadata_path(entry.key), exc)
            return entry
        return dataclasses.replace(entry, metadata=metadata)

    def discard(self, entry: CacheEntry, reason: str) -> None:
        """Deletes an entry found unusable (TensorRT refused the plan), unless it was replaced since."""
        try:
            with self.lock(entry.key):
                if self._unchanged(entry):
                    self.invalidate(entry.key, reason)
        except OSError as exc:
            LOGGER.warning("engine cache: cannot delete entry %s (%s)", entry.key.digest, exc)

    def _unchanged(self, entry: CacheEntry) -> bool:
        try:
            st = entry.plan_path.stat()
        except FileNotFoundError:
            return False
        return (st.st_ino, st.st_mtime_ns) == entry.plan_stamp

    def invalidate(self, key: EngineKey, reason: str) -> None:
        """Deletes an entry (the caller holds its lock) so the next load rebuilds it."""
        LOGGER.warning("engine cache: deleting entry %s: %s", key.digest, reason)
        for path in (self.metadata_path(key), self.plan_path(key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def lock(self, key: EngineKey) -> Iterator[None]:
        """Holds the entry's lock (across threads and processes) while it is built."""
        with _file_lock(self.root / f"{key.digest}{LOCK_SUFFIX}"):
            yield

    # -- timing caches ----------------------------------------------------------------------

    def timing_cache_path(self, gpu_name: str, compute_capability: str, tensorrt_version: str) -> Path:
        slug = _SLUG.sub("_", f"{gpu_name}-sm{compute_capability}-trt{tensorrt_version}")
        return self.root / TIMING_CACHE_DIR / f"{slug}.cache"

    def load_timing_cache(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            LOGGER.warning("engine cache: cannot read timing cache %s (%s)", path, exc.strerror)
            return b""

    def save_timing_cache(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            LOGGER.warning("engine cache: cannot write timing cache %s (%s)", path, exc.strerror)

    @contextlib.contextmanager
    def timing_lock(self, path: Path) -> Iterator[None]:
        with _file_lock(path.with_suffix(path.suffix + LOCK_SUFFIX)):
            yield

    # -- hashing ----------------------------------------------------------------------------

    def file_sha256(self, path: Path) -> str:
        """The file's sha256, remembered while its size and mtime stay the same."""
        st = os.stat(path)
        memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._hash_lock:
            known = self._hashes.get(memo)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
        value = digest.hexdigest()
        with self._hash_lock:
            self._hashes[memo] = value
        return value


    def model_sha256(self, onnx_path: Path) -> str:
        """Hash of an ONNX model and of every external data file it keeps weights in.

        Retrained weights in ``model.onnx.data`` must not reuse an engine built from old ones.
        """
        base = self.file_sha256(onnx_path)
        external = self._external_files(onnx_path)
        if not external:
            return base
        digest = hashlib.sha256(base.encode())
        for data_file in external:
            digest.update(data_file.name.encode())
            digest.update(self.file_sha256(data_file).encode())
        return digest.hexdigest()

    def _external_files(self, onnx_path: Path) -> list[Path]:
        st = os.stat(onnx_path)
        memo = ("external", str(Path(onnx_path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._hash_lock:
            known = self._hashes.get(memo)
        if known is not None:
            return [Path(p) for p in json.loads(known)]
        import onnx
        from onnx import external_data_helper

        try:
            proto = onnx.load_model(str(onnx_path), load_external_data=False)
        except Exception:  # not parseable: the build reports it
            return []
        names = set()
        for tensor in external_data_helper._get_all_tensors(proto):
            if external_data_helper.uses_external_data(tensor):
                info = external_data_helper.ExternalDataInfo(tensor)
                names.add(info.location)
        files = sorted(Path(onnx_path).parent / name for name in names)
        with self._hash_lock:
            self._hashes[memo] = json.dumps([str(f) for f in files])
        return files


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
