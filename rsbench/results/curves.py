"""Training curves from each cell's train_log.csv: loss and val mR per epoch, one figure per dataset.

``<dataset>_training.{png,pdf}``: two panels (training loss, validation mR) against the epoch;
one line per method (mean over its seeds), a shaded min-max band over seeds, and a ring on the
epoch each seed's checkpoint was selected at (metrics.json "selected_epoch"). Colours and line
styles are those of the other figures (rsbench.results.plots.method_styles). Cells without a
log (zero-shot, `bench score`) are left out; a dataset none of whose cells has a log gets no figure.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .layout import TRAIN_LOG


@dataclass
class MethodLogs:
    """The per-epoch logs of one method's seeds on one dataset."""

    method: str
    epochs: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> epochs (1-based)
    loss: dict[int, np.ndarray] = field(default_factory=dict)
    val_mr: dict[int, np.ndarray] = field(default_factory=dict)  # NaN where not validated
    selected: dict[int, int | None] = field(default_factory=dict)


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_train_log(path: str | Path) -> dict[str, np.ndarray]:
    """{"epoch", "loss", "val_mR"} float arrays of one train_log.csv; UserError naming the file otherwise."""
    f = Path(path)
    try:
        with open(f, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{f}: cannot read the training log ({type(e).__name__})") from None
    if rows and not {"epoch", "loss"} <= set(rows[0]):
        raise UserError(f"{f}: not a training log (needs columns epoch, loss)")
    out = {k: np.array([_num(r.get(k)) for r in rows], dtype=np.float64) for k in ("epoch", "loss", "val_mR")}
    if np.isnan(out["epoch"]).any():
        raise UserError(f"{f}: an epoch value is not a number")
    return out


def collect_logs(cells: list) -> dict[str, dict[str, MethodLogs]]:
    """{dataset: {method: MethodLogs}} from complete cells (rsbench.results.cell.Cell) that have a log."""
    out: dict[str, dict[str, MethodLogs]] = {}
    for c in cells:
        f = Path(c.path) / TRAIN_LOG
        if not f.is_file():
            continue
        log = read_train_log(f)
        if not log["epoch"].size:
            continue
        ml = out.setdefault(c.dataset, {}).setdefault(c.method, MethodLogs(c.method))
        ml.epochs[c.seed], ml.loss[c.seed], ml.val_mr[c.seed] = log["epoch"], log["loss"], log["val_mR"]
        sel = c.metrics.get("selected_epoch")
        ml.selected[c.seed] = int(sel) if isinstance(sel, (int, float)) and not isinstance(sel, bool) else None
    return out


def _band(per_seed: dict[int, np.ndarray], epochs: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Common epoch axis and a (seeds, epochs) array, NaN where a seed stopped early."""
    axis = np.unique(np.concatenate(list(epochs.values())))
    grid = np.full((len(per_seed), axis.size), np.nan)
    for row, s in enumerate(sorted(per_seed)):
        pos = np.searchsorted(axis, epochs[s])
        grid[row, pos] = per_seed[s]
    return axis, grid


def _panel(ax, logs: dict[str, MethodLogs], styles: dict, key: str, names: dict[str, str]) -> None:
    """One panel: mean over seeds per method, min-max band, rings at the selected epochs."""
    import warnings

    for m in sorted(logs):
        ml, st = logs[m], styles[m]
        axis, grid = _band(getattr(ml, key), ml.epochs)
        with warnings.catch_warnings():  # all-NaN columns (no validation that epoch) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)
        ok = ~np.isnan(mean)
        ax.plot(axis[ok], mean[ok], color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                ms=3.5, lw=1.4, label=f"{names.get(m, m)} ({len(ml.epochs)} seed{'s' if len(ml.epochs) > 1 else ''})")
        if grid.shape[0] > 1:
            ax.fill_between(axis[ok], lo[ok], hi[ok], color=st["color"], alpha=0.18, lw=0)
        if key == "val_mr":
            for s, e in ml.selected.items():
                hit = np.flatnonzero(ml.epochs[s] == e) if e is not None else []
                if len(hit):
                    ax.plot([e], [ml.val_mr[s][hit[0]]], "o", mfc="none", mec=st["color"], ms=8, mew=1.2)


def curves_figure(logs: dict[str, MethodLogs], styles: dict, dataset: str, names: dict[str, str] | None = None):
    """Two-panel figure (loss, val mR per epoch) of one dataset; a matplotlib Figure (Agg canvas)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from ..datasets.catalogue import display_name
    from .plots import _RC

    with rc_context(_RC):
        fig = Figure(figsize=(7.2, 3.3), layout="constrained")
        axes = fig.subplots(1, 2)
        _panel(axes[0], logs, styles, "loss", names or {})
        _panel(axes[1], logs, styles, "val_mr", names or {})
        axes[0].set_title("Training loss (mean over the epoch)")
        axes[0].set_ylabel("loss")
        axes[1].set_title("Validation mR (ring: selected epoch)")
        axes[1].set_ylabel("val mR (%)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        several = any(len(ml.epochs) > 1 for ml in logs.values())
        what = "mean over seeds (band: min–max over seeds)" if several else "one seed"
        fig.suptitle(f"{display_name(dataset)}: training curves, {what}", fontsize=10)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False)
    return fig


def plot_training_curves(results_dir: str | Path, out_dir: str | Path | None = None, dataset: str | None = None,
                         skip_damaged: bool = False, cells: list | None = None,
                         labels: dict[str, str] | None = None) -> list[Path]:
    """Write <dataset>_training.{png,pdf} for each dataset with logged cells; returns the paths.

    Files go to out_dir (default <results_dir>/figures), as `bench plot` writes its other figures.
    """
    from .names import method_names
    from .plots import method_styles, save_figure
    from .scan import complete_cells

    cells = complete_cells(results_dir, skip_damaged) if cells is None else cells
    styles = method_styles([c.method for c in cells])
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "figures"
    written: list[Path] = []
    for ds, logs in sorted(collect_logs(cells).items()):
        if dataset is None or ds == dataset:
            written += save_figure(curves_figure(logs, styles, ds, method_names(cells, labels)), out / f"{ds}_training")
    return written
