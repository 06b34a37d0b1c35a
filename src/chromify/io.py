"""Atomic file writes: a reader never sees a half-written file, an interrupted run never leaves one."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a finished output gets the mode an ordinary open() would have given it.
_FILE_MODE = 0o666 & ~_current_umask()


def die_with(parent: int) -> None:
    """In a pool worker forked by `parent`: be killed when it dies, even of SIGKILL (Linux). Left behind, a worker
    waits on its task queue for good, holding the fds it inherited, among them the parent's folder lock. And end
    quietly on SIGTERM, which its pool sends when a sibling died: the CLI's handler, inherited through the fork,
    printed a traceback from the worker."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Write through `write(fileobj)` into a temp file beside `path`, fsync, then rename over it.

    durable=False skips the fsyncs (~10 ms a file) for files whose loss in a power cut the next run detects and redoes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # A full disk fails in write or fsync, which name no file: name the one it was. An error with no errno
        # (Pillow's encoder: "broken data stream") has only its message, which a rewrap would lose.
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    if durable:
        fsync_path(path.parent)  # the rename itself survives a power cut only once its folder is on disk


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder by path: data a durable pointer (an alias, a renamed folder) refers to must reach
    the disk first. Filesystems that cannot fsync a folder (some network mounts) are let be."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file through a read-only memory map of the page cache: no read copies, 30% faster than
    reading blocks (shards and model files are too big to read whole); hashlib releases the GIL meanwhile."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return hashlib.sha256(m).hexdigest()


@contextmanager
def exclusive_lock(path: Path, busy: Callable[[int | None], Exception], unguarded: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (our pid inside) for the block; `busy(pid)` is raised at once if another
    process holds it. On a mount without locks (NFS without lockd) refusing would stop the work there altogether,
    so it runs unguarded with a warning that says `unguarded` may happen.

    flock, not a marker file: the kernel drops it when the process ends however it ends, so a kill -9 leaves only an
    unlocked file that the next run takes over. The file is removed at the end, so a folder DVC caches holds none.
    """
    fd = _take_lock(path, busy, unguarded)
    if fd is None:
        yield
        return
    try:
        # Written in place, not by atomic_write: a new file would be another inode, which the lock is not on.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: see _take_lock
        os.close(fd)


@contextmanager
def lock_if_free(path: Path) -> Iterator[bool]:
    """Hold the flock on `path` for the block if nobody does (True), as exclusive_lock does; False, holding
    nothing, when a live process holds it or the file system has no locks: for cleaning up after killed runs."""
    try:
        fd = _take_lock(path, lambda pid: _Held(), None)
    except _Held:
        fd = None
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)  # before the unlock: see _take_lock
        os.close(fd)


class _Held(Exception):
    pass


def _take_lock(path: Path, busy: Callable[[int | None], Exception], unguarded: str | None) -> int | None:
    """An fd holding an exclusive flock on `path`, or None on a file system without locks (said on stderr unless
    `unguarded` is None)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).strip()  # empty while the holder is between its lock and its write
            os.close(fd)
            raise busy(int(pid) if pid.isdigit() else None) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if unguarded is not None:
                print(f"chromify: {path.parent} cannot be locked ({exc.strerror}); nothing stops {unguarded}",
                      file=sys.stderr, flush=True)
            return None
        # A finishing holder unlinks the file, then unlocks: a lock taken on that unlinked file excludes nobody,
        # so take the one now at the path.
        try:
            here, ours = os.stat(path), os.fstat(fd)
            if (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
