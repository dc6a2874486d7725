"""Result cell folders (<out>/<dataset>/<method>/seed<k>/, see docs/DESIGN.md) and the leaderboard.

A cell is complete when its metrics.json exists and parses; it is written last, so a crashed or
running job never counts. Cells are found by walking folders, so results from several machines
merge by copying their folders into one root.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from ..evaluation.metrics import (
    LEADERBOARD_METRICS,
    METRIC_HEADERS,
    METRIC_KEYS,
    chance_metrics,
    metrics_from_ranks,
)
from ..io import read_json, write_json, write_with

METRICS_FILE = "metrics.json"
RANKS_FILE = "ranks.npz"
CONFIG_FILE = "config.json"
_SEED_DIR = re.compile(r"^seed(\d+)$")

# leaderboard columns: each metric followed by its _std column
LEADERBOARD_COLUMNS = ["dataset", "method", "n_seeds"] + [
    c for m in LEADERBOARD_METRICS for c in (m, f"{m}_std")
]


def cell_dir(out: str | Path, dataset: str, method: str, seed: int) -> Path:
    """The folder of one (dataset, method, seed) result."""
    return Path(out) / dataset / method / f"seed{int(seed)}"


def mark_incomplete(cell: str | Path) -> None:
    """Remove metrics.json before (re)writing a cell, so a half-rewritten cell never reads as complete."""
    (Path(cell) / METRICS_FILE).unlink(missing_ok=True)


def write_eval_outputs(
    cell: str | Path,
    i2t_rank: Any,
    t2i_rank: Any,
    cap2img: Any,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ranks.npz, then metrics.json last; return the metrics dict as written.

    extra adds split, n_images, n_captions, selected_epoch, val (defaults: "test", the rank
    lengths, None, None) and any further keys; it may not override a computed metric.
    """
    cell = Path(cell)
    i2t = np.asarray(i2t_rank, dtype=np.int64)
    t2i = np.asarray(t2i_rank, dtype=np.int64)
    c2i = np.asarray(cap2img, dtype=np.int64)
    if c2i.shape != t2i.shape:
        raise ValueError(f"cap2img has shape {c2i.shape}, t2i_rank {t2i.shape}")
    extra = dict(extra or {})
    for key, n in (("n_images", i2t.size), ("n_captions", t2i.size)):
        if key in extra and int(extra[key]) != n:
            raise ValueError(f"extra[{key!r}] = {extra[key]} but the ranks have {n}")
    computed = metrics_from_ranks(i2t, t2i)
    clash = (set(computed) | {"chance_mR"}) & set(extra)
    if clash:
        raise ValueError(f"extra may not override metrics: {sorted(clash)}")

    mark_incomplete(cell)
    cell.mkdir(parents=True, exist_ok=True)
    write_with(cell / RANKS_FILE, lambda f: np.savez(f, i2t_rank=i2t, t2i_rank=t2i, cap2img=c2i))

    metrics: dict[str, Any] = {
        "split": extra.pop("split", "test"),
        "n_images": int(extra.pop("n_images", i2t.size)),
        "n_captions": int(extra.pop("n_captions", t2i.size)),
    }
    metrics.update({k: computed[k] for k in METRIC_KEYS})
    metrics["chance_mR"] = chance_metrics(c2i)["chance_mR"]
    metrics["recall_curve"] = computed["recall_curve"]
    metrics["selected_epoch"] = extra.pop("selected_epoch", None)
    metrics["val"] = extra.pop("val", None)
    metrics.update(extra)
    write_json(cell / METRICS_FILE, metrics)
    return metrics


class DamagedCell(UserError):
    """A cell whose metrics.json exists (so it claims to be finished) but whose result files do not read back."""


def _read_metrics(cell: Path) -> dict[str, Any]:
    """metrics.json as a dict whose leaderboard metrics are all finite numbers; DamagedCell otherwise."""
    f = cell / METRICS_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        what = "empty file" if f.is_file() and f.stat().st_size == 0 else f"not valid JSON ({type(e).__name__})"
        raise DamagedCell(f"{f}: {what}") from None
    if not isinstance(data, dict):
        raise DamagedCell(f"{f}: not a JSON object")
    for m in LEADERBOARD_METRICS:
        v = data.get(m)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DamagedCell(f"{f}: metric '{m}' is {'missing' if m not in data else repr(v)}, not a number")
    return data


