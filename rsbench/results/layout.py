"""Every file and folder name of a results folder, and the one parser of a cell's path.

<out>/<dataset>/<method>/seed<k>/ holds one (dataset, method, seed) cell; beside it the hidden lock
`.seed<k>.lock` (rsbench.locks). Folders whose name starts with '.' are never cells (trash, temp).
Nothing else in the package spells these names: import them from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

# ---- inside a cell folder -------------------------------------------------------------------------
METRICS_FILE = "metrics.json"  # written last: its presence marks a finished cell
RANKS_FILE = "ranks.npz"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"  # versions, hardware, data, wall time (results.cell.run_record)
DATA_FILE = "data.json"  # the data a cell was started on (written before its first epoch)
FAILED_FILE = "failed.json"  # the one-line error of a failed cell (results.cell.write_failure)
TRAIN_LOG = "train_log.csv"
CHECKPOINT_DIR = "checkpoint"
RESUME_FILE = "last.pt"  # inside CHECKPOINT_DIR
METRICS_EXCLUDED_FILE = "metrics_excluded.json"  # eval.exclude: test metrics without the leaked images
TENSORBOARD_DIR = "tensorboard"  # train.tensorboard=true: per-epoch event files (engine.tblog)

# ---- at the root of a results folder --------------------------------------------------------------
JOBS_FILE = ".jobs.json"  # cluster jobs submitted per cell (results.scan.record_jobs)
JOBS_LOCK = ".jobs.lock"
LEADERBOARD = "leaderboard"  # leaderboard.csv, .md and .tex: written as one set (results.leaderboard)
LEADERBOARD_SUFFIXES = ("csv", "md", "tex")
SIGNIFICANCE_FILE = "significance.csv"

SEED_DIR = re.compile(r"^seed(\d+)$")


def cell_dir(out: str | Path, dataset: str, method: str, seed: int) -> Path:
    """The folder of one (dataset, method, seed) result."""
    return Path(out) / dataset / method / f"seed{int(seed)}"


def parse_cell(cell: str | Path) -> tuple[str, str, int] | None:
    """(dataset, method, seed) of a cell folder path; None when the path is not shaped like one
    (last part not seed<k>, or a hidden dataset/method folder)."""
    cell = Path(cell)
    m = SEED_DIR.match(cell.name)
    dataset, method = cell.parent.parent.name, cell.parent.name
    if not m or not dataset or not method or dataset.startswith(".") or method.startswith("."):
        return None
    return dataset, method, int(m.group(1))


def iter_cells(root: str | Path) -> Iterator[Path]:
    """Every existing cell folder <root>/<dataset>/<method>/seed<k> (hidden folders skipped), unsorted."""
    for d in Path(root).glob("*/*/seed*"):
        if d.is_dir() and parse_cell(d) is not None:
            yield d


def leaderboard_paths(folder: str | Path) -> dict[str, Path]:
    """{"csv": <folder>/leaderboard.csv, "md": ..., "tex": ...}."""
    return {s: Path(folder) / f"{LEADERBOARD}.{s}" for s in LEADERBOARD_SUFFIXES}
