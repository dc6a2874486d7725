"""`bench report` (one self-contained HTML file) and `bench gallery` (top-5 retrieval figure).

Plain functions with Typer annotations; rsbench.cli.app registers them (app.command()(report),
app.command()(gallery)). Heavy imports stay inside the commands so `bench --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError

_RESULTS = typer.Argument(metavar="RESULTS_DIR", help="Results root holding <dataset>/<method>/seed<k>/ cells.")
_SKIP = typer.Option("--skip-damaged", help="Leave out result cells whose files do not read back (each is "
                     "still named in a warning) instead of refusing.")
_DATA_ROOT = typer.Option("--data-root", help="Dataset folder the gallery reads the images from (default: the "
                          "dataset's default location; synthetic is generated).")


def _ints(text: str | None, option: str) -> list[int] | None:
    """'3,17,42' -> [3, 17, 42]; a UserError naming the option otherwise."""
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated query indices, got '{text}'") from None


def report(
    results_dir: Annotated[Path, _RESULTS],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file to write (default RESULTS_DIR/report.html).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only this dataset (default: every dataset).")] = None,
    data_root: Annotated[Path | None, _DATA_ROOT] = None,
    gallery_queries: Annotated[int, typer.Option("--gallery-queries", min=0, help="Queries in each dataset's gallery (0: none).")] = 3,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level (Holm-corrected).")] = 0.05,
    resamples: Annotated[int, typer.Option("--resamples", min=1, help="Random sign flips of the paired test.")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the resampling and of the gallery's queries.")] = 0,
    skip_damaged: Annotated[bool, _SKIP] = False,
) -> None:
    """One self-contained HTML file: leaderboard, figures, significance, gallery and run metadata per dataset.

    It embeds everything (no network), so it opens anywhere, also from a copied results folder.
    """
    from ..results.report import write_report

    roots = {"": str(data_root)} if data_root is not None else None
    path = write_report(results_dir, out, dataset=dataset, data_root=roots, alpha=alpha, resamples=resamples,
                        seed=seed, skip_damaged=skip_damaged, gallery_queries=gallery_queries)
    typer.echo(f"wrote {path}")


def gallery(
    results_dir: Annotated[Path, _RESULTS],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset whose test queries to show.")],
    methods: Annotated[str | None, typer.Option("--methods", help="Comma-separated methods, in column order (default: all).")] = None,
    queries: Annotated[int, typer.Option("--queries", min=1, help="Number of queries drawn from --seed.")] = 4,
    query_ids: Annotated[str | None, typer.Option("--query-ids", help="Comma-separated query indices (caption indices for t2i, image indices for i2t).")] = None,
    direction: Annotated[str, typer.Option("--direction", help="t2i: a caption retrieves images; i2t: an image retrieves captions.")] = "t2i",
    differ: Annotated[bool, typer.Option("--differ", help="Pick the queries where the first two --methods rank the true match most differently.")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the query choice (same seed, same figure).")] = 0,
    cell_seed: Annotated[int | None, typer.Option("--cell-seed", help="Training seed of the cells to show (default: each method's lowest).")] = None,
    data_root: Annotated[Path | None, _DATA_ROOT] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default RESULTS_DIR/figures).")] = None,
    skip_damaged: Annotated[bool, _SKIP] = False,
) -> None:
    """Top-5 results of each method for a few queries, hits framed green, misses red; PNG and PDF."""
    from ..results.gallery import gallery as write_gallery

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    paths, shown = write_gallery(
        results_dir, dataset, out_dir=out, skip_damaged=skip_damaged, methods=names, n=queries,
        query_ids=_ints(query_ids, "--query-ids"), direction=direction, seed=seed, differ=differ,
        data_root=data_root, cell_seed=cell_seed,
    )  # fmt: skip
    typer.echo(f"queries: {', '.join(map(str, shown))}")
    for p in paths:
        typer.echo(f"wrote {p}")
