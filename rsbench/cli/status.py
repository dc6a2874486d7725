"""`bench status RESULTS_DIR`: the state of every cell of a results folder (local or cluster grids).

States, first match wins: done (every result file reads back), running (its lock is held by a live process),
damaged (metrics.json exists but a result file does not read back: `bench run` repairs it),
failed (failed.json: the one-line error), incomplete (a resume checkpoint, no metrics, not locked:
interrupted, will resume), started (a folder, no checkpoint yet: will start over), queued (a job was
submitted, nothing on disk yet). The logic lives in rsbench.results.scan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def status(
    results_dir: Annotated[Path, typer.Argument(help="Results folder (the --out of `bench run`).")],
) -> None:
    """Show each cell's state: done, running, damaged, failed (with its error), incomplete (will resume), started
    (will start over), queued; with the options and data a cell was started with (others need --overwrite).

    Exits 1 when a cell is damaged (its result files do not read back)."""
    from ..results.scan import scan_status

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
