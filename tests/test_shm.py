"""POSIX shared memory, with real segments in /dev/shm.

The agent reads client segments and writes masks into them; it never creates, grows or unlinks
one. Every segment these tests make has a unique name and is removed by the fixture's finalizer.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent import shm
from edge_agent.constants import SHM_DIR, SHM_NAME_MAX_BYTES
from edge_agent.errors import InvalidArgumentError

REPO = Path(__file__).resolve().parent.parent
FIELD = "bitmap.shared_memory_handle"
# How long a call may take before the test decides it blocked (a FIFO open would block forever).
BLOCK_TIMEOUT_S = 10.0


def _unique_name() -> str:
    return f"ea-test-{os.getpid()}-{secrets.token_hex(6)}"


class Segments:
    """Makes named entries in /dev/shm and removes every one of them afterwards."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def path(self, name: str) -> str:
        return os.path.join(SHM_DIR, name.lstrip("/"))

    def reserve(self) -> str:
        """A fresh unique name, removed at teardown whatever the test put there."""
        name = _unique_name()
        self.created.append(name)
        return name

    def create(self, content: bytes | int) -> str:
        """A segment holding ``content`` (or that many zero bytes), as shm_open + ftruncate make it."""
        name = self.reserve()
        fd = os.open(self.path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if isinstance(content, int):
                os.ftruncate(fd, content)
            else:
                os.write(fd, content)
        finally:
            os.close(fd)
        return name

    def content(self, name: str) -> bytes:
        with open(self.path(name), "rb") as handle:
            return handle.read()

    def size(self, name: str) -> int:
        return os.stat(self.path(name)).st_size

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.path(name))

    def cleanup(self) -> None:
        for name in self.created:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass


@pytest.fixture
def segments(request: pytest.FixtureRequest) -> Segments:
    if not os.path.isdir(SHM_DIR):
        pytest.skip(f"{SHM_DIR} is missing: no POSIX shared memory here")
    made = Segments()
    request.addfinalizer(made.cleanup)
    return made


