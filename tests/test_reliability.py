"""Reliability end to end: real `bench run` processes killed at chosen points, resumed, compared.

Done-when test: a run SIGKILLed mid-epoch, mid-checkpoint-write, during evaluation and during the
results write resumes to exactly the result of an uninterrupted run (metrics, ranks, selected and
last weights, optimiser, scheduler, log), with no partial file a reader could take for a result.
Also: two processes on one results folder, stale locks, and tampered checkpoints.
Kill points come from the test-only hook RSBENCH_TEST_KILL_AT (rsbench/io.py: kill_point).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from rsbench.engine.checkpoint import load_resume
from rsbench.evaluation.topk import read_topk
from rsbench.results.cell import is_complete
from rsbench.results.scan import scan_results

BENCH = str(Path(sys.executable).with_name("bench"))
CELL = ("synthetic", "vsepp", "seed0")
TINY = ["--methods", "vsepp", "--dataset", "synthetic", "--epochs", "2", "--device", "cpu",
        "--set", "train.sampling=image", "--set", "train.image_size=32", "--set", "train.batch_size=8", "--set", "backbone=test_resnet",
        "--set", "embed_dim=32", "--set", "hidden_dim=32", "--set", "word_dim=16",
        "--set", "train.keep_last=true",  # these tests resume from, and compare, the finished cells' last.pt
        "--set", "train.checkpoint_every_s=0"]  # a checkpoint every epoch: the kill points land on known epochs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_synthetic: Path) -> Path:
    """A work folder: the tiny synthetic dataset linked in as syn/, and room for a cache."""
    root = tmp_path_factory.mktemp("reliability")
    (root / "syn").symlink_to(tiny_synthetic, target_is_directory=True)
    return root


def bench(work: Path, out: Path, *extra: str, kill_at: str | None = None, wait: bool = True,
          quiet: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "RSBENCH_CACHE": str(work / "cache")}
    env.pop("RSBENCH_TEST_KILL_AT", None)
    if kill_at:
        env["RSBENCH_TEST_KILL_AT"] = kill_at
    argv = [BENCH, "run", *TINY, "--data-root", str(work / "syn"), "--out", str(out), *extra]
    if not wait:
        pipe = subprocess.DEVNULL if quiet else subprocess.PIPE
        return subprocess.Popen(argv, env=env, stdout=pipe, stderr=pipe, text=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def reference(work) -> Path:
    """An uninterrupted run: the result every interrupted run must reproduce."""
    out = work / "ref"
    proc = bench(work, out)
    assert proc.returncode == 0, proc.stderr
    assert "leaderboard:" in proc.stdout and (out / "leaderboard.md").is_file()
    return out.joinpath(*CELL)


def assert_no_partial_files(out: Path) -> None:
    """Every result file parses; temp files are hidden `.<name>.*.tmp` that no reader opens."""
    for p in out.rglob("*"):
        if p.name.endswith(".tmp"):
            assert p.name.startswith("."), p
        elif p.suffix == ".json":
            json.loads(p.read_text(encoding="utf-8"))
        elif p.name == "topk.npz":
            read_topk(p)  # shapes, index ranges and score order checked
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                assert set(z.files) == {"i2t_rank", "t2i_rank", "cap2img"}
        elif p.name == "last.pt":
            load_resume(p, "vsepp")
        elif p.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(p))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


def assert_same_cell(ref: Path, cell: Path) -> None:
    """Everything a run computes is bitwise equal; only wall-clock fields may differ."""
    assert (cell / "metrics.json").read_bytes() == (ref / "metrics.json").read_bytes()
    assert (cell / "config.json").read_bytes() == (ref / "config.json").read_bytes()
    for name in ("ranks.npz", "topk.npz"):
        with np.load(ref / name) as a, np.load(cell / name) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), name
    from safetensors.torch import load_file

    assert _same(load_file(str(ref / "checkpoint/best.safetensors")), load_file(str(cell / "checkpoint/best.safetensors")))
    ra, rb = load_resume(ref / "checkpoint/last.pt"), load_resume(cell / "checkpoint/last.pt")
    for row in ra["log"] + rb["log"]:
        row.pop("seconds")
    assert ra.keys() == rb.keys()
    for k in ra:  # model, optimizer, scheduler, scaler, epoch, best_val, best_epoch, log, ...
        assert _same(ra[k], rb[k]), k

    def log(p: Path) -> list[list[str]]:
        return [ln.split(",")[:4] for ln in p.read_text().splitlines()]  # drop the seconds column

    assert log(cell / "train_log.csv") == log(ref / "train_log.csv")


def test_killed_anywhere_resumes_to_the_uninterrupted_result(work, reference):
    """Kill the same cell four times at different points; each resume continues; the end is identical."""
    out = work / "killed"
    cell = out.joinpath(*CELL)
    # (kill point, completed epochs in last.pt afterwards (None: no last.pt yet))
    plan = [
        ("write:last.pt", None),  # epoch 1 trained; killed with last.pt written to a temp, not renamed
        ("step:2:2", 1),  # resumed from scratch; killed after step 2 of epoch 2
        ("eval:test", 2),  # resumed from epoch 1, finished epoch 2; killed while scoring test
        ("write:metrics.json", 2),  # resumed (nothing to train); killed writing the final metrics
    ]
    for point, epoch in plan:
        proc = bench(work, out, kill_at=point)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
        assert not is_complete(cell), point
        assert scan_results(out) == [], point  # nothing reads as a result
        assert (cell.parent / ".seed0.lock").exists()  # the dead process's lock file is still there...
        last = cell / "checkpoint" / "last.pt"
        assert (load_resume(last)["epoch"] if last.exists() else None) == epoch, point
        assert_no_partial_files(out)
    assert list(cell.glob(".metrics.json.*.tmp"))  # the last kill left a temp file behind

    proc = bench(work, out)  # ...and does not block the resume
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and "removed 1 temp file(s)" in proc.stdout
    assert is_complete(cell)
    assert_same_cell(reference, cell)
    assert_no_partial_files(out)
    assert not [p for p in out.rglob("*.tmp")]

    again = bench(work, out)  # a finished cell is skipped, not redone
    assert again.returncode == 0 and "skip" in again.stdout and "complete" in again.stdout
    assert (cell / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


LOCK_HOLDER = """
import sys, time
from rsbench.locks import cell_lock
lock = cell_lock(sys.argv[1])
assert lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_locked_cell_is_skipped_and_a_killed_holder_frees_it(work, tmp_path):
    """A cell held by another process is skipped with its pid; the grid goes on with other cells;
    once the holder is SIGKILLed the lock is free at once."""
    from rsbench.locks import cell_lock

    out = tmp_path / "res"
    held = out / "synthetic" / "vsepp" / "seed0"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = bench(work, out, "--seeds", "0,1", "--epochs", "1")
        assert proc.returncode == 0, proc.stderr
        assert f"cell {held} is being run by another process (pid {holder.pid}); skipping" in proc.stdout
        assert "running in another process" in proc.stdout  # the summary says so too
        assert not held.exists()
        assert is_complete(out / "synthetic" / "vsepp" / "seed1")  # the other cell was run
        assert not cell_lock(held).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = cell_lock(held)
    assert lock.acquire(), "a SIGKILLed holder's lock must not block"
    lock.release()