def _read_ranks(cell: Path, metrics: dict[str, Any]) -> dict[str, np.ndarray]:
    """ranks.npz as int64 arrays, checked against each other and metrics.json; DamagedCell otherwise."""
    import zipfile

    f = cell / RANKS_FILE
    if not f.is_file():
        raise DamagedCell(f"{f}: missing (metrics.json exists without its ranks)")
    try:
        with np.load(f, allow_pickle=False) as z:
            ranks = {k: np.asarray(z[k]).astype(np.int64) for k in ("i2t_rank", "t2i_rank", "cap2img")}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError) as e:
        what = "empty file" if f.stat().st_size == 0 else f"not a valid ranks file ({type(e).__name__})"
        raise DamagedCell(f"{f}: {what}") from None
    i2t, t2i, c2i = ranks["i2t_rank"], ranks["t2i_rank"], ranks["cap2img"]
    if i2t.ndim != 1 or t2i.ndim != 1 or c2i.shape != t2i.shape or not i2t.size or not t2i.size:
        raise DamagedCell(f"{f}: inconsistent array shapes {i2t.shape}, {t2i.shape}, {c2i.shape}")
    for key, arr in (("n_images", i2t), ("n_captions", t2i)):
        if key in metrics and metrics[key] != arr.size:
            raise DamagedCell(f"{f}: {arr.size} ranks but metrics.json says {key} = {metrics[key]!r}")
    return ranks


def read_cell(cell: str | Path) -> Cell:
    """THE reader of a result cell: metrics.json, ranks.npz and config.json must all read back.

    UserError for a folder that is not a cell or has no metrics.json yet (incomplete: being run,
    or interrupted); DamagedCell when metrics.json exists but a result file does not read back.
    """
    cell = Path(cell)
    m = _SEED_DIR.match(cell.name)
    if not m:
        raise UserError(f"{cell}: not a result cell folder (expected <dataset>/<method>/seed<k>)")
    if not (cell / METRICS_FILE).exists():
        raise UserError(f"{cell}: incomplete result cell (no {METRICS_FILE})")
    metrics = _read_metrics(cell)
    ranks = _read_ranks(cell, metrics)
    config: dict[str, Any] = {}
    if (cell / CONFIG_FILE).exists():
        try:
            cfg = read_json(cell / CONFIG_FILE)
        except UserError as e:
            raise DamagedCell(str(e)) from None
        config = cfg if isinstance(cfg, dict) else {}
    return Cell(path=cell, dataset=cell.parent.parent.name, method=cell.parent.name, seed=int(m.group(1)),
                metrics=metrics, config=config, _ranks=ranks)


def cell_damage(cell: str | Path) -> str | None:
    """Why a cell that has a metrics.json is damaged ('<file>: <problem>'); None if it reads back or has none."""
    cell = Path(cell)
    if not (cell / METRICS_FILE).exists():
        return None
    try:
        read_cell(cell)
    except DamagedCell as e:
        return str(e)
    return None


def is_complete(cell: str | Path) -> bool:
    """True when every result file of the cell reads back (see read_cell); a damaged cell is not complete."""
    try:
        read_cell(cell)
    except UserError:
        return False
    return True


@dataclass
class Cell:
    """One loaded result cell. `ranks` (ranks.npz arrays) is read on first access."""

    path: Path
    dataset: str
    method: str
    seed: int
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    _ranks: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def ranks(self) -> dict[str, np.ndarray]:
        """{"i2t_rank", "t2i_rank", "cap2img"} as int64 arrays."""
        if self._ranks is None:
            f = self.path / RANKS_FILE
            try:
                with np.load(f, allow_pickle=False) as z:
                    self._ranks = {k: z[k].astype(np.int64) for k in ("i2t_rank", "t2i_rank", "cap2img")}
            except FileNotFoundError:
                raise UserError(f"{f}: file not found") from None
            except (KeyError, ValueError, OSError) as e:
                raise UserError(f"{f}: not a valid ranks file ({e})") from None
        return self._ranks


