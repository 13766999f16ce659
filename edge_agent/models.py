"""Model components and their lifecycle: discovery, start, stop, serving.

States follow the wire contract: STOPPED -> STARTING -> RUNNING | FAILED, and
RUNNING -> STOPPING -> STOPPED. StartModel flips the state to STARTING before it
returns and loads on a background worker; StopModel drains in-flight requests
and returns once the model is down. A request holds a lease on the model for
its whole run, so nothing is unloaded under it.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edge_agent.constants import (
    DEFAULT_LOADER_THREADS,
    DEFAULT_MAX_REQUESTS_PER_MODEL,
    MAX_COMPONENT_NAME_BYTES,
    STOP_DRAIN_TIMEOUT_S,
)
from edge_agent.engines.base import Backend, MemoryInfo
from edge_agent.errors import (
    EdgeAgentError,
    InvalidArgumentError,
    ModelNotFoundError,
    ResourceExhaustedError,
    WrongStateError,
)
from edge_agent.inference import ModelRunner
from edge_agent.manifest import Manifest, load_manifest

LOGGER = logging.getLogger(__name__)

# Greengrass component names and directory names alike: letters, digits, '.', '_', '-'.
_COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelState(enum.IntEnum):
    """Model states; the numbers are the wire enum's."""

    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    FAILED = 3
    STOPPING = 4


class BackendProvider(Protocol):
    """Makes backends for manifests; one per agent (ONNX Runtime, TensorRT...)."""

    kind: str
    description: str  # what runs the models, for logs and status messages

    def create(self, manifest: Manifest) -> Backend: ...

    def estimate_bytes(self, manifest: Manifest) -> int:
        """Device memory the model will need once loaded (0 when unknown)."""
        ...

    def memory_info(self) -> MemoryInfo | None:
        """Total and free device memory, or None when loads need no admission check.

        Called with the manager's lock held (admissions are serialized): it must be quick
        and must not call back into the manager.
        """
        ...


@dataclass(frozen=True)
class ModelInfo:
    """A consistent snapshot of one component, for ListModels and DescribeModel."""

    name: str
    arn: str
    state: ModelState
    status_message: str
    memory_bytes: int = 0  # held by the loaded model (RUNNING) or reserved for it (STARTING)
    in_flight: int = 0  # DetectAnomalies calls holding the model
    queued: int = 0  # of those, waiting for an inference slot
    load_source: str = ""  # where the running model came from (onnxruntime, engine-cache...)
    load_seconds: float = 0.0


StateListener = Callable[[str, "ModelState | None", str], None]


def validate_component_name(name: str, field: str = "model_component") -> str:
    """Rejects names that cannot be a component directory (never used as a path)."""
    if not name:
        raise InvalidArgumentError(f"{field} is empty; pass the name of a deployed model component (see ListModels).")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_NAME_BYTES or not _COMPONENT_NAME.match(name):
        shown = name if len(name) <= 64 else name[:61] + "..."
        raise InvalidArgumentError(
            f"{field} {shown!r} is not a valid component name: use at most {MAX_COMPONENT_NAME_BYTES} letters, "
            "digits, '.', '_' or '-', starting with a letter or digit."
        )
    return name


class _Entry:
    """One component. Every field is guarded by ModelManager._lock."""

    def __init__(self, name: str, component_dir: Path) -> None:
        self.name = name
        self.component_dir = component_dir
        self.state = ModelState.STOPPED
        self.status_message = ""
        self.arn = ""
        self.runner: ModelRunner | None = None
        self.in_flight = 0
        self.reserved_bytes = 0  # memory set aside for a load in progress
        self.load_seconds = 0.0  # StartModel to RUNNING, last successful load
        self.signature: tuple[object, ...] = ()
        self.present = True

    def info(self) -> ModelInfo:
        report = self.runner.backend.report if self.runner is not None else None
        return ModelInfo(
            self.name, self.arn, self.state, self.status_message,
            memory_bytes=report.memory_bytes if report else self.reserved_bytes,
            in_flight=self.in_flight,
            queued=self.runner.queued if self.runner is not None else 0,
            load_source=report.source if report else "",
            load_seconds=self.load_seconds if report else 0.0,
        )