def test_killed_run_with_loader_workers_frees_its_lock_at_once(work, tmp_path):
    """DataLoader workers forked by a killed run must not keep its cell lock alive."""
    from rsbench.locks import cell_lock

    out = tmp_path / "res"
    proc = bench(work, out, "--epochs", "1", "--set", "train.num_workers=2", kill_at="step:1:1", wait=False,
                 quiet=True)  # no pipes: wait for the main process only, its workers may still be alive
    assert proc.wait(timeout=600) == -signal.SIGKILL
    lock = cell_lock(out / "synthetic" / "vsepp" / "seed0")
    assert lock.acquire()
    lock.release()


def test_two_processes_on_one_results_folder(work, tmp_path):
    """Two concurrent runs of the same grid: every cell is run by exactly one of them, all complete."""
    out = tmp_path / "res"
    procs = [bench(work, out, "--seeds", "0,1", "--epochs", "1", wait=False) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    for seed in (0, 1):
        cell = out / "synthetic" / "vsepp" / f"seed{seed}"
        assert is_complete(cell)
        ran = sum(f"-> {cell}" in o[0] for o in outs)
        assert ran == 1, outs
    assert_no_partial_files(out)
    assert len(scan_results(out)) == 2
    assert (out / "leaderboard.csv").read_text().count("\n") == 2  # header + one (dataset, method) row


# ---- tampered and foreign checkpoints (in process, on copies of the reference cell) ----------------

def resume_copy(work: Path, reference: Path, tmp_path: Path) -> Path:
    """A copy of the finished reference cell made incomplete again, so `bench run` resumes it."""
    cell = tmp_path.joinpath("res", *CELL)
    shutil.copytree(reference, cell)
    (cell / "metrics.json").unlink()
    return cell


def main_run(work: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    """`bench run` of the tiny grid in process, with the work folder's cache."""
    old = os.environ.get("RSBENCH_CACHE")
    os.environ["RSBENCH_CACHE"] = str(work / "cache")
    try:
        return run_cli(["run", *TINY, "--data-root", str(work / "syn"), "--out", str(out), *extra], capsys)
    finally:
        if old is None:
            os.environ.pop("RSBENCH_CACHE", None)
        else:
            os.environ["RSBENCH_CACHE"] = old


class Payload:
    """Unpickling this runs code (creates a marker file): weights_only loading must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_payload_in_last_pt_is_refused(work, reference, tmp_path, capsys):
    cell = resume_copy(work, reference, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"format": "rsbench-resume-v1", "method": "vsepp", "model": Payload(str(marker)), "epoch": 2},
               cell / "checkpoint" / "last.pt")
    code, _, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and "Traceback" not in err
    assert "last.pt: refusing to load resume state: it holds Python objects other than tensors" in err
    assert not marker.exists()
    assert not is_complete(cell)


def test_plain_pickle_and_truncated_last_pt_are_refused(work, reference, tmp_path, capsys):
    cell = resume_copy(work, reference, tmp_path)
    last = cell / "checkpoint" / "last.pt"
    last.write_bytes(pickle.dumps({"model": {}, "epoch": 1}))
    code, _, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and "refusing to load resume state" in err and "Traceback" not in err
    last.write_bytes((reference / "checkpoint/last.pt").read_bytes()[:4096])
    code, _, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and "refusing to load resume state: truncated or not a torch checkpoint" in err


def test_truncated_best_safetensors_is_refused(work, reference, tmp_path, capsys):
    cell = resume_copy(work, reference, tmp_path)
    best = cell / "checkpoint" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:-1000])
    code, _, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and "Traceback" not in err
    assert "best.safetensors: not a valid safetensors checkpoint, truncated or corrupt" in err
    assert not is_complete(cell)


def test_foreign_safetensors_is_refused(work, reference, tmp_path, capsys):
    from safetensors.torch import save_file

    from rsbench.engine.checkpoint import best_epoch_on_disk

    cell = resume_copy(work, reference, tmp_path)
    best = cell / "checkpoint" / "best.safetensors"
    best_epoch = best_epoch_on_disk(cell / "checkpoint")  # the epoch the resume state names
    save_file({"weight": torch.zeros(3, 3)}, str(best))  # another model's weights, no rsbench header
    code, _, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and "best.safetensors: checkpoint does not match the model" in err
    save_file({"weight": torch.zeros(3, 3)}, str(best), metadata={"format": "rsbench-best-v1", "method": "msa",
                                                                  "meta": json.dumps({"epoch": best_epoch})})
    code, _, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and "is a checkpoint of method 'msa', not 'vsepp'" in err
    assert "Traceback" not in err


def test_resume_with_another_config_is_refused(work, reference, tmp_path, capsys):
    """A cell started with other result-changing options is not silently continued or reused."""
    cell = resume_copy(work, reference, tmp_path)
    cfg = json.loads((cell / "config.json").read_text())
    cfg["train"]["lr"] = 0.1
    (cell / "config.json").write_text(json.dumps(cfg))
    code, out, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"error: {cell} was started with a different config (train.lr: 0.1 in the cell" in err
    assert "pass --overwrite" in err
    assert "run vsepp" not in out  # refused before any training
    cfg["train"]["lr"] = json.loads((reference / "config.json").read_text())["train"]["lr"]
    cfg["train"]["num_workers"] = 3  # does not change results: accepted
    (cell / "config.json").write_text(json.dumps(cfg))
    code, out, err = main_run(work, tmp_path / "res", capsys)
    assert code == 0, err
    assert (cell / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_resume_state_without_config_is_refused(work, reference, tmp_path, capsys):
    cell = resume_copy(work, reference, tmp_path)
    (cell / "config.json").unlink()
    code, _, err = main_run(work, tmp_path / "res", capsys)
    assert code == 2 and err == (f"error: {cell} has a resume checkpoint but no config.json, so its config is "
                                 "unknown; pass --overwrite to discard it and start again\n")


def test_no_resume_restarts_an_interrupted_cell(work, reference, tmp_path, capsys):
    """--no-resume discards the interrupted cell (even one with another config) and trains from epoch 0."""
    cell = resume_copy(work, reference, tmp_path)
    code, out, err = main_run(work, tmp_path / "res", capsys, "--no-resume", "--epochs", "1")
    assert code == 0, err
    assert "resuming" not in out and "epoch 1/1" in out
    assert len(load_resume(cell / "checkpoint" / "last.pt")["log"]) == 1 and is_complete(cell)


def test_overwrite_redoes_a_finished_cell(work, reference, tmp_path, capsys):
    cell = tmp_path.joinpath("res", *CELL)
    shutil.copytree(reference, cell)
    (cell / "stale.txt").write_text("from an older run")
    os.utime(cell / "metrics.json", (0, 0))
    code, out, err = main_run(work, tmp_path / "res", capsys, "--overwrite", "--epochs", "1")
    assert code == 0, err
    assert f"-> {cell}" in out and "leaderboard:" in out
    assert not (cell / "stale.txt").exists()
    assert not list(cell.parent.glob(".seed0.trash-*"))  # the old cell was renamed away, then deleted
    assert json.loads((cell / "config.json").read_text())["train"]["epochs"] == 1
    assert (cell / "metrics.json").stat().st_mtime > time.time() - 600
