"""Per-cell locks: two `bench run` processes on one results folder never write the same cell.

The lock is an OS-level `flock` (filelock) on `<out>/<dataset>/<method>/.seed<k>.lock`, a sibling of
the cell folder (so `--overwrite` can empty the cell while holding it). The kernel releases it when
the holder exits in any way, SIGKILL included, so a killed run never leaves a lock that blocks.
A flock belongs to the open file, which forked children (DataLoader workers) share: they would keep
a killed run's lock alive until they notice their parent is gone (up to ~5 s). filelock >= 4 closes
the copies at fork time; for older filelock the runner's worker_init calls
`close_inherited_lock_fds()`. Who holds a lock is recorded beside it in `.seed<k>.lock.owner` (pid, host, start time) for the message the
other process prints; that file is informative only, never trusted for mutual exclusion.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

# lock descriptors this process holds -> (st_dev, st_ino) of the lock file, for forked children
_held_fds: dict[int, tuple[int, int]] = {}


def close_inherited_lock_fds() -> None:
    """In a forked child: close its copies of the parent's lock descriptors, so that the locks are
    released as soon as the parent dies (the parent keeps them; closing a copy does not unlock).

    filelock >= 4 already does this at fork time, after which the number may name another file:
    a descriptor is closed only if it still refers to the lock file.
    """
    for fd, ident in list(_held_fds.items()):
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == ident:
                os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


def lock_path(cell: str | Path) -> Path:
    """The lock file of a cell folder (a hidden sibling: `.seed0.lock`)."""
    cell = Path(cell)
    return cell.parent / f".{cell.name}.lock"


def cell_of_lock(lock: str | Path) -> Path | None:
    """The cell folder a lock file belongs to (inverse of `lock_path`); None for any other file."""
    lock = Path(lock)
    name = lock.name
    if not (name.startswith(".") and name.endswith(".lock")) or len(name) <= len("..lock"):
        return None
    return lock.parent / name[1:-len(".lock")]


def is_held(path: str | Path) -> bool:
    """True when a live process holds the lock file `path` (a non-blocking try, released at once).

    Opened read-only and never created or written, so checking leaves no trace. The holder's lock is
    the same `flock` that filelock takes (UnixFileLock), so this is the one probe of that protocol.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class PathLock:
    """A non-blocking (or bounded-wait) exclusive lock on `path`, with an owner note beside it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.owner_path = self.path.with_name(self.path.name + ".owner")
        self._lock = FileLock(str(self.path), thread_local=False)

    def acquire(self, timeout: float = 0.0) -> bool:
        """Take the lock, waiting at most `timeout` seconds; False if another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=timeout, poll_interval=0.2)
        except Timeout:
            return False
        fd = self._fd()
        if fd is not None:
            st = os.fstat(fd)
            _held_fds[fd] = (st.st_dev, st.st_ino)
        from .io import write_json

        write_json(self.owner_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv})
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            _held_fds.pop(self._fd() or -1, None)
            self.owner_path.unlink(missing_ok=True)
            self._lock.release()

    def _fd(self) -> int | None:
        """The OS descriptor filelock holds (private filelock state; None if it is not where expected)."""
        fd = getattr(getattr(self._lock, "_context", None), "lock_file_fd", None)
        return fd if isinstance(fd, int) else None

    @property
    def held(self) -> bool:
        """True while THIS object holds the lock (see probe() for any process)."""
        return self._lock.is_locked

    def probe(self) -> bool:
        """True when some live process (this one included) holds the lock; takes nothing."""
        return self.held or is_held(self.path)

    def owner(self) -> dict[str, Any]:
        """What the holder wrote about itself ({} if unknown: it may not have written it yet)."""
        from .io import read_json_object

        return read_json_object(self.owner_path) or {}

    def describe_owner(self) -> str:
        """'pid 123' or 'pid 123 on host gpu7' (host named only when it is not this one)."""
        info = self.owner()
        pid = info.get("pid", "unknown")
        host = info.get("host")
        return f"pid {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")

    def __enter__(self) -> PathLock:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def holding(lock: PathLock, busy: str, timeout: float = 0.0) -> Iterator[PathLock]:
    """Hold `lock` for a block; a UserError '<busy> (pid N)' if another process keeps it past `timeout`."""
    from .errors import UserError

    if not lock.acquire(timeout=timeout):
        raise UserError(f"{busy} ({lock.describe_owner()}); try again when it has finished")
    try:
        yield lock
    finally:
        lock.release()


def leaderboard_lock(folder: str | Path) -> PathLock:
    """The lock serialising writers of `<folder>/leaderboard.*` (bench run and bench leaderboard)."""
    return PathLock(Path(folder) / ".leaderboard.lock")


def cell_lock(cell: str | Path) -> PathLock:
    """The lock of one result cell (not yet acquired)."""
    return PathLock(lock_path(cell))
