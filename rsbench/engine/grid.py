"""The grid of cells (method x dataset x seed): plan it, then run each cell under its lock.

`plan_grid` resolves and validates every cell's config and checks every cell to skip or resume
against its config before any data is loaded or any cell trains, so a typo or a changed option
fails in a second, not after hours. `run_grid` loads each dataset once, refuses cells made on other
data, then runs each cell through `run_one_cell`: the cell lock, skip-if-complete, resume, the
failure marker. The submitit launcher (engine.launch) runs `run_one_cell` once per job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, one_line
from ..results.layout import CHECKPOINT_DIR, RESUME_FILE, TRAIN_LOG
from . import cell as cell_mod  # run_cell is looked up at call time (tests replace it)
from . import distributed as dist
from .cellfolder import check_cell_config, check_cell_data, clear_cell
from .progress import CellTime, CellWork, RunClock

if TYPE_CHECKING:
    import torch

    from ..config.gridkeys import GridOptions
    from ..config.schema import RunConfig
    from ..contracts import DatasetSplits
    from ..datasets import DataSource


ECHO_PREFIX = [""]  # a worker of `bench run --jobs N` (engine.pool) starts each line with its cell


def echo(msg: str = "", err: bool = False) -> None:
    """One line to stdout (progress) or stderr (errors)."""
    print(ECHO_PREFIX[0] + msg if msg else msg, file=sys.stderr if err else sys.stdout, flush=True)


@dataclass
class CellOutcome:
    """One row of the grid's summary."""

    method: str
    dataset: str
    seed: int
    status: str  # done | skipped | busy (run by another process) | failed
    metrics: dict[str, Any] = field(default_factory=dict)
    wall: float = 0.0
    excluded: dict[str, Any] | None = None  # eval.exclude: metrics_excluded.json
    took: CellTime | None = None  # what a cell trained here took (the run's time left is estimated from it)


@dataclass
class Grid:
    """A planned grid: every cell's resolved config and where its data and results are.

    `source` says where the data is (None: each dataset's default place); its name is replaced by
    each dataset's (DataSource.for_dataset), so one source serves a grid of several datasets.
    """

    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    cfgs: dict[tuple[str, str, int], RunConfig]
    out: Path
    source: DataSource | None = None
    resume: bool = True
    overwrite: bool = False
    exclude: dict[str, Any] | None = None  # eval.exclude: the audit.json object (leaked images left out too)
    threads: int | None = None  # torch intra-op threads (`bench run --threads`); None: device.default_threads
    jobs: int = 1  # cells run at once, each in its own worker process (engine.pool.run_grid_jobs)


class GridInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during the grid: `message` says where the next run resumes; exit with `code`."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message, self.code = message, code


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM sends before it kills a job), raised like Ctrl-C so every cleanup runs."""


_SIGNALLED: list[int] = []  # set by the handler: a cell error raised while stopping is not a cell failure


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGNALLED.append(signum)
    raise _Terminated()


# ---- planning ------------------------------------------------------------------------------------

def plan_grid(grid: Grid, preset: str, config_file: Path | None, set_options: list[str] | None,
              cli_train: dict[str, Any]) -> Grid:
    """Resolve every cell's config (a typo fails fast), then refuse cells made with another config."""
    from ..config.gridkeys import split_grid_keys
    from ..config.overlay import load_config_file, parse_set_options
    from ..config.resolve import resolve_config
    from ..datasets import get_dataset_info
    from ..methods.registry import get_method_spec

    for m in grid.methods:
        get_method_spec(m)
    for d in grid.datasets:
        get_dataset_info(d)
    if grid.source and (grid.source.ann_file or grid.source.image_dir) and len(grid.datasets) > 1:
        raise UserError("--ann-file/--image-dir name one dataset's files; run one dataset at a time")
    file_keys, overrides, opts = split_grid_keys(load_config_file(config_file) if config_file else {},
                                                 parse_set_options(set_options))
    apply_grid_options(grid, opts)
    grid.cfgs = {(m, d, s): resolve_config(m, d, s, preset, file_keys, cli_train, overrides)
                 for d in grid.datasets for m in grid.methods for s in grid.seeds}
    check_out(grid.out)
    for (m, d, s), cfg in grid.cfgs.items():  # a resumed or finished cell must have been run with this config
        preflight(grid_cell(grid.out, d, m, s), cfg, grid.resume, grid.overwrite)
    return grid


