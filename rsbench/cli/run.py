"""`bench run`, `bench methods`, `bench datasets`: the training grid and what is registered."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .app import app
from ..errors import UserError

if TYPE_CHECKING:
    import torch

    from ..config.schema import RunConfig
    from ..contracts import DatasetSplits


def _split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"--{what} is empty")
    return items


MAX_SEED = 2**32 - 1  # numpy's seed range; the folder seed<k> must also be found again by status/leaderboard


def _parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(s) for s in _split_list(value, "seeds")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{value}'") from None
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise UserError(f"--seeds: {bad[0]} is out of range; seeds are integers from 0 to {MAX_SEED}")
    return seeds


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM sends before it kills a job), raised like Ctrl-C so every cleanup runs."""


_SIGNALLED: list[int] = []  # set by the handler: a cell error raised while stopping is not a cell failure


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGNALLED.append(signum)
    raise _Terminated()


def _resume_point(cell: Path) -> int:
    """Epochs saved in the cell (rows of train_log.csv, which is written after last.pt); 0 if none."""
    if not (cell / "checkpoint" / "last.pt").is_file():
        return 0
    try:
        lines = (cell / "train_log.csv").read_text(encoding="utf-8").strip().splitlines()
    except OSError:
        return 0
    return max(0, len(lines) - 1)


def _interrupted(e: KeyboardInterrupt, current: dict[str, Any]) -> None:
    """One line saying what was interrupted and where the next run resumes; exit 143 (SIGTERM) or 130."""
    sig, code = ("SIGTERM", 143) if isinstance(e, _Terminated) else ("Ctrl-C (SIGINT)", 130)
    cell, cfg = current.get("cell"), current.get("cfg")
    if cell is None:
        typer.echo(f"interrupted by {sig} before any cell started", err=True)
    else:
        n = _resume_point(cell)
        where = (f"resumes it from epoch {n} (the last one saved)" if n else "starts it over (no epoch was saved)")
        typer.echo(f"interrupted by {sig} while running {cfg.method} on {cfg.dataset}, seed {cfg.seed} ({cell}); "
                   f"the next `bench run` with the same options {where}", err=True)
    sys.exit(code)


