"""Item 11: the README's full synthetic comparison (4 methods x 2 seeds), end to end as a user types it.

Ours is the README's command (`--jobs 2`: two cells at a time, the cores shared out); the reference is
the same grid one cell at a time (`--jobs 1`, every core on each cell), run after it in the same harness
run. Both are `bench run` processes on the default synthetic set (generated once beforehand, untimed),
into fresh results folders, so every cell trains; the wall time includes the start-up of the process. The
target is absolute: at most 4 minutes on 2 idle cores (#20).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .harness import Row, fmt_seconds, load_average, verdict
from .workspace import Workspace

README_GRID = ("--methods", "vsepp,amfmn,msa,clip", "--dataset", "synthetic", "--seeds", "0,1")
TARGET_S = 240.0


def bench_grid(grid: tuple[str, ...], out: Path, jobs: int) -> tuple[float, dict[tuple[str, int], float]]:
    """Wall seconds of `bench run <grid> --jobs N` and each cell's test mR."""
    from ..results.scan import scan_results

    argv = [sys.executable, "-m", "rsbench.cli", "run", *grid, "--out", str(out), "--no-progress", "--jobs", str(jobs)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=dict(os.environ))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no output"]
        raise RuntimeError(f"item 11: `{' '.join(argv[3:])}` exited {proc.returncode}: {lines[-1]}")
    return wall, {(c.method, c.seed): float(c.metrics["mR"]) for c in scan_results(out)}


def _mr_text(mr: dict[tuple[str, int], float]) -> str:
    methods = dict.fromkeys(m for m, _ in mr)
    return "; ".join(f"{m} " + " / ".join(f"{mr[(m, s)]:.2f}" for s in sorted(s for k, s in mr if k == m))
                     for m in methods)


def item_grid(ws: Workspace) -> list[Row]:
    from ..datasets.source import SYNTHETIC_DEFAULTS
    from ..datasets.synthetic.store import synthetic_root

    synthetic_root(**SYNTHETIC_DEFAULTS)  # the default synthetic set, generated before the clocks start
    grid = ws.sizes.grid or README_GRID  # --quick: a smaller grid, no target
    cells = len(grid[grid.index("--methods") + 1].split(",")) * len(grid[grid.index("--seeds") + 1].split(","))
    load_before = load_average()
    ours, mr_ours = bench_grid(grid, ws.root / "grid_jobs2", 2)
    ref, mr_ref = bench_grid(grid, ws.root / "grid_jobs1", 1)
    complete = len(mr_ours) == len(mr_ref) == cells
    ws.notes.append(f"Item 11: test mR per method, seeds 0 / 1: --jobs 2 (1 thread per cell on 2 cores): "
                    f"{_mr_text(mr_ours)}; --jobs 1: {_mr_text(mr_ref)}. Load average before: {load_before}, "
                    f"after: {load_average()}. The two differ in the thread count of each cell (CPU sums in "
                    "another order), not in what is computed.")
    readme = grid == README_GRID
    name = ("README full comparison: " if readme else "") + "bench run " + " ".join(grid) + " --jobs 2"
    return [Row("11", name, fmt_seconds(ours), f"{fmt_seconds(ref)} (--jobs 1)", f"{ref / ours:.2f}x",
                check=f"{cells} cells complete: {complete}",
                target=f"<= {TARGET_S:.0f} s (2 idle cores)" if readme else "-",
                result=verdict(ours <= TARGET_S, complete) if readme else "-", ok=complete)]
