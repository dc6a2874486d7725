"""Paper figures from result folders: recall@K curves and an mR bar chart, per (dataset, split).

* ``<dataset>_recall.{png,pdf}``: R@K for K = 1..100 (or up to the gallery size when smaller),
  image->text and text->image panels, one line per method (mean over seeds) with a shaded min-max
  band over seeds, and the closed-form chance curve in grey.
* ``<dataset>_mR.{png,pdf}``: mR per method (mean over seeds), error bars = std over seeds
  (ddof=1; none with one seed), the chance level as a dashed line when recorded (legend below the axes).

Colours come from the Okabe-Ito colour-blind-safe palette and are assigned by the sorted list of
all method names under the results folder, so a method has the same colour in every figure and
every dataset of one results folder; beyond eight methods the colours repeat with another line
style / hatch. Rendering uses the Agg backend and never touches global matplotlib state; every
file is written atomically through rsbench.io.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..datasets.catalogue import display_name
from .compare import MethodRuns, group_runs

# Okabe & Ito (2008); black replaced by a mid grey so error bars stay visible on bars.
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#7F7F7F",  # grey
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")
_HATCHES = ("", "//", "..", "xx")
DPI = 200
_MARK_AT = (1, 5, 10, 20, 50, 100)  # markers on the curves (the reported K first)
_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
    "svg.fonttype": "none",
}
def method_styles(methods: Sequence[str]) -> dict[str, dict[str, str]]:
    """{method: {"color", "marker", "linestyle", "hatch"}} assigned in sorted-name order (stable)."""
    out = {}
    for i, m in enumerate(sorted(set(methods))):
        k = i // len(OKABE_ITO)
        out[m] = {
            "color": OKABE_ITO[i % len(OKABE_ITO)],
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINESTYLES[k % len(_LINESTYLES)],
            "hatch": _HATCHES[k % len(_HATCHES)],
        }
    return out


def _curves(runs: MethodRuns, max_k: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k (K,), i2t (seeds, K), t2i (seeds, K) recall curves in percent."""
    i2t, t2i = [], []
    k = np.arange(1, max_k + 1)
    for s in runs.seeds:
        rc = runs.metrics[s].get("recall_curve")
        if rc and len(rc.get("k", [])) >= 1:
            kk = np.asarray(rc["k"])
            sel = kk <= max_k
            k = kk[sel]
            i2t.append(np.asarray(rc["i2t"], dtype=float)[sel])
            t2i.append(np.asarray(rc["t2i"], dtype=float)[sel])
        else:  # recompute from the per-query ranks
            ri, rt = runs.ranks[s]
            k = np.arange(1, max_k + 1)
            i2t.append(100.0 * (ri[None, :] <= k[:, None]).mean(axis=1))
            t2i.append(100.0 * (rt[None, :] <= k[:, None]).mean(axis=1))
    n = min(len(c) for c in i2t + t2i)
    return k[:n], np.stack([c[:n] for c in i2t]), np.stack([c[:n] for c in t2i])


def _subtitle(dataset: str, split: str) -> str:
    return display_name(dataset) + ("" if split == "test" else f" ({split})")


def _gallery_k(runs: dict[str, MethodRuns], key: int) -> int:
    """The largest K worth drawing: 100, or the gallery size of the panel's direction when smaller
    (i2t ranks captions, t2i ranks images); beyond it every curve is flat at 100 %."""
    c2i = next(r.cap2img for r in runs.values())
    gallery = int(c2i.size) if key == 1 else int(c2i.max()) + 1
    return max(1, min(100, gallery))


def _chance_line(ax, runs: dict[str, MethodRuns], key: int, kmax: int) -> None:
    """The expected recall of a random scorer (closed form), grey, below the methods' curves."""
    from ..evaluation.metrics import chance_curve

    k = np.arange(1, kmax + 1)
    curve = chance_curve(next(r.cap2img for r in runs.values()), k)[key - 1]
    ax.plot(k, curve, color="#9a9a9a", ls=":", lw=1.2, label="chance", zorder=1)


