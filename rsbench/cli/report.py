"""`bench score` (an external score matrix into a result cell, via rsbench.engine.score) and `bench leaderboard`.

Heavy imports (torch via rsbench.evaluation.metrics, datasets, pandas) stay inside the commands so that
`bench --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .options import AnnFileOpt, DataRootOpt, ImageDirOpt, ResultsDirArg, SkipDamagedOpt

LEADERBOARD_WAIT_S = 120.0  # how long `bench leaderboard` waits for another writer of the same files


def format_metrics(m: dict[str, Any]) -> str:
    """A short human summary of one cell's metrics."""
    return (
        f"mR {m['mR']:.2f}  (chance {m['chance_mR']:.2f})\n"
        f"i2t  R@1 {m['i2t_r1']:.2f}  R@5 {m['i2t_r5']:.2f}  R@10 {m['i2t_r10']:.2f}  "
        f"medr {m['i2t_medr']:g}  meanr {m['i2t_meanr']:.1f}\n"
        f"t2i  R@1 {m['t2i_r1']:.2f}  R@5 {m['t2i_r5']:.2f}  R@10 {m['t2i_r10']:.2f}  "
        f"medr {m['t2i_medr']:g}  meanr {m['t2i_meanr']:.1f}"
    )


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
    from ..engine.score import score_external

    r = score_external(sims, dataset, name, out, data_root=data_root, ann_file=ann_file, image_dir=image_dir,
                       split=split, seed=seed, overwrite=overwrite)
    typer.echo(f"{r.dataset} / {name} / seed{seed}  ({r.split}: {r.n_images} images x {r.n_captions} captions)")
    typer.echo(format_metrics(r.metrics))
    typer.echo(f"wrote {r.cell}", err=True)


def leaderboard(
    results_dir: ResultsDirArg,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write leaderboard.csv/.md/.tex.")] = None,
    with_published: Annotated[bool, typer.Option("--with-published", help="Add the numbers reported in papers (shipped published_results.csv) under a rule.")] = False,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the marks in the .md/.tex tables (Holm-corrected).")] = 0.05,
    skip_damaged: SkipDamagedOpt = False,
) -> None:
    """Mean ± std over seeds per (dataset, method): writes leaderboard.csv, and leaderboard.md and
    leaderboard.tex (booktabs) with best values bold and significance marks between rows."""
    from ..locks import holding, leaderboard_lock
    from ..results.cell import (
        leaderboard_files,
        leaderboard_markdown,
        remove_stale_leaderboard_temps,
        require_results_dir,
        scan_results,
        write_file_set,
    )
    from ..results.tables import leaderboard_table_files

    require_results_dir(results_dir)  # before the lock would create the folder
    with holding(leaderboard_lock(out or results_dir), f"{out or results_dir}: leaderboard being written by "
                 "another process", timeout=LEADERBOARD_WAIT_S):
        cells = scan_results(results_dir, skip_damaged)  # read once: each damaged cell warned once
        df, files = leaderboard_files(results_dir, out, cells=cells)
        files.update(leaderboard_table_files(results_dir, out, with_published, alpha, cells=cells))
        remove_stale_leaderboard_temps(out or results_dir)  # a killed writer's; we hold the lock
        write_file_set(files)  # .csv, .md, .tex: all or none
    typer.echo(leaderboard_markdown(df), nl=False)
    typer.echo(f"wrote {(out or results_dir) / 'leaderboard.csv'}, leaderboard.md and leaderboard.tex", err=True)