def apply_grid_options(grid: Grid, opts: GridOptions) -> None:
    """data.val_split goes into the grid's DataSource (one dataset only: it names that set's images);
    eval.exclude's audit.json is read now, so a bad file fails before any data is loaded."""
    from dataclasses import replace

    from ..datasets import DataSource

    if opts.val_split is not None:
        if len(grid.datasets) > 1:
            raise UserError(f"data.val_split={opts.val_split} names one dataset's val images; "
                            "run one dataset at a time")
        grid.source = replace(grid.source or DataSource(grid.datasets[0]), val_split=opts.val_split)
    if opts.exclude is not None:
        grid.exclude = read_audit(opts.exclude)


def read_audit(path: Path) -> dict[str, Any]:
    """The audit.json of `bench data audit` (eval.exclude), checked enough to be used."""
    from ..io import read_json_object

    audit = read_json_object(path)
    pairs = (audit or {}).get("image_duplicates")
    ok = isinstance(pairs, list) and all(isinstance(p, dict) and isinstance(p.get("a"), dict)
                                         and isinstance(p.get("b"), dict) for p in pairs)
    if audit is None or not ok:
        raise UserError(f"eval.exclude={path}: not an audit.json of `bench data audit` "
                        "(needs an 'image_duplicates' list of {a, b} pairs)")
    return audit


def grid_cell(out: Path, dataset: str, method: str, seed: int) -> Path:
    """The cell folder of a grid entry (the dataset's canonical name, not the alias typed)."""
    from ..datasets import get_dataset_info
    from ..results.layout import cell_dir

    return cell_dir(out, get_dataset_info(dataset).name, method, seed)


def check_out(out: Path) -> None:
    """The results folder exists (created) and is writable."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the results folder ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: results folder is not writable")


def preflight(cell: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Fail before any training if a cell to skip or resume was made with another config."""
    from ..results.cell import is_complete

    if not overwrite and (resume or is_complete(cell)):
        check_cell_config(cell, cfg)


def dataset_source(source: DataSource | None, dataset: str, several: bool) -> DataSource:
    """Where one dataset of the grid is: with several datasets, --data-root may hold one sub-folder each."""
    from ..datasets import DataSource

    return (source or DataSource(dataset)).for_dataset(dataset, several=several)


def load_data(source: DataSource) -> DatasetSplits:
    """Load one dataset; under torchrun rank 0 first generates the default synthetic set if needed."""
    from ..datasets import load_dataset
    from ..datasets.source import default_data_root

    if dist.is_distributed():  # rank 0 generates the default synthetic set; the others then read it
        dist.on_main(default_data_root, source.name, source.data_root, source.ann_file)
    return load_dataset(source)


# ---- running -------------------------------------------------------------------------------------

def run_grid(grid: Grid, device: str, progress: bool) -> list[CellOutcome] | None:
    """Run every cell here, one after another; None on DDP ranks other than 0 (rank 0 reports).
    (`bench run --jobs N`: engine.pool.run_grid_jobs.)

    Ctrl-C and SIGTERM raise GridInterrupted, saying where the next run resumes.
    """
    from .device import pick_device

    dev = dist.setup(pick_device(device))  # under torchrun: one DDP process per GPU/CPU rank
    set_threads(grid.threads, next(iter(grid.cfgs.values()), None), dev)
    rows: list[CellOutcome] = []
    current: dict[str, Any] = {}  # the cell being run, for the one-line note on Ctrl-C / SIGTERM
    clock = RunClock(len(grid.cfgs))  # the progress line between cells
    with stopped_by_signals(current):
        for d in grid.datasets:
            rows += run_dataset(grid, d, dev, progress, current, clock)
    dist.finish()  # every rank is done: close the group together (no-op in a single process)
    return rows if dist.is_main() else None


