"""Significance of method pairs from result folders: group cells by (dataset, split) and method,
run rsbench.evaluation.statistics' paired tests on every pair, Holm-correct, and format or write the table.

The statistics themselves (what is tested, the resampling unit, seeds) are described in
rsbench.evaluation.statistics; this module only reads cells and assembles the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError, unknown
from ..evaluation.metrics import TESTED_METRICS
from ..evaluation.statistics import (
    COLUMNS,
    QueryValues,
    check_alpha,
    draw_resamples,
    holm,
    metric_value,
    metric_weights,
    paired_test,
    query_values,
    seed_ttest,
    stream_seed,
)


@dataclass
class MethodRuns:
    """All test cells of one method on one (dataset, split)."""

    dataset: str
    split: str
    method: str
    ranks: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # seed -> (i2t, t2i)
    cap2img: np.ndarray | None = None
    metrics: dict[int, dict] = field(default_factory=dict)  # seed -> metrics.json
    _values: dict[tuple[int, ...], QueryValues] = field(default_factory=dict, repr=False, compare=False)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.ranks)

    @property
    def n_images(self) -> int:
        return len(self.ranks[self.seeds[0]][0])

    def values(self, seeds: Sequence[int]) -> QueryValues:
        """Cluster values averaged over `seeds` (cached)."""
        key = tuple(sorted(seeds))
        if key not in self._values:
            i2t = np.stack([self.ranks[s][0] for s in key])
            t2i = np.stack([self.ranks[s][1] for s in key])
            assert self.cap2img is not None
            self._values[key] = query_values(i2t, t2i, self.cap2img)
        return self._values[key]


def load_runs(
    results_dir: str | Path, dataset: str | None = None, split: str | None = "test", skip_damaged: bool = False
) -> dict[tuple[str, str], dict[str, MethodRuns]]:
    """Scan `results_dir` and group its complete cells (see `group_runs`)."""
    from .scan import complete_cells

    return group_runs(complete_cells(results_dir, skip_damaged), dataset, split, where=str(results_dir))


def group_runs(
    cells: Sequence, dataset: str | None = None, split: str | None = "test", where: str = "results"
) -> dict[tuple[str, str], dict[str, MethodRuns]]:
    """Group cells (rsbench.results.Cell) by (dataset, split) and method, loading their ranks.

    Only cells of `split` (metrics.json "split"; None = every split, each its own group) and of
    `dataset` (None = all) are kept.
    """
    datasets = sorted({c.dataset for c in cells})
    if dataset is not None and dataset not in datasets:
        raise unknown("dataset", dataset, datasets)
    groups: dict[tuple[str, str], dict[str, MethodRuns]] = {}
    for c in cells:
        cell_split = str(c.metrics.get("split", "test"))
        if (dataset is not None and c.dataset != dataset) or (split is not None and cell_split != split):
            continue
        runs = groups.setdefault((c.dataset, cell_split), {}).setdefault(
            c.method, MethodRuns(dataset=c.dataset, split=cell_split, method=c.method)
        )
        i2t, t2i, cap2img = _cell_ranks(c)
        if runs.cap2img is None:
            runs.cap2img = cap2img
        elif not np.array_equal(runs.cap2img, cap2img):
            raise UserError(f"{c.path}: cap2img differs from the other seeds of {c.method} on {c.dataset}")
        runs.ranks[int(c.seed)] = (i2t, t2i)
        runs.metrics[int(c.seed)] = c.metrics
    if not groups:
        what = " of " + dataset if dataset else ""
        raise UserError(f"{where}: no complete result cells{what} on the '{split}' split")
    return groups


def _cell_ranks(cell) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = cell.ranks
    try:
        return (
            np.asarray(r["i2t_rank"], dtype=np.int64),
            np.asarray(r["t2i_rank"], dtype=np.int64),
            np.asarray(r["cap2img"], dtype=np.int64),
        )
    except KeyError as e:
        raise UserError(f"{cell.path}: ranks.npz lacks {e.args[0]}") from None


def compare_runs(
    dataset: str,
    split: str,
    runs: dict[str, MethodRuns],
    metrics: Sequence[str] = TESTED_METRICS,
    alpha: float = 0.05,
    resamples: int = 10_000,
    seed: int = 0,
):
    """All pairs of methods of one (dataset, split) -> DataFrame in COLUMNS order (Holm applied)."""
    import pandas as pd

    methods = sorted(runs)
    rows: list[dict] = []
    first = runs[methods[0]]
    for m in methods[1:]:
        if runs[m].n_images != first.n_images or not np.array_equal(runs[m].cap2img, first.cap2img):
            raise UserError(
                f"{dataset}/{split}: {m} and {first.method} were scored on different test sets "
                "(number of images or cap2img differ)"
            )
    draws = None
    if len(methods) > 1:
        draws = draw_resamples(first.n_images, resamples, stream_seed(seed, dataset, split))
    for i, ma in enumerate(methods):
        for mb in methods[i + 1 :]:
            ra, rb = runs[ma], runs[mb]
            shared = sorted(set(ra.seeds) & set(rb.seeds))
            sa, sb = (shared, shared) if shared else (ra.seeds, rb.seeds)
            res = paired_test(ra.values(sa), rb.values(sb), metrics, resamples, alpha, draws=draws)
            for m, r in res.items():
                per_a = [_seed_metric(ra, s, m) for s in shared]
                per_b = [_seed_metric(rb, s, m) for s in shared]
                rows.append({
                    "dataset": dataset, "split": split, "method_a": ma, "method_b": mb, "metric": m,
                    "mean_a": r.mean_a, "mean_b": r.mean_b,
                    "std_a": _std(per_a), "std_b": _std(per_b), "diff": r.diff,
                    "ci_low": r.ci_low, "ci_high": r.ci_high, "p": r.p, "p_holm": math.nan,
                    "significant": False, "wins": r.wins, "ties": r.ties, "losses": r.losses,
                    "n_queries": r.n_queries, "n_clusters": r.n_clusters, "n_seeds": len(shared),
                    "seed_p": seed_ttest(per_a, per_b),
                })  # fmt: skip
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    if len(df):
        for idx in df.groupby("metric", sort=False).groups.values():
            df.loc[idx, "p_holm"] = holm(df.loc[idx, "p"].to_numpy())
        df["significant"] = df["p_holm"] < alpha
        order = {m: k for k, m in enumerate(metrics)}
        df = df.sort_values(
            ["metric", "method_a", "method_b"], key=lambda s: s.map(order) if s.name == "metric" else s
        )
        df = df.reset_index(drop=True)
    return df


def _seed_metric(runs: MethodRuns, seed: int, metric: str) -> float:
    return metric_value(runs.values([seed]), metric)


def _std(x: Sequence[float]) -> float:
    return float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan


def compare_results(
    results_dir: str | Path,
    dataset: str | None = None,
    alpha: float = 0.05,
    resamples: int = 10_000,
    seed: int = 0,
    metrics: Sequence[str] = TESTED_METRICS,
    split: str | None = "test",
    skip_damaged: bool = False,
):
    """Significance of every method pair of every (dataset, split) under `results_dir`."""
    import pandas as pd

    check_alpha(alpha)
    for m in metrics:
        metric_weights(m)
    groups = load_runs(results_dir, dataset, split, skip_damaged)
    frames = [compare_runs(d, s, runs, metrics, alpha, resamples, seed) for (d, s), runs in sorted(groups.items())]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)


def write_significance(df, path: str | Path) -> None:
    """Write the table as CSV atomically."""
    from ..io import write_text

    write_text(path, df.to_csv(index=False, float_format="%.6g"))


def format_significance(df, metric: str | None = "mR", alpha: float = 0.05) -> str:
    """A readable fixed-width table of `df` (rows of one metric, or all when metric is None)."""
    if metric is not None:
        df = df[df["metric"] == metric]
    if not len(df):
        return "(no method pairs to compare)"
    level = f"{100 * (1 - alpha):g}%"
    head = ["dataset", "A", "B", "metric", "mean A", "mean B", "A-B", f"{level} CI", "p", "p_holm", "", "W/T/L", "seeds",
            "seed_p"]  # fmt: skip
    lines = []
    for r in df.itertuples(index=False):
        sd_a = "" if math.isnan(r.std_a) else f"±{r.std_a:.2f}"
        sd_b = "" if math.isnan(r.std_b) else f"±{r.std_b:.2f}"
        lines.append([
            r.dataset if r.split == "test" else f"{r.dataset}/{r.split}", r.method_a, r.method_b, r.metric,
            f"{r.mean_a:.2f}{sd_a}", f"{r.mean_b:.2f}{sd_b}", f"{r.diff:+.2f}",
            f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]", _fmt_p(r.p), _fmt_p(r.p_holm),
            "*" if r.significant else "", f"{r.wins}/{r.ties}/{r.losses}", str(r.n_seeds), _fmt_p(r.seed_p),
        ])  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(head)]
    right = {4, 5, 6, 8, 9, 12, 13}

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in lines]
    out.append(
        f"* p_holm < {alpha:g}. p: paired sign-flip test over queries clustered by image; CI: cluster "
        "bootstrap; Holm over all pairs per metric; W/T/L per image; seed_p: paired t-test over shared seeds."
    )
    return "\n".join(line.rstrip() for line in out)


def _fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "nan"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"

