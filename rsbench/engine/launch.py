"""Launchers for a grid of cells: here one after another (`local`), or one submitit job per cell (`slurm`,
and `submitit-local`, the same submission path run on this machine, for tests and dry runs).

A job runs `run_cell_job`, a picklable top-level function taking plain arguments, which calls the same
`engine.grid.run_one_cell` (cell lock, skip complete, resume, run_cell) as a local run. With N > 1 GPUs per job the job
has N tasks (one process per GPU); each task exports the torch.distributed environment from submitit
(`TorchDistributedEnvironment`) and joins the DDP run of its cell (see rsbench.engine.distributed).
A cell that raised leaves `failed.json` (one-line message) in its folder; submitted job ids are
recorded in `<out>/.jobs.json`. Both are read by `bench status`.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..datasets import DataSource

LAUNCHERS = ("local", "slurm", "submitit-local")


# ---- the job -------------------------------------------------------------------------------------

def _export_submitit_dist_env() -> None:
    """Inside a submitit job with several tasks: set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK."""
    try:
        import submitit
    except ImportError:
        return
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def run_cell_job(cfg: dict[str, Any], source: DataSource, out: str, device: str = "auto",
                 resume: bool = True, overwrite: bool = False, threads: int | None = None,
                 command: list[str] | None = None) -> dict[str, Any]:
    """Run one cell exactly as `bench run` does locally; returns {"cell", "status", "mR"}.

    cfg: `to_dict(RunConfig)`; source: the cell's dataset with absolute paths (a frozen, picklable
    DataSource). threads: `bench run --threads` (None: the same default as a local run, from the job's
    cores). command: the `bench run` command line, which run.json records instead of the job's own.
    Any error is recorded in the cell's failed.json (and re-raised, so the scheduler marks the job failed).
    """
    import sys

    from ..config.schema import RunConfig
    from ..results.cell import read_failure
    from ..results.layout import cell_dir
    from . import distributed as dist
    from .device import pick_device
    from .grid import load_data, record_failure, run_one_cell, set_threads

    _export_submitit_dist_env()
    run_cfg = RunConfig.from_dict(cfg)
    cell = cell_dir(out, source.name, run_cfg.method, run_cfg.seed)
    argv = sys.argv
    sys.argv = list(command or argv)  # run.json's "command" (results.cell.run_record reads sys.argv)
    try:
        dev = dist.setup(pick_device(device))
        set_threads(threads, run_cfg, dev)  # as run_grid
        ds = load_data(source)
        cell = cell_dir(out, ds.name, run_cfg.method, run_cfg.seed)
        row = run_one_cell(run_cfg, ds, cell, dev, resume, overwrite, False)
        dist.finish()
    except Exception as e:  # a timeout/preemption (signal, SystemExit) leaves the cell incomplete instead
        record_failure(cell, e)
        raise
    finally:
        sys.argv = argv
    if row.status == "failed" and read_failure(cell) is None:
        record_failure(cell, "failed (see the job's log)")
    return {"cell": str(cell), "status": row.status, "mR": row.metrics.get("mR")}


# ---- submission ----------------------------------------------------------------------------------

def parse_time(value: str) -> int:
    """A SLURM time limit -> minutes: '90' (minutes), 'MM:SS', 'H:MM:SS', 'D-H', 'D-H:MM', 'D-H:MM:SS',
    or '2h' / '30m'."""
    v = value.strip().lower()
    try:
        if v[-1:] in ("h", "m") and v[:-1].isdigit():
            return int(v[:-1]) * (60 if v[-1] == "h" else 1)
        days = 0
        if "-" in v:
            d, v = v.split("-", 1)
            days = int(d)
            h, mi, sec = ([int(x) for x in v.split(":")] + [0, 0])[:3]
        else:
            parts = [int(x) for x in v.split(":")]
            if len(parts) > 3:
                raise ValueError(v)
            h, mi, sec = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    except (ValueError, KeyError):
        raise UserError(f"--time '{value}': expected minutes (90), H:MM:SS (4:00:00), D-H:MM:SS, 2h or 30m") from None
    total = days * 1440 + h * 60 + mi + (1 if sec else 0)
    if total <= 0:
        raise UserError(f"--time '{value}': must be at least one minute")
    return total


@dataclass
class JobSpec:
    """One cell to submit: its resolved config (as a dict) and where its dataset is."""

    cfg: dict[str, Any]
    source: DataSource
    cell: Path


def make_executor(launcher: str, folder: Path, partition: str | None, gpus_per_job: int, time_min: int,
                  cpus_per_task: int | None = None) -> Any:
    """A submitit executor: SLURM (one node, `gpus_per_job` tasks of one GPU each) or the local one."""
    import submitit

    if launcher == "slurm":
        if not partition:
            raise UserError("--launcher slurm needs --partition")
        if not (shutil.which("sbatch") and shutil.which("srun")):
            raise UserError("--launcher slurm: SLURM not found here (no sbatch/srun on PATH); run this on the "
                            "cluster's login node, or use --launcher local")
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {"slurm_partition": partition}
    elif launcher == "submitit-local":
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        params = {}
    else:
        raise UserError(f"unknown launcher '{launcher}'; choose from: {', '.join(LAUNCHERS)}")
    tasks = max(1, gpus_per_job)
    params.update(name="rsbench", timeout_min=time_min, nodes=1, tasks_per_node=tasks,
                  gpus_per_node=gpus_per_job)
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    ex.update_parameters(**params)
    return ex


def submitit_folder(out: Path, slurm_folder: Path | None) -> Path:
    """The folder for submitit's pickles and logs: `--slurm-folder`, default `<out>/.submitit-<uid>`.

    Why private: a submitted job unpickles what lies in this folder, so anyone who can write there
    runs code as the submitter. The folder is created with mode 0700; an existing one is refused
    unless it is owned by this user and closed to group and others.
    """
    folder = Path(slurm_folder) if slurm_folder else Path(out) / f".submitit-{os.getuid()}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
    except OSError as e:
        raise UserError(f"{folder}: cannot create the job folder ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{folder}: job folder is not a plain folder (a symlink or a file)")
    if st.st_uid != os.getuid():
        raise UserError(f"{folder}: job folder is owned by uid {st.st_uid}, not you (uid {os.getuid()}); jobs "
                        "unpickle what is in it: use a folder of your own (--slurm-folder)")
    if st.st_mode & 0o077:
        raise UserError(f"{folder}: job folder has mode {st.st_mode & 0o777:o}, open to other users; jobs "
                        f"unpickle what is in it: chmod 700 {folder} or pass another --slurm-folder")
    return folder


def submit_grid(launcher: str, specs: list[JobSpec], out: Path, *, device: str, resume: bool, overwrite: bool,
                partition: str | None = None, gpus_per_job: int = 1, time_limit: str = "240",
                slurm_folder: Path | None = None, cpus_per_task: int | None = None,
                threads: int | None = None) -> list[Any]:
    """Submit one job per cell; record the job ids in `<out>/.jobs.json`; return the submitit jobs.
    Each job gets `threads` and this process's command line (run.json records both, as in a local run)."""
    import sys

    from ..results.scan import record_jobs

    folder = submitit_folder(out, slurm_folder)
    ex = make_executor(launcher, folder, partition, gpus_per_job, parse_time(time_limit), cpus_per_task)
    jobs = []
    try:
        for spec in specs:
            jobs.append(ex.submit(run_cell_job, spec.cfg, spec.source, str(out), device, resume, overwrite,
                                  threads, list(sys.argv)))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:  # sbatch refused: one line
        record_jobs(out, [(s.cell, j.job_id) for s, j in zip(specs, jobs)], launcher, folder)
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"job submission failed after {len(jobs)} of {len(specs)} cell(s): "
                        f"{lines[-1] if lines else type(e).__name__}") from None
    record_jobs(out, [(s.cell, j.job_id) for s, j in zip(specs, jobs)], launcher, folder)
    return jobs


