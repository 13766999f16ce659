"""Dynamic batching: concurrent requests on one model gathered into one inference.

A request's own thread does the work (no dispatcher thread, so a lone request pays
no hand-off): it queues its input, and when an inference slot is free, nobody is
gathering and its input is among the oldest ``max_batch`` queued, it becomes the
leader. The leader takes the oldest queued inputs, up to ``max_batch`` (its own among
them), waiting at most ``max_delay_s`` after the oldest one arrived for the batch to
fill, runs them as one batch on its slot and hands each request its slice of the
outputs. So a thread only ever runs a batch it needs itself (its answer never waits
for others' inference), and the oldest queued input always has an idle thread to
lead it the moment a slot frees. Requests leave in arrival order; with ``max_batch``
1 this is a plain first-come, first-served queue in front of ``concurrency`` slots.

With a delay of 0 (the default) nothing waits on purpose: a batch holds what queued
while the slots were busy, so a single client sees no change and many clients get
batches as large as the backlog.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge_agent.errors import InferenceError

RunBatch = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(eq=False)
class BatchResult:
    """One request's share of a batched inference."""

    tensor: np.ndarray
    enqueued: float  # perf_counter() when it queued
    started: float = 0.0  # when its batch began to run
    inference_s: float = 0.0  # the whole batch's inference time
    batch_size: int = 0
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: BaseException | None = None
    done: bool = False


class DynamicBatcher:
    """Gathers concurrent single-image inputs into batches along axis 0."""

    def __init__(self, run: RunBatch, *, max_batch: int, max_delay_s: float, concurrency: int,
                 label: str = "") -> None:
        if max_batch < 1 or concurrency < 1 or max_delay_s < 0:
            raise ValueError(f"max_batch {max_batch}, concurrency {concurrency}, max_delay_s {max_delay_s}")
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.concurrency = concurrency
        self.label = label
        self._cond = threading.Condition()  # guards _pending, _free, _gathering and every result's fields
        self._pending: deque[BatchResult] = deque()
        self._free = concurrency
        self._gathering = False

    @property
    def queued(self) -> int:
        """Inputs waiting for a batch (not yet running)."""
        return len(self._pending)

    def infer(self, tensor: np.ndarray) -> BatchResult:
        """Runs one input (batch dimension 1) and returns its outputs once its batch has run.

        Raises:
            Whatever the inference raised, for every request of the failed batch.
        """
        request = BatchResult(tensor, time.perf_counter())
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()
        led = False
        while True:
            batch = self._lead_or_wait(request)
            if batch is None:
                break
            led = True
            self._execute(batch)
            if request.done:
                break
        if request.error is not None:
            # The leader raises the error itself; every other request of the batch a copy of it, so
            # tracebacks (and the frames they keep alive) stay each client's own.
            raise request.error if led else _copy_of(request.error)
        return request

    def _lead_or_wait(self, request: BatchResult) -> list[BatchResult] | None:
        """A batch for this thread to run, or None once ``request`` has been run by another."""
        with self._cond:
            while True:
                if request.done:
                    return None
                if self._free > 0 and not self._gathering and self._at_head(request):
                    break
                self._cond.wait()
            self._free -= 1
            self._gathering = True
            try:
                if self.max_delay_s > 0 and len(self._pending) < self.max_batch:
                    deadline = self._pending[0].enqueued + self.max_delay_s
                    while len(self._pending) < self.max_batch:
                        remaining = deadline - time.perf_counter()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                count = min(self.max_batch, len(self._pending))
                return [self._pending.popleft() for _ in range(count)]
            finally:
                self._gathering = False
                self._cond.notify_all()  # another free slot may start gathering now

    def _at_head(self, request: BatchResult) -> bool:
        """Whether ``request`` is among the oldest ``max_batch`` queued (caller holds the lock)."""
        return any(queued is request for queued in itertools.islice(self._pending, self.max_batch))

    def _execute(self, batch: list[BatchResult]) -> None:
        started = time.perf_counter()
        size = len(batch)
        error: BaseException | None = None
        slices: list[dict[str, np.ndarray]] = []
        try:
            stacked = batch[0].tensor if size == 1 else np.concatenate([r.tensor for r in batch], axis=0)
            outputs = self._run(stacked)
            slices = [outputs] if size == 1 else split_batch(outputs, size, self.label)
        except BaseException as exc:  # every request of the batch gets the failure
            error = exc
        elapsed = time.perf_counter() - started
        with self._cond:
            for index, request in enumerate(batch):
                request.started, request.inference_s, request.batch_size = started, elapsed, size
                if error is None:
                    request.outputs = slices[index]
                else:
                    request.error = error
                request.done = True
            self._free += 1
            self._cond.notify_all()


def _copy_of(error: BaseException) -> BaseException:
    """The same error as a new object (the original when its class cannot be rebuilt from its args)."""
    try:
        fresh = copy.copy(error)
    except Exception:  # a constructor that does not take its own args back
        return error
    fresh.__traceback__ = None
    return fresh


def split_batch(outputs: dict[str, np.ndarray], size: int, label: str = "") -> list[dict[str, np.ndarray]]:
    """Cuts each output along axis 0 into ``size`` views of batch 1.

    Raises:
        InferenceError: an output does not carry the batch on its first axis.
    """
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != size:
            raise InferenceError(
                f"model {label}: output {name!r} has shape {list(value.shape)} for a batch of {size}; a batched "
                "model must return the batch on the first axis. Set \"batching\": false in the manifest."
            )
    return [{name: value[i:i + 1] for name, value in outputs.items()} for i in range(size)]