@contextlib.contextmanager
def stopped_by_signals(current: dict[str, Any]) -> Iterator[None]:
    """SIGTERM is raised like Ctrl-C; either leaves as GridInterrupted, naming where the next run resumes the
    cells in `current` (`cell` + `cfg`, or `running`: {cell: cfg})."""
    import signal

    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except KeyboardInterrupt as e:
        raise _interrupted(e, current) from None
    finally:
        signal.signal(signal.SIGTERM, old_term)


def set_threads(threads: int | None, cfg: RunConfig | None, dev: torch.device, processes: int | None = None) -> int:
    """Set torch's intra-op threads (run.json records them: hardware.torch_threads): `threads` (--threads),
    else this process's share of the usable cores (`processes` share them: DDP ranks by default, or the
    workers of --jobs) minus the DataLoader workers of `cfg` (a cell of the grid)."""
    import torch

    from .device import auto_workers, default_threads

    n = threads
    if n is None:
        workers = auto_workers(cfg.train.num_workers, dev) if cfg else 0
        n = default_threads(workers, dist.world_size() if processes is None else processes)
    torch.set_num_threads(n)
    return n


def open_dataset(grid: Grid, d: str, where: str) -> tuple[DatasetSplits, set[str] | None]:
    """Load one dataset and refuse cells made on other data (before any training); its leaked test images
    under eval.exclude."""
    from ..evaluation.exclusion import leaked_images
    from ..results.layout import cell_dir

    data = load_data(dataset_source(grid.source, d, len(grid.datasets) > 1))
    echo(f"{d}: train {data.train.n_images} / val {data.val.n_images} / test {data.test.n_images} "
         f"images on {where}")
    if data.train.n_images == 0 and any(grid.cfgs[(m, d, s)].train.epochs > 0 for m in grid.methods for s in grid.seeds):
        raise UserError(f"{d}: {data.ann_file} has no train split (it holds test data only); "
                        "evaluate it with --epochs 0, or give a copy with training data")
    if not grid.overwrite:  # a cell to resume or skip must have been made on this data
        for m in grid.methods:
            for s in grid.seeds:
                check_cell_data(cell_dir(grid.out, data.name, m, s), data)
    return data, None if grid.exclude is None else leaked_images(grid.exclude, data.name)


def run_dataset(grid: Grid, d: str, dev: torch.device, progress: bool,
                current: dict[str, Any], clock: RunClock | None = None) -> list[CellOutcome]:
    """Load and check one dataset, then run its cells one after another."""
    from ..results.layout import cell_dir

    data, leaked = open_dataset(grid, d, str(dev))
    rows = []
    for m in grid.methods:
        for s in grid.seeds:
            current.update(cell=cell_dir(grid.out, data.name, m, s), cfg=grid.cfgs[(m, d, s)])
            rows.append(run_one_cell(current["cfg"], data, current["cell"], dev, grid.resume, grid.overwrite,
                                     progress, exclude=leaked, clock=clock))
            if clock is not None and dist.is_main():
                clock.cell_finished(rows[-1].took)
                echo(clock.line(work_left(grid, (m, d, s))))
    current.clear()
    return rows


def work_left(grid: Grid, after: tuple[str, str, int]) -> list[CellWork]:
    """The cells the grid runs after `after` (method, dataset, seed) that will train or evaluate: complete
    cells (to be skipped) are left out, a cell to resume counts its epochs left."""
    order = [(m, d, s) for d in grid.datasets for m in grid.methods for s in grid.seeds]
    left = []
    for m, d, s in order[order.index(after) + 1:]:
        work = cell_work(grid.cfgs[(m, d, s)], grid_cell(grid.out, d, m, s), grid.resume, grid.overwrite)
        if work is not None:
            left.append(work)
    return left


