"""Row bands: image work whose rows are independent, split across a few threads.

A 1280x720 frame's resize and its mask each take a few milliseconds of one core while the other
cores idle between inferences. Pillow's resampling and numpy's loops release the GIL, so cutting
the rows into bands and running them side by side shortens one call. The caller always runs the
first band itself and takes back any band that no helper thread has started yet, so a call never
waits behind another call's bands: when every core is busy (many cameras at once), the work is
done where it would have been done anyway, at the cost of one queue round trip per band.

Every caller of ``run`` splits work whose result does not depend on where the bands are cut: the
answer is the same, bit for bit, with one thread or eight (tests check this).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

MAX_THREADS = 64  # a sanity bound: more bands than this never pay off
MAX_AUTO_THREADS = 4  # beyond this the bands of a 1280x720 frame are too small to pay for the hand-off
# A band smaller than this many input pixels costs more to hand over than it saves.
MIN_PIXELS_PER_BAND = 300_000


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class RowBands:
    """Runs ``fn(first, stop)`` over consecutive row ranges on up to ``threads`` threads."""

    def __init__(self, threads: int = 0) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._threads = 1
        self.configure(threads)

    @property
    def threads(self) -> int:
        return self._threads

    def configure(self, threads: int) -> None:
        """``threads`` per call, the caller's included: 0 picks min(4, usable cores), 1 turns bands off."""
        if not 0 <= threads <= MAX_THREADS:
            raise ValueError(f"image threads must be 0 (automatic) or a count from 1 to {MAX_THREADS}, not {threads}")
        count = min(MAX_AUTO_THREADS, usable_cores()) if threads == 0 else threads
        with self._lock:
            old, self._pool, self._threads = self._pool, None, count
        if old is not None:
            old.shutdown(wait=False)

    def spans(self, rows: int, pixels: int) -> list[tuple[int, int]]:
        """Cuts ``rows`` rows (``pixels`` input pixels in all) into as many bands as pay off."""
        count = max(1, min(self._threads, rows, pixels // MIN_PIXELS_PER_BAND))
        cuts = [rows * i // count for i in range(count + 1)]
        return [(cuts[i], cuts[i + 1]) for i in range(count)]

    def run(self, fn: Callable[[int, int], T], spans: Sequence[tuple[int, int]]) -> list[T]:
        """``[fn(*span) for span in spans]``, the first in this thread, the rest on helpers when idle."""
        if len(spans) <= 1:
            return [fn(*span) for span in spans]
        pool = self._helpers()
        futures: list[Future[T]] = [pool.submit(fn, *span) for span in spans[1:]]
        try:
            results = [fn(*spans[0])]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        for future, span in zip(futures, spans[1:], strict=True):
            # Not started yet: every helper is busy (with other calls' bands), so do it here.
            results.append(fn(*span) if future.cancel() else future.result())
        return results

    def _helpers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self._threads - 1),
                                                thread_name_prefix="image-band")
            return self._pool


BANDS = RowBands()  # the agent's: ``edge-agent serve --image-threads`` configures it
