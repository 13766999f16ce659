"""POSIX shared memory, read and written without ever owning the segment.

Clients create segments (``shm_open``, ``posix_ipc``,
``multiprocessing.shared_memory``) and reuse them for every frame. The agent
opens them by name under ``/dev/shm`` exactly as ``shm_open(3)`` does, reads
with ``pread`` (a client that truncates its segment mid-call gets an error,
never a SIGBUS in the agent), writes masks with ``pwrite`` after a size check,
and never unlinks. Python's ``multiprocessing.shared_memory`` is deliberately
not used: before 3.13 its resource tracker unlinks segments a process merely
opened.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import numpy as np

from edge_agent.constants import SHM_DIR, SHM_NAME_MAX_BYTES
from edge_agent.errors import InvalidArgumentError

_U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class SegmentRange:
    """A validated byte range inside a named segment."""

    name: str  # without the leading "/"
    offset: int
    size: int


def normalize_name(name: str, field: str) -> str:
    """Returns the segment name without its optional leading '/'.

    Raises:
        InvalidArgumentError: for names shm_open would reject or that would leave /dev/shm.
    """
    bare = name[1:] if name.startswith("/") else name
    expected = "a POSIX shared memory name such as '/camera0' (one optional leading '/', no other '/')"
    if not bare:
        raise InvalidArgumentError(f"{field} is empty; expected {expected}.")
    if "/" in bare or "\x00" in bare or bare in (".", ".."):
        raise InvalidArgumentError(f"{field} {name!r} is not valid; expected {expected}.")
    if len(bare.encode("utf-8", "surrogateescape")) > SHM_NAME_MAX_BYTES:
        raise InvalidArgumentError(
            f"{field} is {len(bare.encode('utf-8', 'surrogateescape'))} bytes long; "
            f"shared memory names are at most {SHM_NAME_MAX_BYTES} bytes."
        )
    return bare


def check_range(name: str, offset: int, size: int, field: str) -> SegmentRange:
    """Validates a handle's name, offset and size (before touching the segment)."""
    bare = normalize_name(name, f"{field}.name")
    if size <= 0:
        raise InvalidArgumentError(f"{field}.size is {size}; it must be the number of bytes of the data (> 0).")
    if offset + size > _U64_MAX:
        raise InvalidArgumentError(f"{field}.offset + {field}.size overflows 64 bits ({offset} + {size}).")
    return SegmentRange(bare, offset, size)


def _open(segment: SegmentRange, field: str, writable: bool) -> int:
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    path = os.path.join(SHM_DIR, segment.name)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"{field}.name: no shared memory segment named {segment.name!r} exists. Create it "
            "(shm_open) before the call and keep it until the reply arrives."
        ) from None
    except PermissionError:
        mode = "read and write" if writable else "read"
        raise InvalidArgumentError(
            f"{field}.name: the agent may not {mode} shared memory segment {segment.name!r}. "
            "Create it with permissions that let the agent's user (or group) " + mode + " it."
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgumentError(f"{field}.name {segment.name!r} is a symbolic link, not a segment.") from None
        raise InvalidArgumentError(f"{field}.name: cannot open segment {segment.name!r}: {exc.strerror}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgumentError(f"{field}.name {segment.name!r} is not a shared memory segment.")
        end = segment.offset + segment.size
        if info.st_size < end:
            raise InvalidArgumentError(
                f"{field}: segment {segment.name!r} holds {info.st_size} bytes but offset {segment.offset} + "
                f"size {segment.size} = {end}. Make the segment larger or fix offset/size."
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def read(segment: SegmentRange, field: str) -> np.ndarray:
    """Copies ``size`` bytes at ``offset`` out of the segment into a new uint8 array."""
    out = np.empty(segment.size, dtype=np.uint8)
    read_into(segment, 0, out, field)
    return out


def check_readable(segment: SegmentRange, field: str) -> None:
    """Raises InvalidArgumentError unless the segment exists, is readable and holds offset + size bytes."""
    os.close(_open(segment, field, writable=False))


def read_into(segment: SegmentRange, start: int, out: np.ndarray, field: str) -> None:
    """Fills ``out`` (contiguous uint8) with the segment's bytes from ``offset + start``.

    ``start + out.size`` must stay within the handle's size. Used to read a large frame a
    block of rows at a time into a reused buffer.
    """
    if start < 0 or start + out.size > segment.size:
        raise ValueError(f"bytes {start}..{start + out.size} are outside the handle's {segment.size}")
    fd = _open(segment, field, writable=False)
    try:
        view = memoryview(out).cast("B")
        done = 0
        while done < view.nbytes:
            got = os.preadv(fd, [view[done:]], segment.offset + start + done)
            if got == 0:
                raise InvalidArgumentError(
                    f"{field}: segment {segment.name!r} shrank to {segment.offset + start + done} bytes while the "
                    "agent was reading it. Keep the segment's size until the reply arrives."
                )
            done += got
    finally:
        os.close(fd)


def write(segment: SegmentRange, data: bytes | memoryview | np.ndarray, field: str) -> None:
    """Writes ``data`` at ``offset`` into an existing segment of sufficient size."""
    buffer = memoryview(data).cast("B")
    if buffer.nbytes > segment.size:
        raise InvalidArgumentError(
            f"{field}.size is {segment.size} bytes but the mask needs {buffer.nbytes} (width*height*3). "
            "Pass a larger segment and size."
        )
    fd = _open(SegmentRange(segment.name, segment.offset, buffer.nbytes), field, writable=True)
    try:
        done = 0
        while done < buffer.nbytes:
            done += os.pwrite(fd, buffer[done:], segment.offset + done)
    finally:
        os.close(fd)