def cell_work(cfg: RunConfig, cell: Path, resume: bool, overwrite: bool) -> CellWork | None:
    """What a cell still has to do: None when it is complete (skipped), else the epochs it will train."""
    from ..results.cell import is_complete

    if overwrite:
        return CellWork(cfg.method, cfg.dataset, cfg.train.epochs)
    if is_complete(cell):
        return None
    done = _resume_point(cell) if resume else 0
    return CellWork(cfg.method, cfg.dataset, max(0, cfg.train.epochs - done))


def _resume_point(cell: Path) -> int:
    """Epochs saved in the cell (rows of train_log.csv, which is written after last.pt); 0 if none."""
    if not (cell / CHECKPOINT_DIR / RESUME_FILE).is_file():
        return 0
    try:
        lines = (cell / TRAIN_LOG).read_text(encoding="utf-8").strip().splitlines()
    except OSError:
        return 0
    return max(0, len(lines) - 1)


def _interrupted(e: KeyboardInterrupt, current: dict[str, Any]) -> GridInterrupted:
    """What was interrupted and where the next run resumes; exit code 143 (SIGTERM) or 130."""
    sig, code = ("SIGTERM", 143) if isinstance(e, _Terminated) else ("Ctrl-C (SIGINT)", 130)
    cells = dict(current.get("running") or {})
    if current.get("cell") is not None:
        cells[current["cell"]] = current["cfg"]
    if not cells:
        return GridInterrupted(f"interrupted by {sig} before any cell started", code)
    notes = []
    for cell, cfg in cells.items():
        n = _resume_point(cell)
        where = f"resumes it from epoch {n} (the last one saved)" if n else "starts it over (no epoch was saved)"
        notes.append(f"while running {cfg.method} on {cfg.dataset}, seed {cfg.seed} ({cell}); the next `bench run` "
                     f"with the same options {where}")
    return GridInterrupted(f"interrupted by {sig} " + "; and ".join(notes), code)


def run_one_cell(cfg: RunConfig, data: DatasetSplits, cell: Path, dev: torch.device, resume: bool,
                 overwrite: bool, show: bool, exclude: set[str] | None = None,
                 clock: RunClock | None = None) -> CellOutcome:
    """One cell under its lock: skip it (finished, or run by another process), or train/resume it.
    `clock`: the run's earlier cells, for the cell's estimated time (else its first steps are timed).

    A failure of this cell alone (diverged, out of memory, refused checkpoint or config) is printed
    and the grid goes on; data and write errors stop the run (they would hit every cell). Under
    torchrun a failed cell stops this process too: an error raised on one rank only (an OOM on one
    GPU) would leave the other ranks waiting in a collective until the timeout, whereas a rank that
    exits makes torchrun stop the others at once. Run the grid again to resume the other cells.
    """
    from ..errors import DataError
    from ..io import WriteError
    from ..locks import cell_lock

    row = CellOutcome(cfg.method, data.name, cfg.seed, "failed")
    lock = cell_lock(cell)
    if not dist.acquire_on_main(lock):  # DDP: rank 0 holds the lock for all ranks
        echo(f"cell {cell} is being run by another process ({lock.describe_owner()}); skipping")
        row.status = "busy"
        return row
    try:
        try:
            _run_locked(row, cfg, data, cell, dev, resume, overwrite, show, exclude, clock)
        except Exception as e:  # Ctrl-C inside C++ code (torch.save) surfaces as its RuntimeError
            interrupt = _interrupt_behind(e)
            if interrupt is not None:
                raise interrupt from None
            raise
    except (DataError, WriteError) as e:
        raise type(e)(one_line(e)) from None
    except UserError as e:
        record_failure(cell, e)  # failed.json, read by `bench status` (written by rank 0)
        if dist.is_distributed():
            raise UserError(f"{cell}: {one_line(e)} (rank {dist.rank()}; the other ranks are stopped)") from None
        echo(f"error: {one_line(e)}", err=True)
        _free_device_memory(dev)
    except Exception as e:  # a bug or an unforeseen error in this cell: record it, go on with the grid
        if dist.is_distributed() or _SIGNALLED:  # a data worker killed by SIGTERM may raise before we see it
            raise
        _record_internal_error(cell, e)
        _free_device_memory(dev)
    finally:
        lock.release()
    return row


