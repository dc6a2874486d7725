"""`bench gallery`: the qualitative retrieval figure of RSITR papers, from the cells' topk.npz.

Per query (a row): the caption (text -> image) or the query image (image -> text), then the top-5
results of each method side by side, framed green when they are a ground-truth match and red when
not, with the rank under each tile and each method's rank of the first true match beside the query.
Queries are drawn from a seed (same seed, same figure), given by index, or chosen where two
methods differ most (largest gap in the log-rank of the true match). Images are read through the
dataset loader, so any layout works; the figure never needs a model. PNG + PDF (TrueType fonts).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, unknown
from ..evaluation.topk import TOPK_FILE, TopK, read_topk

SHOW = 5  # tiles per method and query
HIT, MISS = "#1a9850", "#d73027"  # green / red frames
DIRECTIONS = ("t2i", "i2t")


@dataclass
class MethodTop:
    """What the gallery needs from one cell: its top-K lists and true-match ranks."""

    method: str
    seed: int
    top: TopK
    i2t_rank: np.ndarray
    t2i_rank: np.ndarray
    cap2img: np.ndarray
    label: str = ""  # the method's display name (config.json), shown instead of its registry key

    @property
    def shown(self) -> str:
        return self.label or self.method


def tile_hits(idx_row: Sequence[int], query: int, direction: str, cap2img: np.ndarray) -> np.ndarray:
    """Which retrieved items are ground-truth matches of `query` (bool per tile).

    t2i: query is a caption, items are images: a hit is the caption's own image.
    i2t: query is an image, items are captions: a hit is any caption of that image.
    """
    idx = np.asarray(idx_row, dtype=np.int64)
    if direction == "t2i":
        return idx == int(cap2img[query])
    if direction == "i2t":
        return np.asarray(cap2img)[idx] == query
    raise unknown("direction", direction, DIRECTIONS)


def load_method_top(cell: Any) -> MethodTop:
    """A cell's topk.npz (checked against its gallery size) and ranks; UserError when it has none."""
    f = Path(cell.path) / TOPK_FILE
    if not f.is_file():
        raise UserError(f"{f}: file not found (cells written before top-K lists were kept have none; "
                        "re-run the cell to get one)")
    r = cell.ranks
    top = read_topk(f, n_images=len(r["i2t_rank"]), n_captions=len(r["t2i_rank"]))
    from .names import method_names

    return MethodTop(cell.method, cell.seed, top, r["i2t_rank"], r["t2i_rank"], r["cap2img"],
                     method_names([cell])[cell.method])


def choose_queries(n_total: int, n: int, seed: int = 0, query_ids: Sequence[int] | None = None,
                   ranks: tuple[np.ndarray, np.ndarray] | None = None) -> list[int]:
    """The queries to show: query_ids as given; else, with `ranks` (true-match ranks of two
    methods), the n with the largest |log rank_a - log rank_b| (seeded order breaks ties);
    else n drawn without replacement from a seeded generator, sorted."""
    if query_ids:
        bad = [q for q in query_ids if not 0 <= q < n_total]
        if bad:
            raise UserError(f"--query-ids: {bad[0]} is out of range (this direction has {n_total} queries)")
        return list(dict.fromkeys(int(q) for q in query_ids))
    if n < 1:
        raise UserError(f"--queries must be >= 1, got {n}")
    n = min(n, n_total)
    perm = np.random.default_rng(seed).permutation(n_total)
    if ranks is None:
        return sorted(int(q) for q in perm[:n])
    gap = np.abs(np.log(ranks[0].astype(np.float64)) - np.log(ranks[1].astype(np.float64)))
    order = perm[np.argsort(-gap[perm], kind="stable")]
    return [int(q) for q in order[:n]]


def _frame(ax, color: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(True)
        s.set_color(color)
        s.set_linewidth(3.0)


def _caption_box(ax, text: str, width: int, size: float) -> None:
    """Wrapped (and, when long, shortened) caption text filling an axes."""
    lines = textwrap.wrap(text, width=width) or [""]
    if len(lines) > 6:
        lines = lines[:5] + [lines[5][: width - 1] + "…"]
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=size, wrap=False,
            transform=ax.transAxes)


def _query_cell(ax, q: int, direction: str, split: Any, thumbs: Any, tops: list[MethodTop]) -> None:
    """The query column: the caption or the image, and each method's rank of the true match."""
    ax.set_xticks([])
    ax.set_yticks([])
    ranks = ", ".join(f"{t.shown} {int((t.t2i_rank if direction == 't2i' else t.i2t_rank)[q])}" for t in tops)
    if direction == "t2i":
        for s in ax.spines.values():
            s.set_visible(False)
        _caption_box(ax, f"“{split.captions[q]}”", 30, 7)
        ax.set_xlabel(f"caption #{q}\ntrue match at rank: {ranks}", fontsize=6)
    else:
        ax.imshow(thumbs(q))
        _frame(ax, "#444444")
        ax.set_xlabel(f"image #{q}\nfirst true caption at: {ranks}", fontsize=6)


