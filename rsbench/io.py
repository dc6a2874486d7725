"""Atomic file writes: a reader never sees a half-written result, checkpoint or table.

Every writer goes through a temp file in the same folder (`.<name>.<random>.tmp`), fsync, then
os.replace, then an fsync of the folder. A crash at any moment leaves either the old file or the
new one under the real name, plus at worst a stale hidden `.tmp` file that no reader opens (the
runner removes those from a cell it resumes). A failed write (disk full, permissions) raises
WriteError naming the file; the previous version of the file is left untouched.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import UserError

TEMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; results are shared with the group like any file the user creates.
_FILE_MODE = 0o666 & ~_current_umask()


class WriteError(UserError):
    """A file could not be written (disk full, read-only folder...). The old file is unchanged."""


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temp file next to `path`; on clean exit fsync and rename it over `path`."""
    path = Path(path)
    binary = "b" in mode
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        kill_point(f"write:{path.name}")  # test-only crash hook: temp written, not yet renamed
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        err = _os_error_in(e) if isinstance(e, Exception) and not isinstance(e, UserError) else None
        if err is not None:
            raise WriteError(f"{path}: cannot write ({err.strerror or err}); "
                             "the previous version, if any, is unchanged") from None
        raise
    _fsync_dir(path.parent)


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind `e` (itself, or its cause/context: torch.save wraps write errors)."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        if isinstance(cur, OSError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomically write binary content produced by `writer(fileobj)` (np.save, torch.save, fig.savefig)."""
    with atomic_open(path, "wb") as f:
        writer(f)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, unreadable, not JSON or not an object.

    Why: status, resume and cache checks treat a damaged file like a missing one (rebuild, rerun);
    only commands that need the file use the strict `read_json`.
    """
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return obj if isinstance(obj, dict) else None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (similarity matrices and weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """`$RSBENCH_CACHE` (made absolute), default ~/.cache/rsbench when unset, empty or blank.

    The one cache root: the datasets (synthetic, images) and the runner's method cache both use it,
    so `RSBENCH_CACHE=""` cannot send one to the current folder and the other to ~/.cache.
    """
    value = os.environ.get("RSBENCH_CACHE", "").strip()
    return Path(value or "~/.cache/rsbench").expanduser().absolute()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file path next to `path` for writers that need a name (np.memmap); renamed over `path`
    on clean exit after an fsync, deleted on error. The body may write the file in any way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        kill_point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _trash_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.trash-{os.getpid()}-{time.time_ns()}")


def remove_tree_atomically(path: str | Path) -> None:
    """Delete a folder so that no reader ever sees it half-deleted: rename it to a hidden
    `.<name>.trash-*` sibling first, then delete that and any trash a killed earlier call left."""
    path = Path(path)
    if path.exists():
        os.rename(path, _trash_name(path))
    remove_trash(path)


def remove_trash(path: str | Path) -> None:
    """Delete the `.<name>.trash-*` siblings a killed remove_tree_atomically left beside `path`."""
    path = Path(path)
    for old in path.parent.glob(f".{glob.escape(path.name)}.trash-*"):
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path, is_complete: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """An empty temp folder next to `path`, renamed to `path` on clean exit; deleted on error.

    `path` may be missing or an empty folder. With `is_complete`: a complete `path` left by a
    racing writer wins (ours is discarded) and an incomplete leftover is removed first. Any other
    failure to rename is a WriteError naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        kill_point(f"dir:{path.name}")
        if is_complete is not None and path.exists() and not is_complete(path):
            remove_tree_atomically(path)  # an incomplete folder from an older, non-atomic writer
        try:
            os.rename(tmp, path)  # replaces an empty folder on POSIX
        except OSError as e:
            if is_complete is None or not is_complete(path):
                raise WriteError(f"{path}: could not move the new folder into place ({e.strerror})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


def stale_temp_files(folder: str | Path) -> list[Path]:
    """Temp files left in `folder` by writers that died before their rename."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)
                  and p.is_file())


def remove_stale_temp_files(folder: str | Path) -> int:
    """Delete `stale_temp_files(folder)`; only call while holding the folder's lock. Returns the count."""
    n = 0
    for p in stale_temp_files(folder):
        p.unlink(missing_ok=True)
        n += 1
    return n


# ---- TEST ONLY: crash injection -----------------------------------------------------------------
# Under the test suite (RSBENCH_TESTING=1, set by tests/conftest.py and inherited by the processes
# the tests start), RSBENCH_TEST_KILL_AT=<point>[#n] makes the process SIGKILL itself the n-th time
# (default 1st) it reaches <point>. Points: write:<file name> (temp file written, before the rename),
# step:<epoch>:<step> (after an optimiser step), eval:<split> (during an evaluation). Used by
# tests/test_reliability.py to prove that a run killed anywhere resumes to the same result.
# Both variables are read ONCE, at import; without RSBENCH_TESTING=1 the hook is None and
# kill_point is a no-op that never looks at the environment.
KILL_ENV = "RSBENCH_TEST_KILL_AT"
TEST_FLAG_ENV = "RSBENCH_TESTING"
_kill_hits: dict[str, int] = {}


def _kill_hook_from_env() -> Callable[[str], None] | None:
    """The test-only hook, or None (always None outside the test suite)."""
    if os.environ.get(TEST_FLAG_ENV) != "1" or not os.environ.get(KILL_ENV):
        return None
    point, _, nth = os.environ[KILL_ENV].partition("#")
    at = int(nth or 1)

    def hook(name: str) -> None:
        if name != point:
            return
        _kill_hits[name] = _kill_hits.get(name, 0) + 1
        if _kill_hits[name] == at:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


_kill_hook = _kill_hook_from_env()


def kill_point(name: str) -> None:
    """Test-only crash point: a no-op unless the test suite installed a hook at import."""
    if _kill_hook is not None:
        _kill_hook(name)
