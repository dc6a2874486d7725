"""Cluster grids without a cluster: submitit's local executor runs a 2-cell grid through the SLURM
submission path; `bench status` tells done, running, failed, incomplete and queued cells apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli as bench

from rsbench import io as rio

TINY_ARGS = ["--epochs", "1", "--batch-size", "8", "--preset", "small", "--device", "cpu"] + [
    a for kv in ("train.sampling=image", "train.image_size=32", "backbone=test_resnet", "embed_dim=32", "hidden_dim=32", "word_dim=16")
    for a in ("--set", kv)]


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def syn(tiny_synthetic: Path) -> Path:
    return tiny_synthetic


def test_parse_time() -> None:
    from rsbench.engine.launch import parse_time
    from rsbench.errors import UserError

    assert [parse_time(v) for v in ("90", "4:00:00", "1-12:00:00", "2h", "30m", "10:30")] == \
        [90, 240, 2160, 120, 30, 11]
    with pytest.raises(UserError, match="--time"):
        parse_time("soon")


def test_config_round_trip() -> None:
    from rsbench.config.overlay import to_dict
    from rsbench.config.resolve import resolve_config
    from rsbench.config.schema import RunConfig

    cfg = resolve_config("vsepp", "synthetic", 3, "small", {}, {"epochs": 2}, {"embed_dim": "32"})
    assert RunConfig.from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_slurm_needs_partition(tmp_path, capsys) -> None:
    code, _, err = bench(["run", "--methods", "vsepp", "--dataset", "synthetic", "--out", str(tmp_path / "r"),
                          "--launcher", "slurm"], capsys)
    assert code == 2 and "--partition" in err


@pytest.mark.slow
def test_submitit_local_grid_runs_both_cells(syn, tmp_path, capsys) -> None:
    out = tmp_path / "res"
    code, stdout, err = bench(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn),
                               "--out", str(out), "--seeds", "0,1", "--launcher", "submitit-local", *TINY_ARGS],
                              capsys)
    assert code == 0, stdout + err
    for s in (0, 1):
        assert (out / "synthetic" / "vsepp" / f"seed{s}" / "metrics.json").is_file()
    jobs = json.loads((out / ".jobs.json").read_text())
    assert set(jobs) == {"synthetic/vsepp/seed0", "synthetic/vsepp/seed1"}
    code, stdout, _ = bench(["status", str(out)], capsys)
    assert code == 0
    for rel, info in jobs.items():
        line = next(ln for ln in stdout.splitlines() if ln.split()[:3] == ["synthetic", "vsepp", rel[-1]])
        assert " done " in line and info["job_id"] in line
    # resubmitting is safe: both cells are skipped as complete
    code, stdout, err = bench(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn),
                               "--out", str(out), "--seeds", "0,1", "--launcher", "submitit-local", *TINY_ARGS],
                              capsys)
    assert code == 0 and stdout.count(": skipped ") == 2, stdout + err


@pytest.mark.slow
def test_status_states(syn, tmp_path, capsys) -> None:
    from rsbench.locks import cell_lock
    from rsbench.results.scan import record_jobs

    out = tmp_path / "res"
    base = ["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn), "--out", str(out),
            *TINY_ARGS]
    # seed 0: killed during the test evaluation, after epoch 1 was saved -> incomplete
    env = {**os.environ, rio.KILL_ENV: "eval:test"}
    r = subprocess.run([sys.executable, "-m", "rsbench.cli", *base, "--seeds", "0"], env=env, check=False,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    # seed 1: diverges -> failed.json with the one-line error
    code, _, err = bench([*base, "--seeds", "1", "--set", "train.lr=1e30"], capsys)
    assert code == 2 and "error:" in err
    assert (out / "synthetic" / "vsepp" / "seed1" / "failed.json").is_file()
    # seed 2: submitted, not started; seed 3: running (its lock is held)
    record_jobs(out, [(out / "synthetic" / "vsepp" / "seed2", "4242")], "slurm", out / ".submitit")
    lock = cell_lock(out / "synthetic" / "vsepp" / "seed3")
    assert lock.acquire()
    try:
        code, stdout, _ = bench(["status", str(out)], capsys)
    finally:
        lock.release()
    assert code == 0
    states = {int(ln.split()[2]): ln for ln in stdout.splitlines() if ln.startswith("synthetic")}
    assert "incomplete" in states[0] and "will resume" in states[0]
    assert "failed" in states[1] and "non-finite" in states[1]
    assert "queued" in states[2] and "4242" in states[2]
    assert "running" in states[3] and f"pid {os.getpid()}" in states[3]
    # the interrupted cell resumes and completes; status then says done
    code, stdout, err = bench([*base, "--seeds", "0"], capsys)
    assert code == 0 and "resuming" in stdout, stdout + err
    code, stdout, _ = bench(["status", str(out)], capsys)
    line = next(ln for ln in stdout.splitlines() if ln.startswith("synthetic") and ln.split()[2] == "0")
    assert " done " in line


def test_slurm_submission_script(syn, tmp_path, monkeypatch, capsys) -> None:
    """A fake sbatch/srun on PATH: one job per cell, GPUs = tasks per node, time in minutes; nothing runs."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f'#!/bin/sh\nfor a in "$@"; do cp "$a" {fake}/job.sh 2>/dev/null; done\n'
                                 'echo "Submitted batch job 777001"\n')
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "res"
    code, stdout, err = bench(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn),
                               "--out", str(out), "--seeds", "0,1", "--launcher", "slurm", "--partition", "gpu",
                               "--gpus-per-job", "4", "--time", "4:00:00", *TINY_ARGS], capsys)
    assert code == 0, stdout + err
    assert stdout.count("submitted job 777001") == 2
    script = (fake / "job.sh").read_text()
    for opt in ("--partition=gpu", "--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1", "--time=240"):
        assert f"#SBATCH {opt}" in script
    code, stdout, _ = bench(["status", str(out)], capsys)
    assert stdout.count("queued") == 3  # two rows and the count line


