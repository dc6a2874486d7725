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
import time
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

from .cellfolder import FAILED_FILE, clear_failure, record_failure  # noqa: F401  (clear_failure: re-export)

LAUNCHERS = ("local", "slurm", "submitit-local")
JOBS_FILE = ".jobs.json"


# ---- config round trip ---------------------------------------------------------------------------

def _fill(obj: Any, values: dict[str, Any]) -> Any:
    """Set a dataclass instance's fields from a dict (recursing into nested dataclasses)."""
    for f in fields(obj):
        if f.name not in values:
            continue
        cur, new = getattr(obj, f.name), values[f.name]
        if is_dataclass(cur) and isinstance(new, dict):
            _fill(cur, new)
        else:
            setattr(obj, f.name, new)
    return obj


def config_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild a RunConfig from `to_dict(cfg)` (what a job receives)."""
    from ..config.schema import RunConfig, TrainConfig
    from ..methods.registry import get_method_spec

    spec = get_method_spec(d["method"])
    cfg = RunConfig(method=d["method"], dataset=d["dataset"], seed=int(d["seed"]), preset=d["preset"],
                    train=_fill(TrainConfig(), d.get("train") or {}),
                    model=_fill(spec.config_cls(), d.get("model") or {}))
    return cfg


# ---- the job -------------------------------------------------------------------------------------

@dataclass
class DataArgs:
    """Where one dataset's files are (plain values, picklable)."""

    name: str
    data_root: str | None = None
    ann_file: str | None = None
    image_dir: str | None = None


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


def run_cell_job(cfg: dict[str, Any], data: dict[str, Any], out: str, device: str = "auto",
                 resume: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run one cell exactly as `bench run` does locally; returns {"cell", "status", "mR"}.

    cfg: `to_dict(RunConfig)`; data: `DataArgs` fields as a dict. Any error is recorded in the cell's
    failed.json (and re-raised, so the scheduler marks the job failed).
    """
    from . import distributed as dist
    from .device import pick_device
    from .grid import load_data, run_one_cell
    from ..results.cell import cell_dir

    _export_submitit_dist_env()
    run_cfg = config_from_dict(cfg)
    args = DataArgs(**data)
    cell = cell_dir(out, args.name, run_cfg.method, run_cfg.seed)
    try:
        dev = dist.setup(pick_device(device))
        ds = load_data(run_cfg.dataset, _path(args.data_root), _path(args.ann_file), _path(args.image_dir))
        cell = cell_dir(out, ds.name, run_cfg.method, run_cfg.seed)
        row = run_one_cell(run_cfg, ds, cell, dev, resume, overwrite, False)
        dist.finish()
    except Exception as e:  # a timeout/preemption (signal, SystemExit) leaves the cell incomplete instead
        record_failure(cell, e)
        raise
    if row.status == "failed" and not (cell / FAILED_FILE).exists():
        record_failure(cell, "failed (see the job's log)")
    return {"cell": str(cell), "status": row.status, "mR": row.metrics.get("mR")}


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None


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
    """One cell to submit: its resolved config (as a dict) and its data arguments."""

    cfg: dict[str, Any]
    data: dict[str, Any]
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
                slurm_folder: Path | None = None, cpus_per_task: int | None = None) -> list[Any]:
    """Submit one job per cell; record the job ids in `<out>/.jobs.json`; return the submitit jobs."""
    folder = submitit_folder(out, slurm_folder)
    ex = make_executor(launcher, folder, partition, gpus_per_job, parse_time(time_limit), cpus_per_task)
    jobs = []
    try:
        for spec in specs:
            jobs.append(ex.submit(run_cell_job, spec.cfg, spec.data, str(out), device, resume, overwrite))
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:  # sbatch refused: one line
        record_jobs(out, [(s.cell, j.job_id) for s, j in zip(specs, jobs)], launcher, folder)
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f"job submission failed after {len(jobs)} of {len(specs)} cell(s): "
                        f"{lines[-1] if lines else type(e).__name__}") from None
    record_jobs(out, [(s.cell, j.job_id) for s, j in zip(specs, jobs)], launcher, folder)
    return jobs


def record_jobs(out: Path, entries: list[tuple[Path, str]], launcher: str, folder: Path) -> None:
    """Merge {cell (relative to out): {job_id, launcher, folder, submitted}} into `<out>/.jobs.json`."""
    from ..io import read_json, write_json
    from ..locks import PathLock

    lock = PathLock(out / ".jobs.lock")
    if not lock.acquire(timeout=60):
        return
    try:
        path = out / JOBS_FILE
        try:
            known = read_json(path) if path.is_file() else {}
        except (OSError, ValueError, UserError):
            known = {}
        known = known if isinstance(known, dict) else {}
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for cell, job_id in entries:
            known[str(Path(cell).relative_to(out))] = {"job_id": str(job_id), "launcher": launcher,
                                                        "folder": str(folder), "submitted": now}
        write_json(path, known)
    finally:
        lock.release()


def read_jobs(out: Path) -> dict[str, dict[str, Any]]:
    """What `record_jobs` wrote ({} when nothing was submitted)."""
    import json

    try:
        data = json.loads((Path(out) / JOBS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def submit_from_cli(launcher: str, cfgs: dict[tuple[str, str, int], Any], out: Path, data_root: Path | None,
                    ann_file: Path | None, image_dir: Path | None, device: str, resume: bool, overwrite: bool,
                    partition: str | None, gpus_per_job: int, time_limit: str,
                    slurm_folder: Path | None) -> None:
    """`bench run --launcher slurm|submitit-local`: submit the grid; wait for local jobs, print SLURM ids."""
    from ..config.schema import to_dict
    from .grid import dataset_root, echo, grid_cell, update_leaderboard

    if launcher not in LAUNCHERS:
        raise UserError(f"unknown --launcher '{launcher}'; choose from: local, slurm")
    if gpus_per_job < 0:
        raise UserError(f"--gpus-per-job {gpus_per_job}: must be >= 0")
    out = out.resolve()  # jobs may start in another working directory
    datasets = sorted({d for _, d, _ in cfgs})
    specs = []
    for (m, d, s), cfg in cfgs.items():
        data = DataArgs(d, _abs(dataset_root(data_root, d, len(datasets) > 1)), _abs(ann_file), _abs(image_dir))
        specs.append(JobSpec(to_dict(cfg), data.__dict__, grid_cell(out, d, m, s)))
    cpus = os.environ.get("RSBENCH_SLURM_CPUS_PER_TASK", "")
    if cpus and not cpus.isdigit():
        raise UserError(f"RSBENCH_SLURM_CPUS_PER_TASK='{cpus}': expected a whole number")
    jobs = submit_grid(launcher, specs, out, device=device, resume=resume, overwrite=overwrite,
                       partition=partition, gpus_per_job=gpus_per_job, time_limit=time_limit,
                       slurm_folder=slurm_folder, cpus_per_task=int(cpus) if cpus else None)
    for spec, job in zip(specs, jobs):
        echo(f"submitted job {job.job_id}: {spec.cell}")
    if launcher == "submitit-local":
        failed = wait_and_report(jobs, echo)
        update_leaderboard(out)
        if failed:
            raise SystemExit(2)
    else:
        echo(f"{len(jobs)} job(s) submitted; follow them with `bench status {out}` "
                   f"(logs in {submitit_folder(out, slurm_folder)})")


def _abs(p: Path | None) -> str | None:
    return str(Path(p).resolve()) if p is not None else None