def _signature(component_dir: Path) -> tuple[object, ...]:
    """Changes when any file of the component (manifest, model) is added, removed or rewritten."""
    values: list[object] = []
    try:
        for child in sorted(os.scandir(component_dir), key=lambda e: e.name):
            st = child.stat()
            values.append((child.name, st.st_mtime_ns, st.st_size, st.st_ino))
    except OSError:
        values.append(None)
    return tuple(values)


def _check_onnx(manifest: Manifest) -> None:
    """Parses the ONNX graph (weights left on disk) so a broken file is FAILED before anyone starts it."""
    if manifest.model_file.suffix.lower() != ".onnx":
        return  # a serialized TensorRT plan: its engine checks it at load
    import onnx

    try:
        model = onnx.load_model(str(manifest.model_file), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for garbage
        raise EdgeAgentError(
            f"{manifest.model_file}: not a readable ONNX model ({_first_line(exc)})."
            " Copy or export the file again."
        ) from None
    outputs = {value.name for value in model.graph.output}
    if not outputs:
        raise EdgeAgentError(f"{manifest.model_file}: the ONNX graph has no outputs (the file is truncated or "
                             "not a model). Copy or export it again.")
    named = manifest.outputs
    for field, value in (("image_score", named.image_score), ("anomaly_map", named.anomaly_map),
                         ("segmentation", named.segmentation)):
        if value is not None and value not in outputs:
            raise EdgeAgentError(
                f"{manifest.model_file}: the manifest's outputs.{field} {value!r} is not an output of the model "
                f"(its outputs: {sorted(outputs)}). Fix outputs.{field} in {manifest.manifest_path}."
            )


class ModelManager:
    """Owns every model component found under the models directories."""

    def __init__(
        self,
        models_dirs: Sequence[Path],
        provider: BackendProvider,
        *,
        loader_threads: int = DEFAULT_LOADER_THREADS,
        stop_drain_timeout_s: float = STOP_DRAIN_TIMEOUT_S,
        memory_headroom_bytes: int = 0,
        max_requests_per_model: int = DEFAULT_MAX_REQUESTS_PER_MODEL,
    ) -> None:
        self.models_dirs = [Path(d) for d in models_dirs]
        self.provider = provider
        self._stop_drain_timeout_s = stop_drain_timeout_s
        self.memory_headroom_bytes = memory_headroom_bytes
        self.max_requests_per_model = max_requests_per_model
        # Threads that serve calls (the gRPC server's workers, set by the server): with the request
        # bound, the most calls one model can be handed at once, so the largest useful batch.
        self.call_threads: int | None = None
        # Guards _entries, _closed and every field of every _Entry.
        self._lock = threading.Lock()
        # Signalled when an entry's in_flight drops to 0 or a load finishes.
        self._changed = threading.Condition(self._lock)
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        self._listeners: list[StateListener] = []
        # Serializes listener deliveries (taken before _lock, never inside it).
        self._notify_lock = threading.RLock()
        self._loader = ThreadPoolExecutor(max_workers=loader_threads, thread_name_prefix="model-loader")
        self.refresh()

    # -- observers ------------------------------------------------------------------------

    def add_listener(self, listener: StateListener) -> None:
        """Calls ``listener(name, state, message)`` after state changes; ``state`` is None once removed.

        Deliveries are serialized and always carry the component's current state, so a
        listener converges on the truth even when transitions race (it may skip some).
        """
        with self._notify_lock:
            self._listeners.append(listener)
            for info in self.list():
                listener(info.name, info.state, info.status_message)

    def _publish(self, name: str) -> None:
        with self._notify_lock:
            with self._lock:
                entry = self._entries.get(name)
                state, message = (entry.state, entry.status_message) if entry else (None, "")
            for listener in self._listeners:
                try:
                    listener(name, state, message)
                except Exception:  # an observer must never break the lifecycle
                    LOGGER.exception("state listener failed for %s", name)

    # -- discovery ------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescans the models directories: adds new components, drops removed idle ones."""
        found: dict[str, Path] = {}
        for models_dir in self.models_dirs:
            try:
                children = sorted(os.scandir(models_dir), key=lambda e: e.name)
            except FileNotFoundError:
                LOGGER.warning("models directory %s does not exist; create it and add model components", models_dir)
                continue
            except OSError as exc:
                LOGGER.warning("cannot read models directory %s: %s", models_dir, exc.strerror)
                continue
            for child in children:
                if child.name.startswith(".") or not child.is_dir():
                    continue
                if not _COMPONENT_NAME.match(child.name) or len(child.name.encode()) > MAX_COMPONENT_NAME_BYTES:
                    LOGGER.warning("ignoring %s: not a valid component name", child.path)
                    continue
                if child.name in found:
                    LOGGER.warning("component %s in %s is shadowed by the one in %s", child.name, models_dir,
                                   found[child.name])
                    continue
                found[child.name] = Path(child.path)

        events: list[str] = []
        with self._lock:
            for name, entry in list(self._entries.items()):
                if name in found:
                    continue
                if entry.state in (ModelState.STOPPED, ModelState.FAILED):
                    del self._entries[name]
                    LOGGER.info("model %s: removed (its directory is gone)", name, extra=_event(name, "removed"))
                    events.append(name)
                else:
                    entry.present = False
            for name, path in found.items():
                entry = self._entries.get(name)
                if entry is None:
                    entry = self._entries[name] = _Entry(name, path)
                    self._inspect(entry)
                    LOGGER.info("model %s: discovered in %s (%s)", name, path.parent, entry.state.name,
                                extra=_event(name, "discovered"))
                    if entry.state is ModelState.FAILED:
                        LOGGER.error("model %s: failed: %s", name, entry.status_message, extra=_event(name, "failed"))
                    events.append(name)
                elif entry.state in (ModelState.STOPPED, ModelState.FAILED) and (
                    entry.component_dir != path or entry.signature != _signature(path)
                ):
                    entry.component_dir = path
                    entry.present = True
                    self._inspect(entry)
                    events.append(name)
                else:
                    entry.present = True
        for name in events:
            self._publish(name)

    def _inspect(self, entry: _Entry) -> None:
        """Validates an idle component's manifest (cheap; the model loads at StartModel)."""
        entry.signature = _signature(entry.component_dir)
        try:
            manifest = load_manifest(entry.component_dir)
            if not manifest.model_file.is_file():
                raise EdgeAgentError(
                    f"{manifest.model_file}: model file not found. Put the model there or fix model_file in "
                    f"{manifest.manifest_path}."
                )
            _check_onnx(manifest)
        except EdgeAgentError as exc:
            entry.state = ModelState.FAILED
            entry.status_message = str(exc)
            entry.arn = ""
            return
        entry.arn = manifest.lookout_vision_model_arn
        entry.state = ModelState.STOPPED
        entry.status_message = manifest.origin  # e.g. "anomalib 2.x export (detected)"; "" for a manifest.json

    def _get(self, name: str) -> _Entry:
        """Finds an entry (caller holds the lock)."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(name, list(self._entries))
        return entry

    def _find(self, name: str) -> None:
        """Rescans once when a valid name is unknown, so newly copied components are found."""
        validate_component_name(name)
        with self._lock:
            if name in self._entries:
                return
        self.refresh()

    # -- queries --------------------------------------------------------------------------

    def list(self) -> list[ModelInfo]:
        self.refresh()
        with self._lock:
            return [self._entries[name].info() for name in sorted(self._entries)]

    def describe(self, name: str) -> ModelInfo:
        self._find(name)
        with self._lock:
            return self._get(name).info()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, name: str) -> ModelState:
        """Marks the model STARTING and loads it in the background.

        Raises:
            ResourceExhaustedError: the model's estimated need does not fit in free device
                memory less the headroom and what loads in progress have reserved; the
                model's state is left unchanged.
        """
        self._find(name)
        with self._lock:
            component_dir = self._get(name).component_dir
        needed = self._estimate(component_dir)
        with self._lock:
            entry = self._get(name)
            if self._closed:
                raise WrongStateError("The agent is shutting down; start the model after it restarts.")
            if entry.state not in (ModelState.STOPPED, ModelState.FAILED):
                raise WrongStateError(
                    f"Model {name} is {entry.state.name}; StartModel needs it STOPPED or FAILED. "
                    + _wait_hint(entry.state)
                )
            self._admit(name, needed)
            entry.reserved_bytes = needed
            entry.state = ModelState.STARTING
            entry.status_message = f"Loading with {self.provider.description}."
            component_dir = entry.component_dir
        LOGGER.info("model %s: starting (%s)", name, self.provider.kind, extra=_event(name, "starting"))
        self._publish(name)
        self._loader.submit(self._load, name, component_dir)
        return ModelState.STARTING

    def _estimate(self, component_dir: Path) -> int:
        try:
            return max(0, int(self.provider.estimate_bytes(load_manifest(component_dir))))
        except EdgeAgentError:
            return 0  # the load itself reports what is wrong with the component

    def _admit(self, name: str, needed: int) -> None:
        """Checks that ``needed`` bytes fit (caller holds the lock, so admissions are serialized)."""
        memory = self.provider.memory_info()
        if memory is None or needed <= 0:
            return
        reserved = sum(e.reserved_bytes for e in self._entries.values() if e.state is ModelState.STARTING)
        available = memory.free_bytes - reserved - self.memory_headroom_bytes
        if needed > available:
            raise ResourceExhaustedError(
                f"Not enough memory to load model {name}: it needs about {_mib(needed)}, and "
                f"{_mib(max(0, available))} is available ({_mib(memory.free_bytes)} free by "
                f"{memory.source}, {_mib(reserved)} reserved by models starting, "
                f"{_mib(self.memory_headroom_bytes)} kept as headroom). Stop a model with StopModel, "
                "or lower the headroom, then call StartModel again."
            )

    def _load(self, name: str, component_dir: Path) -> None:
        started = time.perf_counter()
        runner: ModelRunner | None = None
        try:
            manifest = load_manifest(component_dir)
            backend = self.provider.create(manifest)
            report = backend.load()
            try:
                caps = [cap for cap in (self.max_requests_per_model, self.call_threads) if cap]
                runner = ModelRunner(manifest, backend, batch_cap=min(caps) if caps else None)
                runner.warm_up()
            except BaseException:
                backend.unload()
                raise
            elapsed = time.perf_counter() - started
            message = (f"Running on {self.provider.description} (backend {backend.kind}, from {report.source}), "
                       f"loaded in {elapsed:.2f} s. {runner.batching_note}")
            state = ModelState.RUNNING
        except EdgeAgentError as exc:
            state, message, manifest = ModelState.FAILED, str(exc), None
        except Exception as exc:
            LOGGER.exception("model %s: unexpected error while loading", name)
            message = f"Unexpected error while loading: {exc!r}. See the agent log."
            state, manifest = ModelState.FAILED, None

        with self._lock:
            entry = self._entries.get(name)
            closing = self._closed
            if entry is not None:
                entry.state = ModelState.STOPPED if (closing and state is ModelState.RUNNING) else state
                entry.status_message = message if not closing else "Stopped: the agent is shutting down."
                entry.runner = runner if not closing else None
                entry.reserved_bytes = 0
                if state is ModelState.RUNNING:
                    entry.load_seconds = elapsed
                if manifest is not None:
                    entry.arn = manifest.lookout_vision_model_arn
        if runner is not None and (closing or entry is None):
            runner.backend.unload()
        if state is ModelState.RUNNING and not closing:
            LOGGER.info("model %s: running (%s)", name, message, extra=_event(name, "running"))
        elif state is ModelState.FAILED:
            LOGGER.error("model %s: failed: %s", name, message, extra=_event(name, "failed"))
        if entry is not None:
            self._publish(name)
        # Waiters (wait_for) wake once listeners (health, metrics) already reflect the new state.
        with self._lock:
            self._changed.notify_all()

    def set_idle_status(self, name: str, message: str, *, failed: bool = False) -> None:
        """Updates an idle (STOPPED or FAILED) component's status, e.g. after an engine build ahead of need.

        Does nothing when the component is starting, running or stopping: its own load wins.
        """
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.state not in (ModelState.STOPPED, ModelState.FAILED):
                return
            entry.state = ModelState.FAILED if failed else ModelState.STOPPED
            entry.status_message = message
        if failed:
            LOGGER.error("model %s: failed: %s", name, message, extra=_event(name, "failed"))
        self._publish(name)

    def stop(self, name: str) -> ModelState:
        """Stops a RUNNING model once its in-flight requests have finished."""
        self._find(name)
        with self._lock:
            entry = self._get(name)
            if entry.state is not ModelState.RUNNING:
                raise WrongStateError(
                    f"Model {name} is {entry.state.name}; StopModel needs it RUNNING. " + _wait_hint(entry.state)
                )
            entry.state = ModelState.STOPPING
            entry.status_message = "Stopping: waiting for requests in flight."
        LOGGER.info("model %s: stopping", name, extra=_event(name, "stopping"))
        self._publish(name)
        self._drain_and_unload(entry, "Stopped by StopModel.")
        return ModelState.STOPPED

    def _drain_and_unload(self, entry: _Entry, message: str) -> None:
        with self._lock:
            deadline = time.monotonic() + self._stop_drain_timeout_s
            while entry.in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    LOGGER.error("model %s: %d requests still running after %.0f s; unloading anyway",
                                 entry.name, entry.in_flight, self._stop_drain_timeout_s)
                    break
                self._changed.wait(remaining)
            runner, entry.runner = entry.runner, None
        if runner is not None:
            runner.backend.unload()
        with self._lock:
            entry.state = ModelState.STOPPED
            entry.status_message = message
        LOGGER.info("model %s: stopped", entry.name, extra=_event(entry.name, "stopped"))
        self._publish(entry.name)
        with self._lock:
            self._changed.notify_all()

    @contextmanager
    def serving(self, name: str) -> Iterator[ModelRunner]:
        """Leases a RUNNING model for one request; StopModel waits for the lease to end."""
        validate_component_name(name)
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            self._find(name)
        with self._lock:
            entry = self._get(name)
            if entry.state is not ModelState.RUNNING or entry.runner is None:
                raise WrongStateError(
                    f"Model {name} is {entry.state.name}; DetectAnomalies needs it RUNNING. "
                    + _wait_hint(entry.state)
                )
            if entry.in_flight >= self.max_requests_per_model:
                raise ResourceExhaustedError(
                    f"Model {name} already has {entry.in_flight} requests in flight, its limit: the agent cannot "
                    "keep up with the call rate on this model. Retry after a short back-off, or send frames "
                    "less often."
                )
            entry.in_flight += 1
            runner = entry.runner
        try:
            yield runner
        finally:
            with self._lock:
                entry.in_flight -= 1
                if entry.in_flight == 0:
                    self._changed.notify_all()

    def close(self, timeout_s: float | None = None) -> None:
        """Stops every model (draining requests) and the loader; idempotent."""
        with self._lock:
            self._closed = True
            running = []
            for entry in self._entries.values():
                if entry.state is ModelState.RUNNING:
                    entry.state = ModelState.STOPPING
                    running.append(entry)
        if timeout_s is not None:
            self._stop_drain_timeout_s = timeout_s
        for entry in running:
            LOGGER.info("model %s: stopping (the agent is shutting down)", entry.name,
                        extra=_event(entry.name, "stopping"))
            self._publish(entry.name)
            self._drain_and_unload(entry, "Stopped: the agent is shutting down.")
        # Loads in progress see _closed and unload what they loaded.
        self._loader.shutdown(wait=True, cancel_futures=False)

    def wait_for(self, name: str, states: Sequence[ModelState], timeout_s: float) -> ModelState:
        """Blocks until the model reaches one of ``states`` (for the CLI and tests)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            entry = self._get(name)
            while entry.state not in states:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return entry.state


def _event(name: str, event: str) -> dict[str, str]:
    """Structured fields of a lifecycle log line (emitted by the JSON log format)."""
    return {"model_component": name, "event": event}


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def _wait_hint(state: ModelState) -> str:
    return {
        ModelState.STARTING: "Poll DescribeModel until it is RUNNING or FAILED.",
        ModelState.STOPPING: "Poll DescribeModel until it is STOPPED.",
        ModelState.RUNNING: "It is already running.",
        ModelState.STOPPED: "Call StartModel and poll DescribeModel until it is RUNNING.",
        ModelState.FAILED: "Read its status_message in DescribeModel, fix the cause, then call StartModel.",
    }[state]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