def _interrupt_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that an error was raised while handling, if any.

    A signal that arrives while torch.save writes a checkpoint interrupts the zip writer, which then
    raises a RuntimeError of its own: the cell was interrupted, not broken.
    """
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _run_locked(row: CellOutcome, cfg: RunConfig, data: DatasetSplits, cell: Path, dev: torch.device,
                resume: bool, overwrite: bool, show: bool, exclude: set[str] | None = None,
                clock: RunClock | None = None) -> None:
    """Skip a complete cell (after checking it was made with this config and data), else run it."""
    from ..results.cell import cell_damage, clear_failure, is_complete, load_cell

    if is_complete(cell) and not overwrite:
        check_cell_config(cell, cfg)
        check_cell_data(cell, data)
        echo(f"skip {cell} (complete; --overwrite to redo)")
        row.status, row.metrics = "skipped", load_cell(cell).metrics
        row.excluded = _stored_excluded(cell, exclude)
        return
    if dist.is_main():
        if overwrite:
            clear_cell(cell)
        clear_failure(cell)
    damage = None if overwrite else cell_damage(cell)
    if damage:
        echo(f"repair {cell}: {damage}")
    echo(f"run {cfg.method} on {data.name}, seed {cfg.seed} -> {cell}")
    work = cell_work(cfg, cell, resume, overwrite) or CellWork(cfg.method, cfg.dataset, 0)
    note = clock.cell_estimate(work) if clock is not None else None
    if note is not None and dist.is_main():
        echo(note)
    t0 = time.time()
    more: dict[str, Any] = {"exclude": exclude} if exclude is not None else {}
    if note is None:
        more["estimate"] = True  # no earlier cell of its kind: time its first training steps
    res = cell_mod.run_cell(cfg, data, cell, dev, resume=resume, progress=show, log=echo, **more)
    row.status, row.metrics, row.wall = "done", res.metrics, time.time() - t0
    row.excluded = getattr(res, "excluded", None)
    row.took = CellTime(cfg.method, cfg.dataset, getattr(res, "epochs_run", 0), getattr(res, "train_s", 0.0),
                        row.wall)


def _stored_excluded(cell: Path, exclude: set[str] | None) -> dict[str, Any] | None:
    """A skipped cell's metrics_excluded.json when eval.exclude is given (a note when it has none)."""
    from ..io import read_json_object
    from ..results.layout import METRICS_EXCLUDED_FILE

    if exclude is None:
        return None
    rec = read_json_object(cell / METRICS_EXCLUDED_FILE)
    if rec is None:
        echo(f"note: {cell} was completed without eval.exclude; --overwrite to compute its excluded metrics")
    return rec


def record_failure(cell: Path, error: BaseException | str) -> None:
    """The cell's failure marker (results.cell.write_failure), written by rank 0 only under DDP."""
    from ..results.cell import write_failure

    if dist.is_main():
        write_failure(cell, error)


def _record_internal_error(cell: Path, e: Exception) -> None:
    """failed.json with the one-line error, the traceback in <cell>/traceback.txt, one line on stderr."""
    import traceback

    from ..io import write_text

    msg = f"internal error {type(e).__name__}: {one_line(e)}"[:500]
    try:
        write_text(cell / "traceback.txt", "".join(traceback.format_exception(e)))
        msg += f" (traceback in {cell / 'traceback.txt'})"
    except UserError:
        pass
    record_failure(cell, msg)
    echo(f"error: {cell}: {msg}", err=True)


def _free_device_memory(dev: torch.device) -> None:
    import gc

    gc.collect()
    if dev.type == "cuda":
        import torch

        torch.cuda.empty_cache()