def _recall_axes(ax, kmax: int, logx: bool) -> None:
    """K axis to the gallery size; y to slightly above 100 so a curve at 100 % is not on the frame."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    if logx:
        ax.set_xscale("log")
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t <= kmax] + ([kmax] if kmax not in _MARK_AT else [])
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(ticks))))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(0.9, kmax * 1.12)
    else:
        ax.set_xlim(0, kmax * 1.03)
    ax.set_ylim(0, 104)
    ax.set_yticks([0, 20, 40, 60, 80, 100])


def recall_figure(runs: dict[str, MethodRuns], styles: dict, dataset: str, split: str, logx: bool = True,
                  names: dict[str, str] | None = None):
    """Two-panel R@K figure (a matplotlib Figure, Agg canvas), K up to min(100, gallery size);
    `names`: printed name per method key (default: the key)."""
    names = names or {}
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context(_RC):
        fig = Figure(figsize=(7.2, 3.3), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        order = sorted(runs, key=lambda m: -float(np.mean([runs[m].metrics[s]["mR"] for s in runs[m].seeds])))
        for ax, key, title in zip(axes, (1, 2), ("Image → text", "Text → image")):
            kmax = _gallery_k(runs, key)
            for m in order:
                k, i2t, t2i = _curves(runs[m])
                c = (i2t, t2i)[key - 1][:, k <= kmax]
                k = k[k <= kmax]
                st = styles[m]
                mean = c.mean(axis=0)
                marks = [i for i, kk in enumerate(k) if kk in _MARK_AT]
                ax.plot(
                    k, mean, color=st["color"], linestyle=st["linestyle"], lw=1.5, label=names.get(m, m),
                    marker=st["marker"], markevery=marks, ms=4.5, mec="white", mew=0.6,
                )  # fmt: skip
                if c.shape[0] > 1:
                    ax.fill_between(k, c.min(axis=0), c.max(axis=0), color=st["color"], alpha=0.18, lw=0)
            _chance_line(ax, runs, key, kmax)
            ax.set_title(title)
            ax.set_xlabel("K")
            _recall_axes(ax, kmax, logx)
        axes[0].set_ylabel("Recall@K (%)")
        n_seeds = sorted({len(r.seeds) for r in runs.values()})
        what = "mean over seeds (band: min–max over seeds)" if max(n_seeds) > 1 else "one seed"
        fig.suptitle(f"{_subtitle(dataset, split)}: recall@K, {what}", fontsize=10)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), frameon=False)
    return fig


def mr_figure(runs: dict[str, MethodRuns], styles: dict, dataset: str, split: str,
              names: dict[str, str] | None = None):
    """Bar chart of mR per method (sorted by mR), std over seeds as error bars; `names` as recall_figure's."""
    names = names or {}
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    rows = []
    for m, r in runs.items():
        v = np.array([float(r.metrics[s]["mR"]) for s in r.seeds])
        rows.append((m, v.mean(), v.std(ddof=1) if v.size > 1 else math.nan, v.size))
    rows.sort(key=lambda t: (-t[1], t[0]))
    chance = [float(r.metrics[s]["chance_mR"]) for r in runs.values() for s in r.seeds
              if r.metrics[s].get("chance_mR") is not None]  # fmt: skip
    with rc_context(_RC):
        fig = Figure(figsize=(max(3.4, 0.75 * len(rows) + 1.6), 3.2), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(rows))
        means = np.array([t[1] for t in rows])
        errs = np.array([0.0 if math.isnan(t[2]) else t[2] for t in rows])
        bars = ax.bar(
            x, means, width=0.68, color=[styles[t[0]]["color"] for t in rows], edgecolor="#333333",
            linewidth=0.6, zorder=2,
        )  # fmt: skip
        has_err = np.array([not math.isnan(t[2]) for t in rows], dtype=bool)
        if has_err.any():  # no error bar where a method has a single seed
            ax.errorbar(
                x[has_err], means[has_err], yerr=errs[has_err], fmt="none", capsize=3,
                elinewidth=1.0, ecolor="#222222", zorder=3,
            )  # fmt: skip
        for b, t in zip(bars, rows):
            if styles[t[0]]["hatch"]:
                b.set_hatch(styles[t[0]]["hatch"])
        top = float((means + errs).max()) if len(rows) else 1.0
        for xi, mean, err in zip(x, means, errs):
            ax.text(xi, mean + err + 0.015 * top, f"{mean:.1f}", ha="center", va="bottom", fontsize=8)
        if chance:
            level = float(np.mean(chance))
            ax.axhline(level, color="#444444", ls="--", lw=0.9, label=f"chance ({level:.2f})", zorder=3)
            fig.legend(loc="outside lower center", frameon=False)  # below the axes: never on a bar label
        ax.set_xticks(x, [names.get(t[0], t[0]) for t in rows], rotation=25 if len(rows) > 4 else 0,
                      ha="right" if len(rows) > 4 else "center")  # fmt: skip
        ax.set_ylabel("mR (%)")
        ax.set_ylim(0, top * 1.12 + 1e-9)
        ax.grid(axis="x", visible=False)
        ax.set_axisbelow(True)
        seeds = sorted({t[3] for t in rows})
        err_txt = "error bars: std over seeds" if max(seeds) > 1 else "one seed"
        ax.set_title(f"{_subtitle(dataset, split)}: mR ({err_txt})")
    return fig


