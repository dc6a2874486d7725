"""`bench status RESULTS_DIR`: the state of every cell of a results folder (local or cluster grids).

States, first match wins: done (every result file reads back), running (its lock is held by a live process),
damaged (metrics.json exists but a result file does not read back: `bench run` repairs it),
failed (failed.json: the one-line error), incomplete (a resume checkpoint, no metrics, not locked:
interrupted, will resume), started (a folder, no checkpoint yet: will start over), queued (a job was
submitted, nothing on disk yet).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer


_SEED = re.compile(r"^seed(\d+)$")
_LOCK = re.compile(r"^\.(seed\d+)\.lock$")


@dataclass
class CellStatus:
    dataset: str
    method: str
    seed: int
    state: str
    detail: str = ""
    job: str = ""


def lock_is_held(lock: Path) -> bool:
    """True when a live process holds this flock (try-acquire, non-blocking, released at once).

    Opened read-only and never created or written, so checking leaves no trace; a `bench run` that
    tries the same cell in the same instant sees it busy and skips it (run it again to pick it up).
    """
    try:
        fd = os.open(lock, os.O_RDONLY)
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


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cell_status(cell: Path, job: str = "") -> CellStatus:
    """The state of one `<out>/<dataset>/<method>/seed<k>` folder (which may not exist yet)."""
    from ..engine.cellfolder import FAILED_FILE
    from ..locks import PathLock, lock_path
    from ..results.cell import cell_damage, is_complete

    seed = int(_SEED.match(cell.name).group(1))  # type: ignore[union-attr]
    st = CellStatus(cell.parent.parent.name, cell.parent.name, seed, "queued", "submitted, not started", job)
    last = cell / "checkpoint" / "last.pt"
    if is_complete(cell):
        m = _read(cell / "metrics.json")
        mr = m.get("mR")
        st.state, st.detail = "done", f"test mR {mr:.2f}" if isinstance(mr, (int, float)) else ""
    elif lock_is_held(lock_path(cell)):
        st.state, st.detail = "running", PathLock(lock_path(cell)).describe_owner()
    elif (damage := cell_damage(cell)) is not None:
        st.state, st.detail = "damaged", f"{damage}; `bench run` with the same options repairs it"
    elif (cell / FAILED_FILE).is_file():
        st.state = "failed"
        st.detail = str(_read(cell / FAILED_FILE).get("error", "unknown error"))
    elif last.is_file():
        st.state, st.detail = "incomplete", f"interrupted after epoch {_epochs_logged(cell)}, will resume"
    elif cell.is_dir():
        st.state, st.detail = "started", "no epoch finished yet, will start over"
    elif not job:
        st.state, st.detail = "unknown", ""
    return st


def _epochs_logged(cell: Path) -> str:
    """Completed epochs per train_log.csv ('?' when unreadable)."""
    try:
        lines = (cell / "train_log.csv").read_text(encoding="utf-8").strip().splitlines()
    except OSError:
        return "?"
    return str(max(0, len(lines) - 1))


def scan_status(out: Path) -> list[CellStatus]:
    """Every cell with a folder, a lock file or a recorded job under `out`, sorted."""
    from ..engine.launch import read_jobs
    from ..results.cell import require_results_dir

    require_results_dir(out)
    jobs = read_jobs(out)
    cells: set[Path] = set()
    for d in out.glob("*/*/seed*"):
        if d.is_dir() and _SEED.match(d.name) and not d.parent.name.startswith(".") \
                and not d.parent.parent.name.startswith("."):
            cells.add(d)
    for lock in out.glob("*/*/.seed*.lock"):
        m = _LOCK.match(lock.name)
        if m and not lock.parent.parent.name.startswith("."):
            cells.add(lock.parent / m.group(1))
    for rel in jobs:
        p = out / rel
        if _SEED.match(p.name):
            cells.add(p)
    rows = [cell_status(c, str(jobs.get(str(c.relative_to(out)), {}).get("job_id", ""))) for c in cells]
    return sorted(rows, key=lambda r: (r.dataset, r.method, r.seed))


def status(
    results_dir: Annotated[Path, typer.Argument(help="Results folder (the --out of `bench run`).")],
) -> None:
    """Show each cell's state: done, running, damaged, failed (with its error), incomplete (will resume), queued.

    Exits 1 when a cell is damaged (its result files do not read back)."""
    rows = scan_status(results_dir)
    if not rows:
        typer.echo(f"no cells in {results_dir}")
        return
    show_job = any(r.job for r in rows)
    typer.echo(f"{'dataset':<12} {'method':<10} {'seed':>4}  {'state':<10}" + (f" {'job':<12}" if show_job else "")
               + "  detail")
    for r in rows:
        typer.echo(f"{r.dataset:<12} {r.method:<10} {r.seed:>4}  {r.state:<10}"
                   + (f" {r.job or '-':<12}" if show_job else "") + f"  {r.detail}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    typer.echo(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if counts.get("damaged"):
        raise typer.Exit(1)