def test_threads_option_sets_and_records_torch_threads(tmp_path, tiny_synthetic, capsys, monkeypatch):
    """#21: `bench run --threads N` runs torch with N threads and run.json records them; without it,
    the usable cores minus the DataLoader workers (CPU results depend on the thread count)."""
    import json

    import torch

    from rsbench.engine.device import default_threads

    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    try:
        code, _, err = bench(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root",
                                str(tiny_synthetic), "--out", str(tmp_path / "r"), *TINY_ARGS, "--epochs", "0",
                                "--threads", "1"], capsys)
        assert code == 0, err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    run = json.loads((tmp_path / "r" / "synthetic" / "vsepp" / "seed0" / "run.json").read_text())
    assert run["hardware"]["torch_threads"] == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(6)), raising=False)
    assert (default_threads(0), default_threads(2), default_threads(2, processes=2), default_threads(9)) == (6, 4, 1, 1)
    code, _, _ = bench(["run", "--methods", "vsepp", "--dataset", "synthetic", "--threads", "0"], capsys)
    assert code == 2


def test_jobs_run_with_the_threads_and_record_the_command_of_bench_run(syn, tmp_path, monkeypatch, capsys):
    """#21: a submitit job gets `bench run --threads`, the `bench run` command line and the grid's data.val_split,
    and its run.json records them as a local run's does (not the job process's own torch default and argv). The
    executor is a fake that keeps what the launcher submits and runs it here when asked for the result."""
    import inspect

    import torch

    from rsbench.engine import launch

    submitted: list[inspect.BoundArguments] = []

    class Job:
        def __init__(self, fn, args):
            self.fn, self.args, self.job_id = fn, args, f"fake{len(submitted)}"

        def results(self):
            before, argv = torch.get_num_threads(), sys.argv
            torch.set_num_threads(3)  # what the job process would start with
            sys.argv = ["python", "-m", "submitit.core._submit", "/tmp/job"]
            try:
                return [self.fn(*self.args)]
            finally:
                torch.set_num_threads(before)
                sys.argv = argv

    class Executor:
        def submit(self, fn, *args):
            submitted.append(inspect.signature(fn).bind(*args))
            return Job(fn, args)

    from rsbench.datasets import load_dataset

    monkeypatch.setattr(launch, "make_executor", lambda *a, **k: Executor())
    val = tmp_path / "val.txt"  # data.val_split lives in the grid's DataSource, not in the cell config
    val.write_text("\n".join(load_dataset("synthetic", data_root=syn).train.image_names[:3]) + "\n")
    argv = ["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn), "--out",
            str(tmp_path / "r"), *TINY_ARGS, "--epochs", "0", "--launcher", "submitit-local", "--threads", "1",
            "--set", f"data.val_split={val}"]
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    code, stdout, err = bench(argv, capsys)
    assert code == 0, stdout + err
    assert [(b.arguments["threads"], b.arguments["command"], b.arguments["source"].val_split) for b in submitted] \
        == [(1, ["bench", *argv], val.resolve())]
    run = json.loads((tmp_path / "r" / "synthetic" / "vsepp" / "seed0" / "run.json").read_text())
    assert (run["hardware"]["torch_threads"], run["command"]) == (1, ["bench", *argv])
    assert run["data"]["notes"]["val_split"]["n_val"] == 3
