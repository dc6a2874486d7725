"""Finding cells in a results folder: the complete ones (for tables), and the state of every one
(`bench status`), plus the record of submitted cluster jobs.

States, first match wins: done (every result file reads back), running (its lock is held by a live
process), damaged (metrics.json exists but a result file does not read back: `bench run` repairs it),
failed (failed.json: the one-line error), incomplete (a resume checkpoint, no metrics, not locked:
interrupted, will resume), started (a folder, no checkpoint yet: will start over), queued (a job was
submitted, nothing on disk yet).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import read_json_object, write_json
from ..locks import PathLock, cell_of_lock, lock_path
from .cell import Cell, DamagedCell, cell_damage, read_cell, read_failure
from .layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    JOBS_FILE,
    JOBS_LOCK,
    METRICS_FILE,
    RESUME_FILE,
    TRAIN_LOG,
    iter_cells,
    parse_cell,
)


def require_results_dir(root: str | Path) -> Path:
    """`root` as a Path; a UserError if it is not an existing folder (checked before anything is written)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: results folder not found")
    return root


def _warn(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def scan_results(root: str | Path, skip_damaged: bool = False, warn: Callable[[str], Any] = _warn) -> list[Cell]:
    """All complete cells under root/<dataset>/<method>/seed<k>/, sorted; cells still running skipped.

    A damaged cell (metrics.json present, a result file unreadable) is never dropped silently: each
    gets a warning line, then a UserError unless skip_damaged (the caller's --skip-damaged).
    """
    root = require_results_dir(root)
    cells, damaged = [], []
    for cell in iter_cells(root):
        if not (cell / METRICS_FILE).exists():
            continue
        try:
            cells.append(read_cell(cell))
        except DamagedCell as e:
            damaged.append(str(e))
    for msg in sorted(damaged):
        warn(f"warning: damaged result cell: {msg}")
    if damaged and not skip_damaged:
        raise DamagedCell(f"{root}: {len(damaged)} damaged result cell(s), listed above; re-run them with "
                          "`bench run` (same options) to repair, or pass --skip-damaged to leave them out")
    cells.sort(key=lambda c: (c.dataset, c.method, c.seed))
    return cells


def complete_cells(root: str | Path, skip_damaged: bool = False) -> list[Cell]:
    """`scan_results`, and a UserError when the folder holds no complete cell at all."""
    cells = scan_results(root, skip_damaged)
    if not cells:
        raise UserError(f"{root}: no complete result cells (<dataset>/<method>/seed<k>/{METRICS_FILE})")
    return cells


# ---- the state of every cell (bench status) ------------------------------------------------------

@dataclass
class CellStatus:
    dataset: str
    method: str
    seed: int
    state: str
    detail: str = ""
    job: str = ""


def cell_status(cell: Path, job: str = "") -> CellStatus:
    """The state of one `<out>/<dataset>/<method>/seed<k>` folder (which may not exist yet)."""
    dataset, method, seed = parse_cell(cell) or (cell.parent.parent.name, cell.parent.name, -1)
    st = CellStatus(dataset, method, seed, "queued", "submitted, not started", job)
    lock = PathLock(lock_path(cell))
    try:
        mr = read_cell(cell).metrics.get("mR")
        st.state, st.detail = "done", f"test mR {mr:.2f}" if isinstance(mr, (int, float)) else ""
        return st
    except UserError:
        pass
    if lock.probe():
        st.state, st.detail = "running", lock.describe_owner()
    elif (damage := cell_damage(cell)) is not None:
        st.state, st.detail = "damaged", f"{damage}; `bench run` with the same options repairs it"
    elif (error := read_failure(cell)) is not None:
        st.state, st.detail = "failed", error
    elif (cell / CHECKPOINT_DIR / RESUME_FILE).is_file() and not (cell / CONFIG_FILE).is_file():
        st.state, st.detail = "incomplete", (f"interrupted after epoch {_epochs_logged(cell)}, but its config is "
                                             "unknown (no config.json): `bench run` refuses it without --overwrite")
    elif (cell / CHECKPOINT_DIR / RESUME_FILE).is_file():
        st.state, st.detail = "incomplete", f"interrupted after epoch {_epochs_logged(cell)}, will resume{_SAME}"
    elif cell.is_dir():
        same = _SAME if (cell / CONFIG_FILE).is_file() else ""  # no config.json: any options start it over
        st.state, st.detail = "started", f"no epoch finished yet, will start over{same}"
    elif not job:
        st.state, st.detail = "unknown", ""
    return st


# what `bench run` does depends on its options and data: with others than the cell's (config.json, data.json)
# it refuses (ConfigMismatch, DataMismatch)
_SAME = " (with the options and data it was started with; others need --overwrite)"


def _epochs_logged(cell: Path) -> str:
    """Completed epochs per train_log.csv ('?' when unreadable)."""
    try:
        lines = (cell / TRAIN_LOG).read_text(encoding="utf-8").strip().splitlines()
    except OSError:
        return "?"
    return str(max(0, len(lines) - 1))


def scan_status(out: Path) -> list[CellStatus]:
    """Every cell with a folder, a lock file or a recorded job under `out`, sorted."""
    out = require_results_dir(out)
    jobs = read_jobs(out)
    cells: set[Path] = set(iter_cells(out))
    for lock in out.glob("*/*/.seed*.lock"):
        cell = cell_of_lock(lock)
        if cell is not None and parse_cell(cell) is not None:
            cells.add(cell)
    for rel in jobs:
        if parse_cell(out / rel) is not None:
            cells.add(out / rel)
    rows = [cell_status(c, str(jobs.get(str(c.relative_to(out)), {}).get("job_id", ""))) for c in cells]
    return sorted(rows, key=lambda r: (r.dataset, r.method, r.seed))


# ---- submitted jobs (.jobs.json) -------------------------------------------------------------------

def record_jobs(out: Path, entries: list[tuple[Path, str]], launcher: str, folder: Path) -> None:
    """Merge {cell (relative to out): {job_id, launcher, folder, submitted}} into `<out>/.jobs.json`."""
    lock = PathLock(out / JOBS_LOCK)
    if not lock.acquire(timeout=60):
        return
    try:
        known = read_jobs(out)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for cell, job_id in entries:
            known[str(Path(cell).relative_to(out))] = {"job_id": str(job_id), "launcher": launcher,
                                                        "folder": str(folder), "submitted": now}
        write_json(out / JOBS_FILE, known)
    finally:
        lock.release()


def read_jobs(out: Path) -> dict[str, dict[str, Any]]:
    """What `record_jobs` wrote ({} when nothing was submitted or the file does not read back)."""
    return read_json_object(Path(out) / JOBS_FILE) or {}
