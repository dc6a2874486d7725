"""`bench run --jobs N`: the cells of a local grid in N worker processes at once.

Why: small models use two or more cores poorly (a VSE++ cell on the synthetic set runs 1.37x faster on
2 threads than on 1), so two cells side by side, one thread each, finish a grid sooner than one cell at
a time on both; and on a machine with several GPUs each worker takes its own GPU.

Each worker is a spawned process that runs cells through the same `engine.grid.run_one_cell` as a
sequential run (cell lock, skip if complete, resume, failure marker), with the cores split between the
workers (`--threads` sets each worker's). The parent plans, loads each dataset to check it, hands out one
cell at a time, prints the progress line and the summary. A worker that dies (killed, out of memory) fails
its cell, not the grid: the cell keeps its last checkpoint and a new worker goes on with the others.
Ctrl-C / SIGTERM stop every worker (a kill is safe: every file is written atomically) and say where the
next run resumes. Lines a worker prints start with its cell (`[msa/synthetic/seed0]`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from . import grid as grid_mod  # the same cell runner as a sequential run (grid never imports this module)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess

    from ..datasets import DataSource
    from .grid import CellOutcome, Grid


@dataclass(frozen=True)
class CellTask:
    """One cell for a worker: picklable plain data (the config as a dict, the dataset's source)."""

    key: tuple[str, str, int]  # (method, dataset, seed), as in Grid.cfgs
    cfg: dict[str, Any]
    source: DataSource
    cell: Path
    exclude: frozenset[str] | None = None


@dataclass
class Worker:
    """A worker process, the parent's end of its pipe, and the task it is running (None: idle)."""

    index: int
    proc: SpawnProcess
    conn: Connection
    task: CellTask | None = None


@dataclass
class _Run:
    """What the parent tracks while the pool works."""

    left: list[CellTask]
    rows: dict[tuple[str, str, int], CellOutcome] = field(default_factory=dict)
    stop: str | None = None  # a data or write error: no new cell starts, the run fails with it


def worker_device(device: str, index: int) -> str:
    """The device of worker `index`: with `auto`/`cuda` and several GPUs, its own GPU (round robin)."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{index % torch.cuda.device_count()}"
    return device


def _worker_main(index: int, device: str, jobs: int, threads: int | None, resume: bool, overwrite: bool,
                 conn: Connection) -> None:
    """A worker: run the cells it is given until it gets None. Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not tqdm's default semaphore, which a killed worker would leave behind
    from ..config.schema import RunConfig
    from ..errors import DataError, one_line
    from ..io import WriteError
    from .device import pick_device

    dev = pick_device(worker_device(device, index))
    data: dict[DataSource, Any] = {}
    while (task := conn.recv()) is not None:
        grid_mod.ECHO_PREFIX[0] = f"[{task.key[0]}/{task.cell.parent.parent.name}/seed{task.key[2]}] "
        cfg = RunConfig.from_dict(task.cfg)
        try:
            grid_mod.set_threads(threads, cfg, dev, processes=jobs)
            if task.source not in data:
                data = {task.source: grid_mod.load_data(task.source)}  # one dataset held at a time
            row = grid_mod.run_one_cell(cfg, data[task.source], task.cell, dev, resume, overwrite, False,
                                        exclude=set(task.exclude) if task.exclude is not None else None)
            conn.send((row, None))
        except (DataError, WriteError) as e:  # would hit every cell: the run stops
            conn.send((None, one_line(e)))
        except Exception as e:  # noqa: BLE001 (the parent reports it and stops the run)
            conn.send((None, f"{task.cell}: internal error {type(e).__name__}: {one_line(e)}"))


def run_grid_jobs(grid: Grid, device: str) -> list[CellOutcome]:
    """`bench run --jobs N`: check every dataset here, then run the cells in N worker processes. Ctrl-C and
    SIGTERM raise GridInterrupted, naming every running cell's resume point."""
    from ..config.overlay import to_dict
    from . import distributed as dist
    from .device import pick_device
    from .grid import cell_work, dataset_source, echo, grid_cell, open_dataset, stopped_by_signals
    from .progress import RunClock

    if dist.env_world_size() > 1:
        raise UserError(f"--jobs {grid.jobs} runs cells side by side in one process tree; under torchrun each "
                        "cell already uses every rank: drop --jobs")
    where = f"{pick_device(device)} ({grid.jobs} cells at a time)"
    current: dict[str, Any] = {"running": {}}  # cell -> config of the cells being run (for an interrupt)
    tasks: list[CellTask] = []
    with stopped_by_signals(current):
        for d in grid.datasets:
            _, leaked = open_dataset(grid, d, where)
            source = dataset_source(grid.source, d, len(grid.datasets) > 1)
            tasks += [CellTask((m, d, s), to_dict(grid.cfgs[(m, d, s)]), source, grid_cell(grid.out, d, m, s),
                               None if leaked is None else frozenset(leaked))
                      for m in grid.methods for s in grid.seeds]
        clock, finished = RunClock(len(tasks), parallel=grid.jobs), set()

        def on_finished(key: tuple[str, str, int], row: CellOutcome) -> None:
            finished.add(key)
            clock.cell_finished(row.took)
            left = [w for t in tasks if t.key not in finished
                    for w in [cell_work(grid.cfgs[t.key], t.cell, grid.resume, grid.overwrite)] if w is not None]
            echo(clock.line(left))

        return run_pool(grid, tasks, device, grid.jobs, current["running"], on_finished)


def run_pool(grid: Grid, tasks: list[CellTask], device: str, jobs: int, running: dict[Path, Any],
             on_finished: Callable[[tuple[str, str, int], CellOutcome], None]) -> list[CellOutcome]:
    """Run `tasks` on `jobs` workers; the outcomes in the grid's order. `running` (cell -> config) always
    holds the cells being run, for the note on an interrupt. Raises UserError on a data or write error,
    after stopping the workers (and lets KeyboardInterrupt through, likewise)."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("spawn")  # a fork of a process that ran torch threads can hang
    run = _Run(left=list(tasks))
    workers: list[Worker] = []

    def start(index: int) -> Worker:
        here, there = ctx.Pipe()  # pipes, not queues: nothing a killed worker can leave locked
        proc = ctx.Process(target=_worker_main, name=f"rsbench-cell-worker-{index}", daemon=True,
                           args=(index, device, jobs, grid.threads, grid.resume, grid.overwrite, there))
        proc.start()
        there.close()
        return Worker(index, proc, here)

    def hand_out(w: Worker) -> None:
        if w.task is not None:
            running.pop(w.task.cell, None)
        w.task = run.left.pop(0) if run.left and run.stop is None else None
        if w.task is not None:
            running[w.task.cell] = grid.cfgs[w.task.key]
        try:
            w.conn.send(w.task)
        except OSError:  # it died since its last answer: wait() sees its end and fails the task
            pass

    try:
        for i in range(min(jobs, len(tasks))):
            workers.append(start(i))
            hand_out(workers[-1])
        while run.stop is None and (busy := [w for w in workers if w.task is not None]):
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
            for k, w in enumerate(workers):
                if w.task is None or not (w.conn in ready or w.proc.sentinel in ready):
                    continue
                try:
                    row, error = w.conn.recv()
                except EOFError:  # exited without an answer: killed, out of memory
                    _worker_died(w, run, on_finished)
                    running.pop(w.task.cell, None)
                    w.conn.close()
                    workers[k] = start(w.index)
                    hand_out(workers[k])
                    continue
                if error is not None:
                    run.stop = run.stop or error
                else:
                    run.rows[w.task.key] = row
                    on_finished(w.task.key, row)
                hand_out(w)
    finally:
        _stop_all(workers)
    if run.stop is not None:
        raise UserError(run.stop)
    return [run.rows[t.key] for t in tasks if t.key in run.rows]


def _worker_died(w: Worker, run: _Run, on_finished: Callable[[tuple[str, str, int], CellOutcome], None]) -> None:
    """A worker died in a cell (killed, out of memory): that cell fails; its checkpoint stays for a resume."""
    from .grid import CellOutcome, echo, record_failure

    task = w.task
    assert task is not None
    w.proc.join(timeout=10)  # its pipe closes as it dies; its exit status comes a moment later
    code = w.proc.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    msg = f"the worker process running this cell died ({how}); run again to resume it"
    record_failure(task.cell, msg)
    echo(f"error: {task.cell}: {msg}", err=True)
    row = CellOutcome(task.key[0], task.cell.parent.parent.name, task.key[2], "failed")
    run.rows[task.key] = row
    on_finished(task.key, row)


def _stop_all(workers: list[Worker]) -> None:
    """Idle workers have been sent None and exit; busy ones (an interrupt, an error elsewhere) are killed:
    their cells resume from their last checkpoint."""
    for w in workers:
        if w.task is not None and w.proc.is_alive():
            w.proc.kill()
    deadline = time.monotonic() + 10
    for w in workers:
        w.proc.join(timeout=max(0.1, deadline - time.monotonic()))
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join()
        w.conn.close()
