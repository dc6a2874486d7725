"""`bench run`: parse the grid's options, hand them to rsbench.engine.grid, print the summary."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .options import AnnFileOpt, DataRootOpt, ImageDirOpt, parse_seeds, split_list

if TYPE_CHECKING:
    from ..engine.grid import CellOutcome, Grid


def run(
    methods: Annotated[str, typer.Option(help="Comma-separated method names (see `bench methods`).")],
    dataset: Annotated[str, typer.Option(help="Comma-separated dataset names (see `bench datasets`).")],
    data_root: DataRootOpt = None,
    ann_file: AnnFileOpt = None,
    image_dir: ImageDirOpt = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    epochs: Annotated[int | None, typer.Option(help="Training epochs (0 = evaluate without training).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    preset: Annotated[str, typer.Option(help="auto (small on synthetic, paper otherwise), small, paper, or one a "
                                              "method declares (e.g. ret2 of hf_clip and zoo:*).")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    config: Annotated[Path | None, typer.Option(help="TOML/JSON file of options (dotted keys or tables).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override an option: key=value "
                                                                    "(repeatable; prefix 'msa.' to scope).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted cell from its last epoch.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Re-run cells that are already complete.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model parts.")] = False,
    precision: Annotated[str | None, typer.Option(help="train.precision: default = auto (bf16 autocast on GPU and on a "
                                                       "CPU with native bf16, else fp32), fp32, bf16 or fp16.")] = None,
    progress: Annotated[bool | None, typer.Option(help="Progress bars (default: on a terminal).")] = None,
    launcher: Annotated[str, typer.Option(help="local (here, one cell after another), slurm (one "
                                                 "submitit job per cell; docs/cluster.md) or submitit-local "
                                                 "(the same jobs on this machine).")] = "local",
    partition: Annotated[str | None, typer.Option(help="SLURM partition (--launcher slurm).")] = None,
    gpus_per_job: Annotated[int, typer.Option(help="GPUs (DDP processes) per cell job (--launcher slurm).")] = 1,
    time_limit: Annotated[str, typer.Option("--time", help="Job time limit: minutes or H:MM:SS "
                                                            "(--launcher slurm).")] = "4:00:00",
    slurm_folder: Annotated[Path | None, typer.Option(help="submitit logs/pickles (default <out>/.submitit).")] = None,
    weights_dir: Annotated[Path | None, typer.Option(help="Folder of the zoo:* checkpoints (see `bench models`); "
                                                          "sets weights_dir of every zoo method.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: the usable cores minus "
                                                             "DataLoader workers). CPU results depend on it; "
                                                             "run.json records it.")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Cells run at once, each in its own process (--launcher local): "
                                                  "the cores are shared out (1 thread each on 2 cores), or one GPU "
                                                  "each where there are several.")] = 1,
) -> None:
    """Train each (method, dataset, seed), select on val, evaluate on test, write results/.

    Safe to run again after a crash (finished cells are skipped, interrupted ones resume) and to run
    several times at once on one results folder (each cell is locked by the process running it).
    """
    from ..datasets import DataSource
    from ..engine.grid import Grid, plan_grid
    from ..engine.preflight import check_weights
    from ..results.leaderboard import update_leaderboard

    names = split_list(dataset, "dataset")
    source = DataSource(names[0], data_root, ann_file, image_dir)  # each dataset's: source.for_dataset(name)
    grid = Grid(methods=split_list(methods, "methods"), datasets=names, seeds=parse_seeds(seeds), cfgs={}, out=out,
                source=source, resume=resume, overwrite=overwrite, threads=threads, jobs=jobs)
    cli_train = {"epochs": epochs, "batch_size": batch_size, "compile": compile or None, "precision": precision}
    plan_grid(grid, preset, config, zoo_weights(grid.methods, weights_dir) + list(set_ or []), cli_train)
    if launcher != "slurm":  # the nodes of a cluster have their own network and caches
        check_weights(grid)  # every pretrained weight can be had, before any cell starts
    if launcher != "local":  # one submitit job per cell (rsbench.engine.launch); nothing is trained here
        from ..engine.launch import submit_from_cli
        from ..errors import UserError

        if jobs > 1:
            raise UserError(f"--jobs {jobs} runs cells side by side here (--launcher local); {launcher} runs one job "
                            "per cell already: drop --jobs")
        if grid.exclude is not None:
            raise UserError(f"eval.exclude runs with --launcher local only (not {launcher}); "
                            "run the grid locally, or without eval.exclude")

        return submit_from_cli(launcher, grid.cfgs, out, grid.source, device, resume, overwrite, partition, gpus_per_job,
                               time_limit, slurm_folder, threads)
    rows = run_here(grid, device, sys.stderr.isatty() if progress is None else progress)
    if rows is None:  # DDP: rank 0 reports
        return
    typer.echo(format_summary(rows), nl=False)
    written, line = update_leaderboard(out)
    typer.echo(line, err=not written)
    if any(r.status == "failed" for r in rows) or not written:
        sys.exit(2)


def run_here(grid: Grid, device: str, progress: bool) -> list[CellOutcome] | None:
    """The grid on this machine: one cell after another, or `grid.jobs` at a time (engine.pool); an
    interrupt exits with its one line (130 / 143)."""
    from ..engine.grid import GridInterrupted, run_grid

    try:
        if grid.jobs > 1:
            from ..engine.pool import run_grid_jobs

            return run_grid_jobs(grid, device)
        return run_grid(grid, device, progress)
    except GridInterrupted as e:
        typer.echo(e.message, err=True)
        sys.exit(e.code)


def zoo_weights(methods: list[str], weights_dir: Path | None) -> list[str]:
    """--weights-dir DIR as `<zoo method>.weights_dir=DIR` for every zoo:* method (an explicit --set wins)."""
    from ..errors import UserError

    if weights_dir is None:
        return []
    zoo = [m for m in methods if m.startswith("zoo:")]
    if not zoo:
        raise UserError(f"--weights-dir {weights_dir}: only zoo:* methods read it (see `bench models`); "
                        "other methods take their weights file with --set")
    return [f"{m}.weights_dir={weights_dir}" for m in zoo]


def format_summary(rows: list[CellOutcome]) -> str:
    """The table printed after a grid: one line per cell (test and val mR, selected epoch, time)."""
    lines = ["", (f"{'method':<10} {'dataset':<10} {'seed':>4} {'test mR':>8} {'chance':>7} {'val mR':>7} "
                  f"{'epoch':>5} {'time':>7}")]
    for r in rows:
        if r.status in ("busy", "failed"):
            note = "running in another process" if r.status == "busy" else "FAILED (see the error above)"
            lines.append(f"{r.method:<10} {r.dataset:<10} {r.seed:>4} {'-':>8} {'-':>7} {'-':>7} {'-':>5} "
                         f"{'-':>7}  {note}")
            continue
        met = r.metrics
        val = (met.get("val") or {}).get("mR")
        val_s = f"{val:7.2f}" if isinstance(val, (int, float)) else f"{'-':>7}"
        ep = met.get("selected_epoch")
        lines.append(f"{r.method:<10} {r.dataset:<10} {r.seed:>4} {met['mR']:8.2f} "
                     f"{met.get('chance_mR', float('nan')):7.2f} {val_s} {ep if ep is not None else '-':>5} "
                     f"{r.wall:6.0f}s" + ("  (skipped: complete)" if r.status == "skipped" else ""))
        if r.excluded:
            lines.append(excluded_note(r.excluded))
    return "\n".join(lines) + "\n"


def excluded_note(rec: dict) -> str:
    """The summary's line under a cell evaluated with eval.exclude (metrics_excluded.json)."""
    n = rec.get("n_excluded", 0)
    if not isinstance(rec.get("mR"), (int, float)):
        return f"{'':<10} excluding {n} leaked test images: {rec.get('note', 'no metrics')}"
    return (f"{'':<10} excluding {n} leaked test images: mR {rec['mR']:.2f} on {rec.get('n_images')} images "
            "(metrics_excluded.json)")