def gallery_figure(queries: Sequence[int], direction: str, split: Any, tops: list[MethodTop],
                   show: int = SHOW, thumb: int = 160):
    """The figure: one row per query, the query then `show` tiles per method (matplotlib Figure)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from ..datasets.images import load_image, resize_square
    from .plots import _RC

    cache: dict[int, np.ndarray] = {}

    def thumbs(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = np.asarray(resize_square(load_image(split.image_paths[i]), thumb))
        return cache[i]

    n_m = len(tops)
    tile_w = 1.0 if direction == "t2i" else 1.25
    widths = [1.9] + ([0.18] + [tile_w] * show) * n_m
    with rc_context({**_RC, "axes.grid": False}):
        fig = Figure(figsize=(sum(widths), 1.45 * len(queries) + 0.45), layout="constrained")
        gs = fig.add_gridspec(len(queries), len(widths), width_ratios=widths)
        for row, q in enumerate(queries):
            _query_cell(fig.add_subplot(gs[row, 0]), q, direction, split, thumbs, tops)
            for j, t in enumerate(tops):
                idx = (t.top.t2i_idx if direction == "t2i" else t.top.i2t_idx)[q, :show]
                hits = tile_hits(idx, q, direction, t.cap2img)
                for r, (item, hit) in enumerate(zip(idx, hits)):
                    ax = fig.add_subplot(gs[row, 1 + j * (show + 1) + 1 + r])
                    if direction == "t2i":
                        ax.imshow(thumbs(int(item)))
                    else:
                        _caption_box(ax, split.captions[int(item)], 20, 5.5)
                    _frame(ax, HIT if hit else MISS)
                    ax.set_xlabel(f"{r + 1}", fontsize=7, color=HIT if hit else MISS, labelpad=1)
                    if row == 0 and r == show // 2:
                        ax.set_title(f"{t.shown} (seed {t.seed})", fontsize=9, pad=4)
        what = "text → image" if direction == "t2i" else "image → text"
        fig.suptitle(f"Top-{show} retrieved ({what}); frame: green = ground-truth match, red = not; "
                     "number = rank", fontsize=9)
    return fig


def pick_cells(cells: list, dataset: str, methods: Sequence[str] | None, seed: int | None) -> list:
    """One test cell per method of `dataset` (the given seed, default each method's lowest), in the
    order of `methods` (default: every method, sorted)."""
    mine = [c for c in cells if c.dataset == dataset and str(c.metrics.get("split", "test")) == "test"]
    if not mine:
        raise unknown("dataset", dataset, sorted({c.dataset for c in cells}))
    have = sorted({c.method for c in mine})
    chosen = list(methods) if methods else have
    out = []
    for m in chosen:
        if m not in have:
            raise unknown("method", m, have)
        seeds = [c for c in mine if c.method == m and (seed is None or c.seed == seed)]
        if not seeds:
            raise UserError(f"--seed: {m} on {dataset} has no seed{seed} cell")
        out.append(min(seeds, key=lambda c: c.seed))
    return out


def load_split(dataset: str, data_root: str | Path | None, tops: list[MethodTop]) -> Any:
    """The dataset's test split through the loader, checked to be the one the cells were scored on."""
    from ..datasets import load_dataset

    split = load_dataset(dataset, data_root=data_root).test
    c2i = np.asarray(split.cap2img, dtype=np.int64)
    if not np.array_equal(c2i, tops[0].cap2img):
        raise UserError(f"--data-root: the {dataset} test split found there ({split.n_images} images, "
                        f"{split.n_captions} captions) is not the one the cells were scored on "
                        f"({len(tops[0].i2t_rank)} images, {len(tops[0].t2i_rank)} captions)")
    return split


def build_gallery(cells: list, dataset: str, methods: Sequence[str] | None = None, n: int = 4,
                  query_ids: Sequence[int] | None = None, direction: str = "t2i", seed: int = 0,
                  differ: bool = False, data_root: str | Path | None = None, cell_seed: int | None = None,
                  split: Any = None) -> tuple[Any, list[int]]:
    """(figure, the queries shown) from scanned cells; `split` (a loaded test split) skips the loader."""
    if direction not in DIRECTIONS:
        raise unknown("direction", direction, DIRECTIONS)
    tops = [load_method_top(c) for c in pick_cells(cells, dataset, methods, cell_seed)]
    if any(not np.array_equal(t.cap2img, tops[0].cap2img) for t in tops):
        raise UserError(f"{dataset}: the chosen cells were scored on different test sets")
    if differ and len(tops) < 2:
        raise UserError("--differ needs at least two methods (it compares the first two of --methods)")
    key = "t2i_rank" if direction == "t2i" else "i2t_rank"
    ranks = (getattr(tops[0], key), getattr(tops[1], key)) if differ else None
    queries = choose_queries(len(getattr(tops[0], key)), n, seed, query_ids, ranks)
    split = load_split(dataset, data_root, tops) if split is None else split
    return gallery_figure(queries, direction, split, tops), queries


def gallery(results_dir: str | Path, dataset: str, out_dir: str | Path | None = None, skip_damaged: bool = False,
            **kw: Any) -> tuple[list[Path], list[int]]:
    """`bench gallery`: write <out>/<dataset>_gallery_<direction>.{png,pdf} (default out:
    <results_dir>/figures); returns (paths, the queries shown). kw: those of build_gallery."""
    from .plots import save_figure
    from .scan import complete_cells

    fig, queries = build_gallery(complete_cells(results_dir, skip_damaged), dataset, **kw)
    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "figures"
    return save_figure(fig, out / f"{dataset}_gallery_{kw.get('direction', 't2i')}"), queries