def save_figure(fig, stem: Path) -> list[Path]:
    """Write `stem`.png (dpi 200) and `stem`.pdf atomically, the PDF with TrueType fonts (editable text).

    pdf.fonttype is read when the file is written, not when the figure is built, so the rc must be
    active around savefig; without it matplotlib embeds Type 3 fonts.
    """
    from matplotlib import rc_context

    from ..io import write_with

    paths = []
    with rc_context({"pdf.fonttype": 42}):
        for fmt in ("png", "pdf"):
            path = stem.with_name(f"{stem.name}.{fmt}")
            meta = {"Software": None} if fmt == "png" else {"CreationDate": None, "Producer": None}
            write_with(path, lambda f, fmt=fmt, meta=meta: fig.savefig(f, format=fmt, dpi=DPI, metadata=meta))
            paths.append(path)
    return paths


def plot_results(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    dataset: str | None = None,
    logx: bool = True,
    split: str = "test",
    skip_damaged: bool = False,
    cells: list | None = None,
    labels: dict[str, str] | None = None,
) -> list[Path]:
    """Write the recall and mR figures of each dataset (cells of `split`); returns the paths.

    Files go to out_dir (default <results_dir>/figures): <dataset>_recall.{png,pdf} and
    <dataset>_mR.{png,pdf} (the split is added to the name when it is not "test").
    `cells`: the folder's complete cells when the caller has scanned it already (default: scanned here).
    `labels`: {method key: printed name} overriding the names the cells record (results.names).
    """
    from .names import method_names
    from .scan import complete_cells

    cells = complete_cells(results_dir, skip_damaged) if cells is None else cells
    groups = group_runs(cells, dataset, split, where=str(results_dir))
    styles = method_styles([c.method for c in cells])  # every method of the folder: stable colours
    names = method_names(cells, labels)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "figures"
    written: list[Path] = []
    for (ds, sp), runs in sorted(groups.items()):
        stem = ds if sp == "test" else f"{ds}_{sp}"
        written += save_figure(recall_figure(runs, styles, ds, sp, logx, names), out / f"{stem}_recall")
        written += save_figure(mr_figure(runs, styles, ds, sp, names), out / f"{stem}_mR")
    return written