@app.command()
def run(
    methods: Annotated[str, typer.Option(help="Comma-separated method names (see `bench methods`).")],
    dataset: Annotated[str, typer.Option(help="Comma-separated dataset names (see `bench datasets`).")],
    data_root: Annotated[Path | None, typer.Option(help="Dataset folder (with several datasets: a folder "
                                                           "holding one sub-folder per dataset).")] = None,
    ann_file: Annotated[Path | None, typer.Option(help="Annotation file (one dataset only).")] = None,
    image_dir: Annotated[Path | None, typer.Option(help="Image folder (one dataset only).")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    epochs: Annotated[int | None, typer.Option(help="Training epochs (0 = evaluate without training).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    preset: Annotated[str, typer.Option(help="auto (small on synthetic, paper otherwise), small or paper.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    config: Annotated[Path | None, typer.Option(help="TOML/JSON file of options (dotted keys or tables).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override an option: key=value "
                                                                    "(repeatable; prefix 'msa.' to scope).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted cell from its last epoch.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Re-run cells that are already complete.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model parts.")] = False,
    progress: Annotated[bool | None, typer.Option(help="Progress bars (default: on a terminal).")] = None,
    launcher: Annotated[str, typer.Option(help="local (here, one cell after another) or slurm (one "
                                                 "submitit job per cell; docs/cluster.md).")] = "local",
    partition: Annotated[str | None, typer.Option(help="SLURM partition (--launcher slurm).")] = None,
    gpus_per_job: Annotated[int, typer.Option(help="GPUs (DDP processes) per cell job (--launcher slurm).")] = 1,
    time_limit: Annotated[str, typer.Option("--time", help="Job time limit: minutes or H:MM:SS "
                                                            "(--launcher slurm).")] = "4:00:00",
    slurm_folder: Annotated[Path | None, typer.Option(help="submitit logs/pickles (default <out>/.submitit).")] = None,
) -> None:
    """Train each (method, dataset, seed), select on val, evaluate on test, write results/.

    Safe to run again after a crash (finished cells are skipped, interrupted ones resume) and to run
    several times at once on one results folder (each cell is locked by the process running it).
    """
    from ..config.schema import load_config_file, parse_set_options
    from ..datasets import get_dataset_info
    from ..engine.device import pick_device
    from ..methods.registry import get_method_spec
    from ..results.cell import cell_dir
    from ..config.resolve import resolve_config

    method_list = _split_list(methods, "methods")
    dataset_list = _split_list(dataset, "dataset")
    seed_list = _parse_seeds(seeds)
    for m in method_list:
        get_method_spec(m)
    for d in dataset_list:
        get_dataset_info(d)
    if (ann_file or image_dir) and len(dataset_list) > 1:
        raise UserError("--ann-file/--image-dir name one dataset's files; run one dataset at a time")
    file_keys = load_config_file(config) if config else {}
    overrides = parse_set_options(set_)
    cli_train = {"epochs": epochs, "batch_size": batch_size, "compile": compile or None}
    # Resolve every config before any training, so a typo fails fast.
    cfgs = {(m, d, s): resolve_config(m, d, s, preset, file_keys, cli_train, overrides)
            for d in dataset_list for m in method_list for s in seed_list}
    _check_out(out)
    for (m, d, s), cfg in cfgs.items():  # a resumed or finished cell must have been run with this config
        _preflight(cell_dir(out, get_dataset_info(d).name, m, s), cfg, resume, overwrite)
    if launcher != "local":  # one submitit job per cell (rsbench.engine.launch); nothing is trained here
        from ..engine.launch import submit_from_cli

        return submit_from_cli(launcher, cfgs, out, data_root, ann_file, image_dir, device, resume, overwrite,
                               partition, gpus_per_job, time_limit, slurm_folder)
    import signal

    from ..engine import distributed as dist

    dev = dist.setup(pick_device(device))  # under torchrun: one DDP process per GPU/CPU rank
    show = sys.stderr.isatty() if progress is None else progress
    summary: list[_Row] = []
    current: dict[str, Any] = {}  # the cell being run, for the one-line note on Ctrl-C / SIGTERM
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for d in dataset_list:
            summary += _run_dataset(d, method_list, seed_list, cfgs, data_root, ann_file, image_dir, out, dev,
                                    resume, overwrite, show, current, len(dataset_list) > 1)
    except KeyboardInterrupt as e:
        _interrupted(e, current)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    dist.finish()  # every rank is done: close the group together (no-op in a single process)
    if not dist.is_main():  # DDP: rank 0 reports
        return
    _print_summary(summary)
    written = _write_leaderboard(out)
    if any(r.status == "failed" for r in summary) or not written:
        sys.exit(2)


def _run_dataset(d: str, method_list: list[str], seed_list: list[int], cfgs: dict, data_root: Path | None,
                 ann_file: Path | None, image_dir: Path | None, out: Path, dev: torch.device, resume: bool,
                 overwrite: bool, show: bool, current: dict[str, Any], several: bool) -> list[_Row]:
    """Load one dataset, refuse cells made on other data, then run its cells one after another."""
    from ..results.cell import cell_dir
    from ..engine.cell import check_cell_data

    root = data_root
    if data_root is not None and several and (data_root / d).is_dir():
        root = data_root / d
    data = _load_data(d, root, ann_file, image_dir)
    typer.echo(f"{d}: train {data.train.n_images} / val {data.val.n_images} / test {data.test.n_images} "
               f"images on {dev}")
    if not overwrite:  # before any training: a cell to resume or skip must have been made on this data
        for m in method_list:
            for s in seed_list:
                check_cell_data(cell_dir(out, data.name, m, s), data)
    rows = []
    for m in method_list:
        for s in seed_list:
            current.update(cell=cell_dir(out, data.name, m, s), cfg=cfgs[(m, d, s)])
            rows.append(_run_one(cfgs[(m, d, s)], data, current["cell"], dev, resume, overwrite, show))
    current.clear()
    return rows


@dataclass
class _Row:
    method: str
    dataset: str
    seed: int
    status: str  # done | skipped | busy (run by another process) | failed
    metrics: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the results folder ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: results folder is not writable")


def _preflight(cell: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Fail before any training if a cell to skip or resume was made with another config."""
    from ..results.cell import is_complete
    from ..engine.cell import check_cell_config

    if not overwrite and (resume or is_complete(cell)):
        check_cell_config(cell, cfg)


def _load_data(name: str, root: Path | None, ann_file: Path | None, image_dir: Path | None) -> DatasetSplits:
    from ..engine import distributed as dist
    from ..datasets import load_dataset
    from ..datasets.catalogue import default_data_root

    if dist.is_distributed():  # rank 0 generates the default synthetic set; the others then read it
        dist.on_main(default_data_root, name, root, ann_file)
    return load_dataset(name, data_root=root, ann_file=ann_file, image_dir=image_dir)


def _run_one(cfg: RunConfig, data: DatasetSplits, cell: Path, dev: torch.device, resume: bool,
             overwrite: bool, show: bool) -> _Row:
    """One cell under its lock: skip it (finished, or run by another process), or train/resume it.

    A failure of this cell alone (diverged, out of memory, refused checkpoint or config) is printed
    and the grid goes on; data and write errors stop the run (they would hit every cell). Under
    torchrun a failed cell stops this process too: an error raised on one rank only (an OOM on one
    GPU) would leave the other ranks waiting in a collective until the timeout, whereas a rank that
    exits makes torchrun stop the others at once. Run the grid again to resume the other cells.
    """
    from ..engine import distributed as dist
    from ..errors import DataError
    from ..io import WriteError
    from ..engine.launch import clear_failure, record_failure
    from ..locks import cell_lock
    from ..results.cell import cell_damage, is_complete, load_cell
    from ..engine.cell import check_cell_config, check_cell_data, clear_cell, one_line, run_cell

    row = _Row(cfg.method, data.name, cfg.seed, "failed")
    lock = cell_lock(cell)
    if not dist.acquire_on_main(lock):  # DDP: rank 0 holds the lock for all ranks
        typer.echo(f"cell {cell} is being run by another process ({lock.describe_owner()}); skipping")
        row.status = "busy"
        return row
    try:
        if is_complete(cell) and not overwrite:
            check_cell_config(cell, cfg)
            check_cell_data(cell, data)
            typer.echo(f"skip {cell} (complete; --overwrite to redo)")
            row.status, row.metrics = "skipped", load_cell(cell).metrics
            return row
        if overwrite and dist.is_main():
            clear_cell(cell)
        clear_failure(cell)
        damage = None if overwrite else cell_damage(cell)
        if damage:
            typer.echo(f"repair {cell}: {damage}")
        typer.echo(f"run {cfg.method} on {data.name}, seed {cfg.seed} -> {cell}")
        t0 = time.time()
        res = run_cell(cfg, data, cell, dev, resume=resume, progress=show, log=typer.echo)
        row.status, row.metrics, row.wall = "done", res.metrics, time.time() - t0
    except (DataError, WriteError) as e:
        raise type(e)(one_line(e)) from None
    except UserError as e:
        record_failure(cell, e)  # failed.json, read by `bench status` (atomic: any rank may write it)
        if dist.is_distributed():
            raise UserError(f"{cell}: {one_line(e)} (rank {dist.rank()}; the other ranks are stopped)") from None
        typer.echo(f"error: {one_line(e)}", err=True)
        _free_device_memory(dev)
    except Exception as e:  # a bug or an unforeseen error in this cell: record it, go on with the grid
        if dist.is_distributed() or _signal_seen():
            raise
        _record_internal_error(cell, e)
        _free_device_memory(dev)
    finally:
        lock.release()
    return row


def _signal_seen() -> bool:
    """True once SIGTERM arrived (a data worker killed by the same signal may raise before we see it)."""
    return bool(_SIGNALLED)


def _record_internal_error(cell: Path, e: Exception) -> None:
    """failed.json with the one-line error, the traceback in <cell>/traceback.txt, one line on stderr."""
    import traceback

    from ..io import write_text
    from ..engine.launch import record_failure
    from ..engine.cell import one_line

    msg = f"internal error {type(e).__name__}: {one_line(e)}"[:500]
    try:
        write_text(cell / "traceback.txt", "".join(traceback.format_exception(e)))
        msg += f" (traceback in {cell / 'traceback.txt'})"
    except UserError:
        pass
    record_failure(cell, msg)
    typer.echo(f"error: {cell}: {msg}", err=True)


def _free_device_memory(dev: torch.device) -> None:
    import gc

    gc.collect()
    if dev.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _write_leaderboard(out: Path) -> bool:
    """Write <out>/leaderboard.{csv,md} from every complete cell (serialised between processes).

    False when a damaged cell (warned by name) kept it from being written: a table without that row
    would silently drop a result."""
    from ..locks import leaderboard_lock
    from ..results.cell import DamagedCell, write_leaderboard

    lock = leaderboard_lock(out)
    if not lock.acquire(timeout=120):
        typer.echo(f"leaderboard not written: another process is writing it ({lock.describe_owner()})")
        return True
    try:
        write_leaderboard(out)
    except DamagedCell as e:
        typer.echo(f"error: leaderboard not written: {e}", err=True)
        return False
    except UserError:
        typer.echo(f"no complete result cells in {out} yet; no leaderboard written")
        return True
    finally:
        lock.release()
    typer.echo(f"leaderboard: {out / 'leaderboard.md'} (and leaderboard.csv)")
    return True


def _print_summary(rows: list[_Row]) -> None:
    typer.echo("")
    typer.echo(f"{'method':<10} {'dataset':<10} {'seed':>4} {'test mR':>8} {'chance':>7} {'val mR':>7} "
               f"{'epoch':>5} {'time':>7}")
    for r in rows:
        if r.status in ("busy", "failed"):
            note = "running in another process" if r.status == "busy" else "FAILED (see the error above)"
            typer.echo(f"{r.method:<10} {r.dataset:<10} {r.seed:>4} {'-':>8} {'-':>7} {'-':>7} {'-':>5} "
                       f"{'-':>7}  {note}")
            continue
        met = r.metrics
        val = (met.get("val") or {}).get("mR")
        val_s = f"{val:7.2f}" if isinstance(val, (int, float)) else f"{'-':>7}"
        ep = met.get("selected_epoch")
        typer.echo(f"{r.method:<10} {r.dataset:<10} {r.seed:>4} {met['mR']:8.2f} "
                   f"{met.get('chance_mR', float('nan')):7.2f} {val_s} {ep if ep is not None else '-':>5} "
                   f"{r.wall:6.0f}s" + ("  (skipped: complete)" if r.status == "skipped" else ""))


@app.command("methods")
def methods_cmd(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every option.")] = False) -> None:
    """List the registered methods."""
    from ..config.schema import all_keys
    from ..methods.registry import list_methods

    for spec in list_methods():
        typer.echo(f"{spec.name:<10} {spec.description}")
        if verbose:
            cfg = spec.config_cls()
            for k in all_keys(cfg):
                v = cfg
                for part in k.split("."):
                    v = getattr(v, part)
                typer.echo(f"    {k} = {v!r}")
            for p, overlay in spec.presets.items():
                typer.echo(f"    preset {p}: " + ", ".join(f"{k}={v}" for k, v in overlay.items()))


@app.command("datasets")
def datasets_cmd() -> None:
    """List the known datasets."""
    from ..datasets import list_datasets

    for info in list_datasets():
        typer.echo(f"{info.name:<10} {info.description}")