def wait_and_report(jobs: list[Any], echo: Any = print) -> int:
    """Wait for (local) jobs; echo one line per job; return the number that failed."""
    failed = 0
    for job in jobs:
        try:
            res = job.results()[0]  # task 0 (rank 0) of a multi-GPU job reports
            echo(f"job {job.job_id}: {res['status']} {res['cell']}"
                 + (f" (test mR {res['mR']:.2f})" if isinstance(res.get("mR"), float) else ""))
            failed += res["status"] == "failed"
        except Exception as e:  # noqa: BLE001 (a failed job: report it and go on)
            failed += 1
            last = [s for s in str(e).strip().splitlines() if s.strip()]
            echo(f"job {job.job_id}: FAILED ({last[-1] if last else type(e).__name__})")
    return failed


def submit_from_cli(launcher: str, cfgs: dict[tuple[str, str, int], Any], out: Path, source: DataSource | None,
                    device: str, resume: bool, overwrite: bool, partition: str | None, gpus_per_job: int,
                    time_limit: str, slurm_folder: Path | None, threads: int | None = None) -> None:
    """`bench run --launcher slurm|submitit-local`: submit the grid; wait for local jobs, print SLURM ids.

    `source` is the grid's (engine.grid.Grid.source): each job gets its dataset's, with absolute paths."""
    from ..config.overlay import to_dict
    from ..results.leaderboard import update_leaderboard
    from .grid import dataset_source, echo, grid_cell

    if launcher not in LAUNCHERS:
        raise UserError(f"unknown --launcher '{launcher}'; choose from: {', '.join(LAUNCHERS)}")
    if gpus_per_job < 0:
        raise UserError(f"--gpus-per-job {gpus_per_job}: must be >= 0")
    out = out.resolve()  # jobs may start in another working directory
    several = len({d for _, d, _ in cfgs}) > 1
    specs = [JobSpec(to_dict(cfg), dataset_source(source, d, several).absolute(), grid_cell(out, d, m, s))
             for (m, d, s), cfg in cfgs.items()]
    cpus = os.environ.get("RSBENCH_SLURM_CPUS_PER_TASK", "")
    if cpus and not cpus.isdigit():
        raise UserError(f"RSBENCH_SLURM_CPUS_PER_TASK='{cpus}': expected a whole number")
    jobs = submit_grid(launcher, specs, out, device=device, resume=resume, overwrite=overwrite,
                       partition=partition, gpus_per_job=gpus_per_job, time_limit=time_limit,
                       slurm_folder=slurm_folder, cpus_per_task=int(cpus) if cpus else None, threads=threads)
    for spec, job in zip(specs, jobs):
        echo(f"submitted job {job.job_id}: {spec.cell}")
    if launcher == "submitit-local":
        failed = wait_and_report(jobs, echo)
        ok, line = update_leaderboard(out)
        echo(line, err=not ok)
        if failed or not ok:
            raise SystemExit(2)
    else:
        echo(f"{len(jobs)} job(s) submitted; follow them with `bench status {out}` "
             f"(logs in {submitit_folder(out, slurm_folder)})")
