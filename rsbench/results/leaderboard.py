"""The leaderboard of a results folder, and its ONE writer.

leaderboard.csv (every metric, mean and std over seeds), leaderboard.md and leaderboard.tex (the paper
tables of rsbench.results.tables: best values bold, significance marks between rows) are written as
one set, under the folder's leaderboard lock, by `write_leaderboard`: `bench leaderboard` calls it,
and `bench run` / submitit-local jobs call `update_leaderboard` (a bounded wait, one line back).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..evaluation.metrics import LEADERBOARD_METRICS, METRIC_HEADERS
from ..locks import holding, leaderboard_lock
from .cell import Cell, DamagedCell
from .layout import LEADERBOARD, LEADERBOARD_SUFFIXES, METRICS_FILE, leaderboard_paths
from .scan import require_results_dir, scan_results
from .tables import TableOptions, build_tables, render_tables

LEADERBOARD_WAIT_S = 120.0  # how long a writer waits for another writer of the same files
# leaderboard columns: each metric followed by its _std column
# then the split the rows were scored on and the chance mR of that split (a random scorer's, exact)
LEADERBOARD_COLUMNS = (["dataset", "method", "n_seeds"] + [c for m in LEADERBOARD_METRICS for c in (m, f"{m}_std")]
                       + ["split", "chance_mR"])
MARKDOWN_HEADERS = {"dataset": "Dataset", "method": "Method", "n_seeds": "Seeds", **METRIC_HEADERS}


def leaderboard(cells: list[Cell], split: str = "test") -> pd.DataFrame:
    """One row per (dataset, method): n_seeds, then each metric's mean over seeds and its std.

    Only cells of `split` (metrics.json "split", default "test") count, so scores on another
    split never mix into a test row. std is the sample std (ddof=1); with a single seed it is
    NaN (an empty field in the CSV), because a spread cannot be estimated from one run.
    Rows: by dataset, then mR descending (method name breaks ties).
    """
    rows = []
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        if str(c.metrics.get("split", "test")) != split:
            continue
        groups.setdefault((c.dataset, c.method), []).append(c)
    for (dataset, method), group in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "method": method, "n_seeds": len(group)}
        for m in LEADERBOARD_METRICS:
            vals = np.array([_as_float(c.metrics.get(m)) for c in group], dtype=np.float64)
            row[m] = float(np.mean(vals))
            row[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
        chance = [_as_float(c.metrics.get("chance_mR")) for c in group]
        row["split"], row["chance_mR"] = split, chance[0] if chance else math.nan
        rows.append(row)
    df = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    if len(df):
        df = df.sort_values(["dataset", LEADERBOARD_METRICS[0], "method"], ascending=[True, False, True], kind="stable")
    df["n_seeds"] = df["n_seeds"].astype(np.int64)
    return df.reset_index(drop=True)


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """'12.34 ± 0.56'; just the mean when std is NaN (one seed); '-' when the mean is missing."""
    if mean is None or math.isnan(mean):
        return "-"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def leaderboard_markdown(df: pd.DataFrame) -> str:
    """Every metric as a Markdown table, mean ± std with 2 decimals (recalls in %): what the CLI prints."""
    cols = ["dataset", "method", "n_seeds", *LEADERBOARD_METRICS]
    lines = [
        "| " + " | ".join(MARKDOWN_HEADERS[c] for c in cols) + " |",
        "|" + "|".join(":---" if c in ("dataset", "method") else "---:" for c in cols) + "|",
    ]
    for _, r in df.iterrows():
        cells = [str(r["dataset"]), str(r["method"]), str(int(r["n_seeds"]))]
        cells += [format_mean_std(r[m], r[f"{m}_std"]) for m in LEADERBOARD_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- the files -------------------------------------------------------------------------------------

def leaderboard_command(root: str | Path, out_dir: str | Path | None, options: TableOptions) -> str:
    """The `bench leaderboard` command that writes these files again (a comment atop the .tex)."""
    import shlex

    args = ["bench", "leaderboard", str(root)] + (["--out", str(out_dir)] if out_dir is not None else [])
    args += ["--with-published"] if options.with_published else []
    args += ["--alpha", f"{options.alpha:g}"] if options.alpha != TableOptions.alpha else []
    for key, name in options.labels:
        args += ["--label", f"{key}={name}"]
    return shlex.join(args)


def leaderboard_files(root: str | Path, out_dir: str | Path | None = None, skip_damaged: bool = False,
                      cells: list[Cell] | None = None, options: TableOptions | None = None,
                      ) -> tuple[pd.DataFrame, dict[Path, str]]:
    """The leaderboard table and {path: text} of leaderboard.csv, .md and .tex (nothing written)."""
    root = Path(root)
    cells = scan_results(root, skip_damaged) if cells is None else cells
    df = leaderboard(cells)
    if df.empty:
        raise UserError(f"{root}: no complete result cells of the test split "
                        f"(expected <dataset>/<method>/seed<k>/{METRICS_FILE})")
    options = options or TableOptions()
    texts = render_tables(build_tables(cells, df, options, where=str(root)), leaderboard_command(root, out_dir, options))
    paths = leaderboard_paths(out_dir if out_dir is not None else root)
    return df, {paths["csv"]: df.to_csv(index=False), paths["md"]: texts["md"], paths["tex"]: texts["tex"]}


# a temp file of a leaderboard writer (rsbench.io.atomic_open names it `.<name>.<random>.tmp`)
_LEADERBOARD_TEMP = re.compile(rf"^\.{LEADERBOARD}\.({'|'.join(LEADERBOARD_SUFFIXES)})\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_leaderboard_temps(folder: str | Path) -> int:
    """Delete temp files a killed leaderboard writer left in `folder`; call only while holding
    `locks.leaderboard_lock(folder)` (then no live writer owns one). Only our own name pattern."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            if _LEADERBOARD_TEMP.match(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                n += 1
    return n