def load_cell(cell: str | Path) -> Cell:
    """Load a complete cell (same as read_cell); dataset/method/seed come from its folder names."""
    return read_cell(cell)


def require_results_dir(root: str | Path) -> Path:
    """`root` as a Path; a UserError if it is not an existing folder (checked before anything is written)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: results folder not found")
    return root


def _warn(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def scan_results(root: str | Path, skip_damaged: bool = False, warn: Any = _warn) -> list[Cell]:
    """All complete cells under root/<dataset>/<method>/seed<k>/, sorted; cells still running skipped.

    A damaged cell (metrics.json present, a result file unreadable) is never dropped silently: each
    gets a warning line, then a UserError unless skip_damaged (the caller's --skip-damaged).
    """
    root = require_results_dir(root)
    cells, damaged = [], []
    for f in root.glob(f"*/*/seed*/{METRICS_FILE}"):
        cell = f.parent
        hidden = cell.parent.name.startswith(".") or cell.parent.parent.name.startswith(".")
        if hidden or not _SEED_DIR.match(cell.name):
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
        rows.append(row)
    df = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    if len(df):
        df = df.sort_values(["dataset", "mR", "method"], ascending=[True, False, True], kind="stable")
    df["n_seeds"] = df["n_seeds"].astype(np.int64)
    return df.reset_index(drop=True)


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


MARKDOWN_HEADERS = {"dataset": "Dataset", "method": "Method", "n_seeds": "Seeds", **METRIC_HEADERS}


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """'12.34 ± 0.56'; just the mean when std is NaN (one seed); '-' when the mean is missing."""
    if mean is None or math.isnan(mean):
        return "-"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def leaderboard_markdown(df: pd.DataFrame) -> str:
    """The leaderboard as a Markdown table, mean ± std with 2 decimals (recalls in %)."""
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


def complete_cells(root: str | Path, skip_damaged: bool = False) -> list[Cell]:
    """`scan_results`, and a UserError when the folder holds no complete cell at all."""
    cells = scan_results(root, skip_damaged)
    if not cells:
        raise UserError(f"{root}: no complete result cells (<dataset>/<method>/seed<k>/{METRICS_FILE})")
    return cells


# a temp file of a leaderboard writer (rsbench.io.atomic_open names it `.<name>.<random>.tmp`)
_LEADERBOARD_TEMP = re.compile(r"^\.leaderboard\.(csv|md|tex)\.[A-Za-z0-9_]+\.tmp$")


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


def leaderboard_files(root: str | Path, out_dir: str | Path | None = None, skip_damaged: bool = False,
                      cells: list[Cell] | None = None) -> tuple[pd.DataFrame, dict[Path, str]]:
    """The leaderboard table and {path: text} of leaderboard.csv and leaderboard.md (nothing written)."""
    root = Path(root)
    df = leaderboard(scan_results(root, skip_damaged) if cells is None else cells)
    if df.empty:
        raise UserError(
            f"{root}: no complete result cells of the test split "
            f"(expected <dataset>/<method>/seed<k>/{METRICS_FILE})"
        )
    out = Path(out_dir) if out_dir is not None else root
    return df, {out / "leaderboard.csv": df.to_csv(index=False), out / "leaderboard.md": leaderboard_markdown(df)}


def write_leaderboard(root: str | Path, out_dir: str | Path | None = None, skip_damaged: bool = False) -> pd.DataFrame:
    """Scan root, write leaderboard.csv and leaderboard.md (as one set) into out_dir (default root).

    The caller holds the leaderboard lock of out_dir: temp files of a killed writer are removed first.
    """
    df, files = leaderboard_files(root, out_dir, skip_damaged)
    remove_stale_leaderboard_temps(Path(out_dir) if out_dir is not None else Path(root))
    write_file_set(files)
    return df
