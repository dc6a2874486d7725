"""`bench compare` (paired significance between methods) and `bench plot` (paper figures).

Both read only result cell folders. Imports of numpy/pandas/scipy/matplotlib stay inside the
commands so that `bench --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError, unknown
from .options import LabelOpt, ResultsDirArg, SkipDamagedOpt


def compare(
    results_dir: ResultsDirArg,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only this dataset (default: every dataset).")] = None,
    metric: Annotated[str, typer.Option("--metric", help="Metric to print: mR, i2t_r1 ... t2i_r10, or 'all'. The CSV always has all seven.")] = "mR",
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level (Holm-corrected) and 1 - CI level.")] = 0.05,
    resamples: Annotated[int, typer.Option("--resamples", min=1, help="Random sign flips and bootstrap resamples.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the resampling (results are reproducible).")] = 0,
    split: Annotated[str, typer.Option("--split", help="Compare cells scored on this split.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", help="CSV path (default RESULTS_DIR/significance.csv).")] = None,
    skip_damaged: SkipDamagedOpt = False,
) -> None:
    """Paired significance of every pair of methods per dataset; writes significance.csv.

    p: two-sided paired sign-flip test over test queries, p = (b+1)/(n+1); an image and its captions move together.

    CI: paired cluster-bootstrap interval of A - B. Holm over all pairs per metric; W/T/L counted per image.

    seed_p: paired t-test over the seeds both methods share.
    """
    from ..evaluation.metrics import TESTED_METRICS
    from ..results.compare import compare_results, format_significance, write_significance
    from ..results.layout import SIGNIFICANCE_FILE

    if metric != "all" and metric not in TESTED_METRICS:
        raise unknown("metric", metric, [*TESTED_METRICS, "all"])
    df = compare_results(results_dir, dataset=dataset, alpha=alpha, resamples=resamples, seed=seed, split=split,
                         skip_damaged=skip_damaged)
    if df.empty:
        raise UserError(f"{results_dir}: nothing to compare (each dataset has fewer than two methods)")
    path = out if out is not None else Path(results_dir) / SIGNIFICANCE_FILE
    write_significance(df, path)
    typer.echo(format_significance(df, None if metric == "all" else metric, alpha=alpha))
    typer.echo(f"wrote {path}", err=True)


def plot(
    results_dir: ResultsDirArg,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only this dataset (default: every dataset).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default RESULTS_DIR/figures).")] = None,
    logx: Annotated[bool, typer.Option("--logx/--no-logx", help="Logarithmic K axis on the recall curves.")] = True,
    split: Annotated[str, typer.Option("--split", help="Plot cells scored on this split.")] = "test",
    skip_damaged: SkipDamagedOpt = False,
    label: LabelOpt = None,
) -> None:
    """Recall@K curves (both directions, band over seeds), an mR bar chart and the training curves (loss and
    val mR per epoch, from each cell's train_log.csv), PNG (200 dpi) and PDF."""
    from ..results.curves import plot_training_curves
    from ..results.names import parse_labels
    from ..results.plots import plot_results
    from ..results.scan import complete_cells

    labels = parse_labels(label)
    cells = complete_cells(results_dir, skip_damaged)  # read once: each damaged cell is warned once
    paths = plot_results(results_dir, out_dir=out, dataset=dataset, logx=logx, split=split, cells=cells,
                         labels=labels)
    paths += plot_training_curves(results_dir, out_dir=out, dataset=dataset, cells=cells, labels=labels)
    for p in paths:
        typer.echo(f"wrote {p}")