def write_file_set(files: dict[Path, str]) -> None:
    """Write text files as one set: every temp file is written and fsynced before the first rename,
    so an error (disk full) leaves all the old files and never a mix of old and new."""
    import os
    from contextlib import ExitStack

    from ..io import atomic_open

    with ExitStack() as stack:
        handles = [(stack.enter_context(atomic_open(path, "w")), text) for path, text in files.items()]
        for f, text in handles:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_leaderboard_holding_lock(root: str | Path, out_dir: str | Path | None = None, skip_damaged: bool = False,
                                   options: TableOptions | None = None) -> pd.DataFrame:
    """Scan root and write leaderboard.csv, .md and .tex as one set into out_dir (default root).

    The caller holds the leaderboard lock of out_dir: temp files of a killed writer are removed first.
    """
    df, files = leaderboard_files(root, out_dir, skip_damaged, options=options)
    remove_stale_leaderboard_temps(Path(out_dir) if out_dir is not None else Path(root))
    write_file_set(files)
    return df


def write_leaderboard(root: str | Path, out_dir: str | Path | None = None, skip_damaged: bool = False,
                      options: TableOptions | None = None, wait_s: float | None = 0.0) -> pd.DataFrame:
    """THE leaderboard writer: under the leaderboard lock of out_dir (default root; a UserError when
    another process keeps it past wait_s, None: LEADERBOARD_WAIT_S), write leaderboard.csv, .md and .tex
    as one set."""
    wait_s = LEADERBOARD_WAIT_S if wait_s is None else wait_s  # read now: tests shorten it
    require_results_dir(root)  # before the lock would create the folder
    folder = Path(out_dir) if out_dir is not None else Path(root)
    with holding(leaderboard_lock(folder), f"{folder}: leaderboard being written by another process", timeout=wait_s):
        return write_leaderboard_holding_lock(root, out_dir, skip_damaged, options)


def update_leaderboard(out: str | Path, wait_s: float | None = None) -> tuple[bool, str]:
    """Rewrite <out>/leaderboard.* after a run; (ok, one line to print: to stderr when not ok).
    wait_s None: LEADERBOARD_WAIT_S, read at call time.

    Not ok only when a damaged cell (warned by name) kept it from being written: a table without that
    row would silently drop a result. Busy (another writer past wait_s) and no complete cell yet are ok.
    """
    out = Path(out)
    lock = leaderboard_lock(out)
    if not lock.acquire(timeout=LEADERBOARD_WAIT_S if wait_s is None else wait_s):
        return True, f"leaderboard not written: another process is writing it ({lock.describe_owner()})"
    try:
        write_leaderboard_holding_lock(out)
    except DamagedCell as e:
        return False, f"error: leaderboard not written: {e}"
    except UserError:
        return True, f"no complete result cells in {out} yet; no leaderboard written"
    finally:
        lock.release()
    return True, f"leaderboard: {out / (LEADERBOARD + '.md')} (and leaderboard.csv, leaderboard.tex)"