def _random_bytes(count: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes()


def _segment(name: str, offset: int, size: int) -> shm.SegmentRange:
    return shm.check_range(name, offset, size, FIELD)


def _call_without_blocking(call: Callable[[], object], unblock: Callable[[], None]) -> BaseException | None:
    """Runs ``call`` in a thread; fails the test if it has not returned within BLOCK_TIMEOUT_S."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BLOCK_TIMEOUT_S)
    if thread.is_alive():
        unblock()
        thread.join(BLOCK_TIMEOUT_S)
        pytest.fail(f"the call blocked for more than {BLOCK_TIMEOUT_S} s")
    return outcome[0]


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "bare"), [
    ("/camera0", "camera0"),
    ("camera0", "camera0"),
    ("/psm_1a2b", "psm_1a2b"),
    ("/with space", "with space"),
    ("/..hidden", "..hidden"),
    ("/" + "n" * SHM_NAME_MAX_BYTES, "n" * SHM_NAME_MAX_BYTES),
])
def test_normalize_name_strips_one_leading_slash_when_name_is_valid(name: str, bare: str) -> None:
    assert shm.normalize_name(name, "f") == bare


@pytest.mark.parametrize("name", ["", "/"])
def test_normalize_name_rejects_name_when_it_is_empty(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^f\.name is empty"):
        shm.normalize_name(name, "f.name")


@pytest.mark.parametrize("name", [".", "/.", "..", "/..", "a/b", "/a/b", "//a", "/a/", "../etc/passwd",
                                  "a\x00b", "/\x00"])
def test_normalize_name_rejects_name_when_it_could_leave_dev_shm(name: str) -> None:
    with pytest.raises(InvalidArgumentError,
                       match=r"^f\.name .* is not valid; expected a POSIX shared memory"):
        shm.normalize_name(name, "f.name")


@pytest.mark.parametrize("name", [
    "n" * (SHM_NAME_MAX_BYTES + 1),
    "/" + "n" * (SHM_NAME_MAX_BYTES + 1),
    "\u00e9" * 128,  # 128 characters, 256 bytes in UTF-8
])
def test_normalize_name_rejects_name_when_it_is_longer_than_name_max_bytes(name: str) -> None:
    with pytest.raises(InvalidArgumentError,
                       match=r"256 bytes long; shared memory names are at most 255 bytes"):
        shm.normalize_name(name, "f.name")


def test_check_range_rejects_size_when_it_is_zero() -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{FIELD}\.size is 0"):
        shm.check_range("/x", 0, 0, FIELD)


def test_check_range_rejects_range_when_offset_plus_size_overflows_64_bits() -> None:
    with pytest.raises(InvalidArgumentError, match="overflows 64 bits"):
        shm.check_range("/x", 2**64 - 10, 11, FIELD)


def test_check_range_names_the_name_field_when_the_name_is_bad() -> None:
    with pytest.raises(InvalidArgumentError, match=rf"^{FIELD}\.name 'a/b' is not valid"):
        shm.check_range("a/b", 0, 1, FIELD)


def test_check_range_keeps_offset_and_size_when_valid() -> None:
    assert shm.check_range("/x", 7, 9, FIELD) == shm.SegmentRange("x", 7, 9)


# -- read ----------------------------------------------------------------------------------------


def test_read_copies_the_range_at_offset_when_segment_is_larger(segments: Segments) -> None:
    data = _random_bytes(10_000)
    name = segments.create(data)

    out = shm.read(_segment("/" + name, 1000, 3000), FIELD)

    assert out.dtype == np.uint8
    assert out.shape == (3000,)
    assert out.tobytes() == data[1000:4000]


@pytest.mark.parametrize("with_slash", [True, False])
def test_read_finds_the_segment_when_leading_slash_is_optional(segments: Segments, with_slash: bool) -> None:
    data = _random_bytes(512, seed=1)
    name = segments.create(data)
    out = shm.read(_segment(("/" if with_slash else "") + name, 0, 512), FIELD)
    assert out.tobytes() == data


def test_read_returns_a_private_copy_when_the_client_rewrites_its_segment(segments: Segments) -> None:
    name = segments.create(b"\x01" * 256)
    out = shm.read(_segment(name, 0, 256), FIELD)
    with open(segments.path(name), "r+b") as handle:
        handle.write(b"\x02" * 256)
    assert out.tobytes() == b"\x01" * 256


def test_read_accepts_range_when_it_ends_exactly_at_the_segment_end(segments: Segments) -> None:
    data = _random_bytes(300, seed=2)
    name = segments.create(data)
    assert shm.read(_segment(name, 100, 200), FIELD).tobytes() == data[100:]


def test_read_reads_a_segment_made_by_multiprocessing_when_client_uses_shared_memory(
        segments: Segments) -> None:
    from multiprocessing import shared_memory

    name = segments.reserve()
    block = shared_memory.SharedMemory(name=name, create=True, size=4096)
    try:
        block.buf[:4] = b"RGB!"
        out = shm.read(_segment("/" + name, 0, 4), FIELD)
        assert out.tobytes() == b"RGB!"
    finally:
        block.close()
        block.unlink()


def test_read_rejects_name_when_no_segment_exists(segments: Segments) -> None:
    name = segments.reserve()
    with pytest.raises(InvalidArgumentError,
                       match=rf"{FIELD}\.name: no shared memory segment named '{name}'"):
        shm.read(_segment("/" + name, 0, 10), FIELD)
    assert not segments.exists(name), "reading must never create a segment"


@pytest.mark.parametrize(("offset", "size"), [(0, 101), (50, 51), (100, 1)])
def test_read_rejects_range_when_segment_is_too_small(segments: Segments, offset: int, size: int) -> None:
    name = segments.create(100)
    expected = (rf"{FIELD}: segment '{name}' holds 100 bytes "
                rf"but offset {offset} \+ size {size} = {offset + size}\.")
    with pytest.raises(InvalidArgumentError, match=expected):
        shm.read(_segment(name, offset, size), FIELD)
    assert segments.size(name) == 100


def test_read_rejects_the_frame_when_the_segment_shrinks_during_the_read(
        segments: Segments, monkeypatch: pytest.MonkeyPatch) -> None:
    # A client truncating its segment mid-call: the wrapper truncates the real file before the
    # first read, so the agent sees a genuine short read and then end-of-file.
    name = segments.create(_random_bytes(8192, seed=3))
    real_preadv = os.preadv
    calls: list[int] = []

    def truncating_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if not calls:
            with open(segments.path(name), "r+b") as client:
                client.truncate(1010)
        calls.append(offset)
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(shm.os, "preadv", truncating_preadv)
    with pytest.raises(InvalidArgumentError, match=rf"segment '{name}' shrank to 1010 bytes while the agent"):
        shm.read(_segment(name, 1000, 4000), FIELD)
    assert calls == [1000, 1010], "one short read of 10 bytes, then end of file"


def test_read_assembles_the_range_when_the_kernel_returns_short_reads(
        segments: Segments, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _random_bytes(5000, seed=4)
    name = segments.create(data)
    real_preadv = os.preadv

    def at_most_777_bytes(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real_preadv(fd, [buffers[0][:777]], offset)

    monkeypatch.setattr(shm.os, "preadv", at_most_777_bytes)
    assert shm.read(_segment(name, 17, 4900), FIELD).tobytes() == data[17:4917]


def test_read_refuses_a_fifo_without_blocking_when_one_is_placed_in_dev_shm(segments: Segments) -> None:
    name = segments.reserve()
    os.mkfifo(segments.path(name), 0o600)

    def unblock() -> None:
        os.close(os.open(segments.path(name), os.O_WRONLY | os.O_NONBLOCK))

    error = _call_without_blocking(lambda: shm.read(_segment(name, 0, 10), FIELD), unblock)

    assert isinstance(error, InvalidArgumentError), error
    assert f"'{name}' is not a shared memory segment" in str(error)


def test_write_refuses_a_fifo_without_blocking_when_one_is_placed_in_dev_shm(segments: Segments) -> None:
    name = segments.reserve()
    os.mkfifo(segments.path(name), 0o600)

    def unblock() -> None:
        os.close(os.open(segments.path(name), os.O_RDONLY | os.O_NONBLOCK))

    error = _call_without_blocking(lambda: shm.write(_segment(name, 0, 3), b"abc", FIELD), unblock)

    assert isinstance(error, InvalidArgumentError), error
    assert "is not a shared memory segment" in str(error)
    assert stat.S_ISFIFO(os.lstat(segments.path(name)).st_mode)


@pytest.mark.parametrize("target_kind", ["segment", "outside"])
def test_read_refuses_a_symlink_when_one_is_placed_in_dev_shm(segments: Segments, tmp_path: Path,
                                                             target_kind: str) -> None:
    if target_kind == "segment":
        target = segments.path(segments.create(b"secret" * 10))
    else:
        secret = tmp_path / "secret"
        secret.write_bytes(b"secret" * 10)
        target = str(secret)
    name = segments.reserve()
    os.symlink(target, segments.path(name))

    with pytest.raises(InvalidArgumentError, match=rf"{FIELD}\.name '{name}' is a symbolic link"):
        shm.read(_segment(name, 0, 6), FIELD)
    with pytest.raises(InvalidArgumentError, match="is a symbolic link"):
        shm.write(_segment(name, 0, 6), b"XXXXXX", FIELD)
    assert Path(target).read_bytes() == b"secret" * 10


def test_read_refuses_a_directory_when_one_is_placed_in_dev_shm(segments: Segments) -> None:
    name = segments.reserve()
    os.mkdir(segments.path(name))
    try:
        with pytest.raises(InvalidArgumentError, match=rf"'{name}' is not a shared memory segment"):
            shm.read(_segment(name, 0, 1), FIELD)
        with pytest.raises(InvalidArgumentError, match=rf"cannot open segment '{name}'"):
            shm.write(_segment(name, 0, 1), b"x", FIELD)
    finally:
        os.rmdir(segments.path(name))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: permissions cannot be tested")
def test_read_names_the_permission_problem_when_the_segment_is_not_readable(segments: Segments) -> None:
    name = segments.create(16)
    os.chmod(segments.path(name), 0)
    with pytest.raises(InvalidArgumentError, match=rf"may not read shared memory segment '{name}'"):
        shm.read(_segment(name, 0, 16), FIELD)


# -- write ---------------------------------------------------------------------------------------


def test_write_puts_the_mask_at_the_offset_when_the_segment_is_large_enough(segments: Segments) -> None:
    before = b"\xab" * 20_000
    name = segments.create(before)
    mask = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    shm.write(_segment("/" + name, 4096, mask.nbytes), mask, "anomaly_mask_params.shared_memory_handle")

    after = segments.content(name)
    assert len(after) == 20_000
    assert after[:4096] == before[:4096]
    assert after[4096:4096 + mask.nbytes] == mask.tobytes()
    assert after[4096 + mask.nbytes:] == before[4096 + mask.nbytes:]


def test_write_leaves_the_rest_of_the_range_alone_when_size_exceeds_the_mask(segments: Segments) -> None:
    name = segments.create(b"\x11" * 100)
    shm.write(_segment(name, 10, 80), b"\x22" * 30, FIELD)
    assert segments.content(name) == b"\x11" * 10 + b"\x22" * 30 + b"\x11" * 60


def test_write_refuses_the_mask_when_the_handle_size_is_too_small(segments: Segments) -> None:
    name = segments.create(b"\x00" * 1000)
    with pytest.raises(InvalidArgumentError, match=rf"^{FIELD}\.size is 299 bytes but the mask needs 300"):
        shm.write(_segment(name, 0, 299), b"\x07" * 300, FIELD)
    assert segments.content(name) == b"\x00" * 1000


@pytest.mark.parametrize(("segment_size", "offset"), [(299, 0), (1000, 701), (100, 100)])
def test_write_never_grows_the_segment_when_it_is_too_small_for_the_mask(
        segments: Segments, segment_size: int, offset: int) -> None:
    name = segments.create(b"\x00" * segment_size)
    with pytest.raises(InvalidArgumentError,
                       match=rf"segment '{name}' holds {segment_size} bytes but offset {offset}"):
        shm.write(_segment(name, offset, 300), b"\x07" * 300, FIELD)
    assert segments.size(name) == segment_size
    assert segments.content(name) == b"\x00" * segment_size


def test_write_never_creates_a_segment_when_none_exists(segments: Segments) -> None:
    name = segments.reserve()
    with pytest.raises(InvalidArgumentError, match="no shared memory segment named"):
        shm.write(_segment(name, 0, 3), b"abc", FIELD)
    assert not segments.exists(name)


# -- the agent never unlinks ---------------------------------------------------------------------


def test_segment_survives_when_the_agent_reads_and_writes_it(segments: Segments) -> None:
    name = segments.create(_random_bytes(4096, seed=6))
    inode = os.stat(segments.path(name)).st_ino

    shm.read(_segment("/" + name, 0, 4096), FIELD)
    shm.write(_segment("/" + name, 0, 4096), b"\x01" * 4096, FIELD)

    assert segments.exists(name)
    assert os.stat(segments.path(name)).st_ino == inode
    assert segments.content(name) == b"\x01" * 4096


_CHILD = """
import hashlib, sys
from edge_agent import shm
name = sys.argv[1]
segment = shm.check_range(name, 0, 4096, "bitmap.shared_memory_handle")
data = shm.read(segment, "bitmap.shared_memory_handle")
shm.write(shm.check_range(name, 4096, 8, "m"), b"written!", "m")
print(hashlib.sha256(data.tobytes()).hexdigest())
"""


def test_segment_survives_when_a_child_process_that_read_it_exits(segments: Segments) -> None:
    # Python's multiprocessing.shared_memory registers even segments it only attaches to with the
    # resource tracker, which unlinks them when the process exits: the agent must not do that.
    data = _random_bytes(4096, seed=7)
    name = segments.create(data + b"\x00" * 8)
    inode = os.stat(segments.path(name)).st_ino
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}

    child = subprocess.run([sys.executable, "-c", _CHILD, "/" + name], capture_output=True, text=True,
                           timeout=60, env=env, check=False)

    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert "resource_tracker" not in child.stderr, child.stderr
    assert segments.exists(name), "the segment was unlinked when the child exited"
    assert os.stat(segments.path(name)).st_ino == inode
    assert segments.content(name)[4096:] == b"written!"


def _read_in_spawned_child(name: str) -> None:
    from edge_agent import shm as child_shm

    child_shm.read(child_shm.check_range(name, 0, 64, "f"), "f")


def test_segment_survives_when_a_spawned_multiprocessing_child_read_it(segments: Segments) -> None:
    import multiprocessing

    name = segments.create(_random_bytes(64, seed=8))
    process = multiprocessing.get_context("spawn").Process(target=_read_in_spawned_child, args=(name,))
    process.start()
    process.join(60)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail("the spawned child did not finish")
    assert process.exitcode == 0
    assert segments.exists(name), "the segment was unlinked when the spawned child exited"


def test_read_into_fills_a_block_at_an_offset_within_the_handle(segments: Segments) -> None:
    data = _random_bytes(6000, seed=9)
    name = segments.create(data)
    segment = _segment(name, 100, 5000)
    out = np.zeros(1000, np.uint8)
    shm.read_into(segment, 2000, out, FIELD)
    assert out.tobytes() == data[2100:3100]
    with pytest.raises(ValueError, match="outside the handle"):
        shm.read_into(segment, 4500, out, FIELD)


def test_check_readable_reports_a_missing_or_short_segment_before_any_read(segments: Segments) -> None:
    name = segments.create(_random_bytes(100, seed=1))
    shm.check_readable(_segment(name, 0, 100), FIELD)
    with pytest.raises(InvalidArgumentError, match="holds 100 bytes"):
        shm.check_readable(_segment(name, 50, 100), FIELD)
    with pytest.raises(InvalidArgumentError, match="no shared memory segment"):
        shm.check_readable(_segment(name + "-gone", 0, 10), FIELD)
