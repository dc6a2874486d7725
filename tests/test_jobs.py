"""`bench run --jobs N` (engine.pool): cells side by side in worker processes, in real `bench run` processes.

The same cells as a sequential run at the workers' thread count, bit for bit; a worker killed mid-cell fails
that cell alone and a rerun resumes it; Ctrl-C stops every worker and names each cell's resume point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import start_bench

from rsbench.results.cell import is_complete

BENCH = str(Path(sys.executable).with_name("bench"))
TINY = ["--methods", "vsepp", "--dataset", "synthetic", "--device", "cpu", "--seeds", "0,1",
        "--set", "train.sampling=image", "--set", "train.image_size=32", "--set", "train.batch_size=8",
        "--set", "backbone=test_resnet", "--set", "embed_dim=32", "--set", "hidden_dim=32", "--set", "word_dim=16",
        "--set", "train.checkpoint_every_s=0"]  # a checkpoint every epoch: a killed cell has one to resume from

pytestmark = pytest.mark.slow


def bench(data: Path, out: Path, *extra: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "RSBENCH_CACHE": str(out.parent / "cache")}
    env.pop("OMP_NUM_THREADS", None)  # the workers' share of the cores is what is tested
    argv = [BENCH, "run", *TINY, "--data-root", str(data), "--out", str(out), *extra]
    return start_bench(argv, env, wait)


def cell(out: Path, seed: int) -> Path:
    return out / "synthetic" / "vsepp" / f"seed{seed}"


def wait_for_epochs(proc: subprocess.Popen, out: Path, seeds: tuple[int, ...], epochs: int = 1) -> None:
    """Until each cell's train_log.csv shows `epochs` saved epochs (the run must still be going)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        logs = [cell(out, s) / "train_log.csv" for s in seeds]
        if all(p.is_file() and len(p.read_text().strip().splitlines()) > epochs for p in logs):
            return
        time.sleep(0.1)
    raise AssertionError(f"no saved epoch in time: {proc.communicate()}")


def holder_pid(out: Path, seed: int) -> int:
    return int(json.loads((out / "synthetic" / "vsepp" / f".seed{seed}.lock.owner").read_text())["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_jobs_give_the_cells_of_a_sequential_run_at_the_workers_thread_count(tiny_synthetic, tmp_path):
    from rsbench.engine.device import usable_cpus

    par = bench(tiny_synthetic, tmp_path / "par", "--epochs", "2", "--jobs", "2")
    assert par.returncode == 0, par.stderr
    share = max(1, usable_cpus() // 2)  # no DataLoader workers on a CPU of <= 2 cores; else fix them below
    threads = json.loads((cell(tmp_path / "par", 0) / "run.json").read_text())["hardware"]["torch_threads"]
    assert threads == share or usable_cpus() > 2
    seq = bench(tiny_synthetic, tmp_path / "seq", "--epochs", "2", "--threads", str(threads))
    assert seq.returncode == 0, seq.stderr
    for s in (0, 1):
        a, b = cell(tmp_path / "seq", s), cell(tmp_path / "par", s)
        assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
        with np.load(a / "ranks.npz") as x, np.load(b / "ranks.npz") as y:
            assert all(np.array_equal(x[k], y[k]) for k in x.files)
        assert f"[vsepp/synthetic/seed{s}]   epoch 2/2" in par.stdout  # each worker line names its cell
    assert "(2 cells at a time)" in par.stdout and "[2/2 cells |" in par.stdout
    assert par.stdout.count("test mR") == 1 and "FAILED" not in par.stdout


def test_a_killed_worker_fails_its_cell_alone_and_a_rerun_resumes_it(tiny_synthetic, tmp_path):
    out = tmp_path / "out"
    proc = bench(tiny_synthetic, out, "--epochs", "40", "--jobs", "2", wait=False)
    wait_for_epochs(proc, out, (0,))
    worker = holder_pid(out, 0)
    assert worker != proc.pid
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr
    msg = "the worker process running this cell died (killed by signal 9); run again to resume it"
    assert f"error: {cell(out, 0)}: {msg}" in stderr
    assert json.loads((cell(out, 0) / "failed.json").read_text())["error"] == msg
    assert not is_complete(cell(out, 0)) and is_complete(cell(out, 1))
    assert "FAILED" in stdout and "[2/2 cells |" in stdout
    again = bench(tiny_synthetic, out, "--epochs", "40", "--jobs", "2")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout and f"skip {cell(out, 1)}" in again.stdout
    assert is_complete(cell(out, 0)) and not (cell(out, 0) / "failed.json").exists()


def test_ctrl_c_stops_every_worker_and_names_each_cells_resume_point(tiny_synthetic, tmp_path):
    out = tmp_path / "out"
    proc = bench(tiny_synthetic, out, "--epochs", "300", "--jobs", "2", wait=False)
    wait_for_epochs(proc, out, (0, 1))
    workers = [holder_pid(out, s) for s in (0, 1)]
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("interrupted by Ctrl-C (SIGINT) while running vsepp on synthetic")
    assert lines[0].count("resumes it from epoch") == 2 and "seed0" in lines[0] and "seed1" in lines[0]
    assert not any(alive(p) for p in workers)


def test_worker_devices_take_one_gpu_each_where_there_are_several(monkeypatch):
    import torch

    from rsbench.engine.pool import worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [worker_device("auto", i) for i in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    assert worker_device("cuda", 1) == "cuda:1"
    assert worker_device("cuda:2", 0) == "cuda:2" and worker_device("cpu", 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_device("auto", 1) == "auto"


def test_jobs_under_torchrun_are_refused(monkeypatch, tmp_path):
    from rsbench.engine.grid import Grid
    from rsbench.engine.pool import run_grid_jobs
    from rsbench.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    grid = Grid(methods=["vsepp"], datasets=["synthetic"], seeds=[0], cfgs={}, out=tmp_path, jobs=2)
    with pytest.raises(UserError, match="under torchrun each cell already uses every rank: drop --jobs"):
        run_grid_jobs(grid, "cpu")
