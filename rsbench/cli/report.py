"""`bench score` (an external score matrix into a result cell, via rsbench.engine.score) and `bench leaderboard`.

Heavy imports (torch via rsbench.evaluation.metrics, datasets, pandas) stay inside the commands so that
`bench --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import AnnFileOpt, DataRootOpt, ImageDirOpt, LabelOpt, ResultsDirArg, SkipDamagedOpt


def score(
    sims: Annotated[Path, typer.Argument(metavar="SIMS", help="Score matrix (images x captions): .npy, or .npz with one array.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (see `bench datasets`).")],
    name: Annotated[str, typer.Option("--name", help="Method name for the result cell folder.")],
    out: Annotated[Path, typer.Option("--out", help="Results root: writes <out>/<dataset>/<name>/seed<k>/.")],
    data_root: DataRootOpt = None,
    ann_file: AnnFileOpt = None,
    image_dir: ImageDirOpt = None,
    split: Annotated[str, typer.Option("--split", help="Split the scores are for: test, val or train.")] = "test",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed label of this result.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing complete cell.")] = False,
) -> None:
    """Evaluate an external score matrix (e.g. a published model's) into a result cell."""
    from ..datasets import DataSource
    from ..engine.score import score_external
    from ..evaluation.metrics import format_metrics

    source = DataSource(dataset, data_root, ann_file, image_dir)
    r = score_external(sims, source, name, out, split=split, seed=seed, overwrite=overwrite)
    typer.echo(f"{r.dataset} / {name} / seed{seed}  ({r.split}: {r.n_images} images x {r.n_captions} captions)")
    typer.echo(format_metrics(r.metrics))
    typer.echo(f"wrote {r.cell}", err=True)


def leaderboard(
    results_dir: ResultsDirArg,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write leaderboard.csv/.md/.tex.")] = None,
    with_published: Annotated[bool, typer.Option("--with-published", help="Add the numbers reported in papers (shipped published_results.csv) under a rule.")] = False,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the marks in the .md/.tex tables (Holm-corrected).")] = 0.05,
    skip_damaged: SkipDamagedOpt = False,
    label: LabelOpt = None,
) -> None:
    """Mean ± std over seeds per (dataset, method): writes leaderboard.csv, and leaderboard.md and
    leaderboard.tex (booktabs) with best values bold and significance marks between rows."""
    from ..results import leaderboard as board
    from ..results.layout import leaderboard_paths
    from ..results.names import parse_labels
    from ..results.tables import TableOptions

    labels = tuple(parse_labels(label).items())
    options = TableOptions(with_published=with_published, alpha=alpha, labels=labels)
    df = board.write_leaderboard(results_dir, out, skip_damaged, options, wait_s=board.LEADERBOARD_WAIT_S)
    typer.echo(board.leaderboard_markdown(df), nl=False)
    if with_published:
        _note_unpublished(sorted(set(df["dataset"])))
    paths = leaderboard_paths(out or results_dir)
    typer.echo(f"wrote {paths['csv']}, {paths['md'].name} and {paths['tex'].name}", err=True)


def _note_unpublished(datasets: list[str]) -> None:
    """--with-published: say in one line which datasets have no published rows (instead of nothing)."""
    from ..results.published import published_results

    missing = [d for d in datasets if not published_results(d)]
    if missing:
        have = sorted({r["dataset"].strip().lower() for r in published_results()})
        typer.echo(f"note: --with-published: no published rows for {', '.join(missing)} "
                   f"(the shipped published_results.csv has {', '.join(have)})", err=True)
