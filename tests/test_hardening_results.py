"""Issue #15 part A: results integrity, resume/skip checks on the data, grid resilience, signals.

Each test reproduces a defect found by injecting faults: damaged result files, data swapped under a
resumed or finished cell, a finite divergence, bad seeds, an error inside one cell, SIGINT/SIGTERM.
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
from helpers import run_cli, start_bench

from rsbench.results.cell import is_complete

BENCH = str(Path(sys.executable).with_name("bench"))
TINY = ["--methods", "vsepp", "--dataset", "synthetic", "--device", "cpu",
        "--set", "train.sampling=image", "--set", "train.image_size=32", "--set", "train.batch_size=8",
        "--set", "backbone=test_resnet", "--set", "embed_dim=32", "--set", "hidden_dim=32", "--set", "word_dim=16"]


def bench(data: Path, out: Path, *extra: str, kill_at: str | None = None, wait: bool = True,
          cache: Path | None = None) -> subprocess.CompletedProcess | subprocess.Popen:
    """`bench run` on the tiny set in a real process (the kill hook and signals need one)."""
    env = {**os.environ, "RSBENCH_CACHE": str(cache or out.parent / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("RSBENCH_TEST_KILL_AT", None)
    if kill_at:
        env["RSBENCH_TEST_KILL_AT"] = kill_at
    argv = [BENCH, "run", *TINY, "--data-root", str(data), "--out", str(out), *extra]
    return start_bench(argv, env, wait)


def swapped_copy(src: Path, dst: Path) -> Path:
    """The same dataset with its val and test splits swapped (images linked, not copied)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name != "dataset.json":
            (dst / p.name).symlink_to(p.resolve(), target_is_directory=p.is_dir())
    ann = json.loads((src / "dataset.json").read_text())
    swap = {"val": "test", "test": "val"}
    for img in ann["images"]:
        img["split"] = swap.get(img["split"], img["split"])
    (dst / "dataset.json").write_text(json.dumps(ann))
    return dst


# ---- external cells from `bench score`: fast fixtures for the readers ----------------------------

@pytest.fixture
def scored(tmp_path: Path, tiny_synthetic: Path, capsys, isolated_cache) -> Path:
    """A results folder with two externally scored methods (A, B) on the tiny set's test split."""
    from rsbench.datasets import load_dataset

    ds = load_dataset("synthetic", data_root=tiny_synthetic, verify_images=False)
    rng = np.random.default_rng(0)
    out = tmp_path / "res"
    for name in ("A", "B"):
        f = tmp_path / f"{name}.npy"
        np.save(f, rng.standard_normal((ds.test.n_images, ds.test.n_captions)))
        code, _, err = run_cli(["score", str(f), "--dataset", "synthetic", "--name", name, "--out", str(out),
                                "--data-root", str(tiny_synthetic)], capsys)
        assert code == 0, err
    return out


def _cell(out: Path, name: str) -> Path:
    return out / "synthetic" / name / "seed0"


METRICS_DAMAGE = {
    "empty": b"",
    "truncated": b'{"split": "test", "mR": 12.',
    "garbage": b"\x00\xffnot json",
    "empty-object": b"{}",
    "mR-text": None,  # a valid metrics.json with "mR": "abc"
}


def _damage_metrics(cell: Path, kind: str) -> None:
    f = cell / "metrics.json"
    if METRICS_DAMAGE[kind] is None:
        m = json.loads(f.read_text())
        m["mR"] = "abc"
        f.write_text(json.dumps(m))
    else:
        f.write_bytes(METRICS_DAMAGE[kind])


@pytest.mark.parametrize("kind", sorted(METRICS_DAMAGE))
def test_damaged_metrics_named_by_every_reader(scored: Path, kind: str, capsys, tmp_path: Path) -> None:
    """A damaged metrics.json is never dropped silently: each reader warns naming it and exits non-zero."""
    bad = _cell(scored, "B")
    _damage_metrics(bad, kind)
    assert not is_complete(bad)
    for cmd in (["leaderboard", str(scored)], ["compare", str(scored), "--resamples", "50"],
                ["plot", str(scored), "--out", str(tmp_path / "fig")]):
        code, out, err = run_cli(cmd, capsys)
        assert code == 2, (cmd, out, err)
        assert f"damaged result cell: {bad / 'metrics.json'}" in err, (cmd, err)
        assert "--skip-damaged" in err and "Traceback" not in err
    assert not (scored / "leaderboard.csv").exists()
    # the option skips them, still naming them
    code, out, err = run_cli(["leaderboard", str(scored), "--skip-damaged"], capsys)
    assert code == 0, err
    assert str(bad / "metrics.json") in err and "| A |" in out.replace("synthetic | ", "")
    code, out, err = run_cli(["status", str(scored)], capsys)
    assert code == 1
    line = next(r for r in out.splitlines() if " B " in r)
    assert "damaged" in line and "metrics.json" in line


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_damaged_ranks_is_not_complete_and_leaves_leaderboard_files_alone(scored: Path, kind: str,
                                                                           capsys) -> None:
    """A 0-byte or truncated ranks.npz: no traceback, the cell is not complete, and no leaderboard
    file is rewritten (before: .csv/.md rewritten, .tex stale, and a traceback)."""
    code, _, err = run_cli(["leaderboard", str(scored)], capsys)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in scored.glob("leaderboard.*")}
    assert set(before) == {"leaderboard.csv", "leaderboard.md", "leaderboard.tex"}
    f = _cell(scored, "A") / "ranks.npz"
    f.write_bytes(b"" if kind == "empty" else f.read_bytes()[: f.stat().st_size // 2])
    assert not is_complete(f.parent)
    for cmd in (["leaderboard", str(scored)], ["compare", str(scored), "--resamples", "50"]):
        code, _, err = run_cli(cmd, capsys)
        assert code == 2 and "Traceback" not in err, (cmd, err)
        assert str(f) in err
    assert {p.name: p.read_bytes() for p in scored.glob("leaderboard.*")} == before


def test_file_set_is_all_or_none(tmp_path: Path) -> None:
    """When one file of the set cannot be written, none is replaced (all temps first, then renames)."""
    a, b = tmp_path / "a.csv", tmp_path / "b.md"
    a.write_text("old a")
    b.mkdir()  # the rename onto b fails
    from rsbench.errors import UserError
    from rsbench.results.leaderboard import write_file_set

    with pytest.raises(UserError):
        write_file_set({a: "new a", b: "new b"})
    assert a.read_text() == "old a"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    write_file_set({a: "new a", tmp_path / "c.tex": "c"})
    assert a.read_text() == "new a" and (tmp_path / "c.tex").read_text() == "c"


def test_leaderboard_removes_only_its_own_stale_temps(scored: Path, capsys) -> None:
    """Temp files a killed leaderboard write left at the results root are removed by the next writer;
    other hidden .tmp files (not ours) stay."""
    ours = [scored / ".leaderboard.csv.k3j_x9.tmp", scored / ".leaderboard.tex.abc123.tmp"]
    others = [scored / ".significance.csv.abc123.tmp", scored / ".leaderboard.csv.lock.tmp.keep"]
    for p in ours + others:
        p.write_text("partial")
    code, _, err = run_cli(["leaderboard", str(scored)], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others)


# ---- bench run ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", "0,-3", str(2**32), "99999999999999999999"])
def test_out_of_range_seeds_refused_at_parsing(value: str, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", f"--seeds={value}",
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--seeds" in err and "out of range" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_check_not_collapsed_uses_chance_of_the_val_split() -> None:
    """Val mR at or below chance after training is a failed cell (for a val split big enough to tell)."""
    from types import SimpleNamespace

    from rsbench.engine.evaluate import TrainingCollapsed, check_not_collapsed
    from rsbench.evaluation.metrics import chance_metrics

    cap2img = np.repeat(np.arange(40), 5)
    split = SimpleNamespace(n_images=40, cap2img=cap2img)
    chance = chance_metrics(cap2img)["chance_mR"]
    with pytest.raises(TrainingCollapsed, match="at or below chance"):
        check_not_collapsed({"mR": chance}, split, 1e6)
    check_not_collapsed({"mR": chance + 0.5}, split, 1e-3)  # above chance: fine


@pytest.mark.slow
def test_finite_divergence_marks_cell_failed(tmp_path: Path, tiny_synthetic: Path) -> None:
    """lr=1e6: weights blow up but stay finite and every score ties; the cell fails, nothing is recorded."""
    out = tmp_path / "out"
    proc = bench(tiny_synthetic, out, "--epochs", "2", "--set", "train.lr=1e6")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    cell = out / "synthetic" / "vsepp" / "seed0"
    assert not (cell / "metrics.json").exists()
    failed = json.loads((cell / "failed.json").read_text())
    assert "same score" in failed["error"] and failed["type"] == "TrainingCollapsed"
    assert "FAILED" in proc.stdout and "Traceback" not in proc.stderr


def test_error_in_one_cell_does_not_stop_the_grid(tmp_path: Path, tiny_synthetic: Path, capsys,
                                                 monkeypatch, isolated_cache) -> None:
    """An unexpected exception in one cell: its failed.json and a FAILED row, the next cell runs, exit 2."""
    from rsbench.engine import cell as runner

    real = runner.run_cell

    def flaky(cfg, *a, **k):
        if cfg.seed == 0:
            raise RuntimeError("boom inside the cell")
        return real(cfg, *a, **k)

    monkeypatch.setattr(runner, "run_cell", flaky)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["run", *TINY, "--epochs", "1", "--seeds", "0,1", "--data-root",
                                 str(tiny_synthetic), "--out", str(out)], capsys)
    assert code == 2, err
    c0, c1 = out / "synthetic" / "vsepp" / "seed0", out / "synthetic" / "vsepp" / "seed1"
    failed = json.loads((c0 / "failed.json").read_text())
    assert "RuntimeError" in failed["error"] and "boom inside the cell" in failed["error"]
    assert "boom inside the cell" in (c0 / "traceback.txt").read_text()
    assert is_complete(c1)
    rows = [r for r in stdout.splitlines() if r.startswith("vsepp")]
    assert "FAILED" in rows[0] and "FAILED" not in rows[1]
    assert "Traceback" not in err


@pytest.mark.slow
def test_resume_and_skip_refuse_other_data(tmp_path: Path, tiny_synthetic: Path) -> None:
    """A cell killed during test scoring and resumed with val and test swapped is refused (before: it
    reported test mR = its val mR); a finished cell is not skipped silently on changed data either."""
    swapped = swapped_copy(tiny_synthetic, tmp_path / "swapped")
    out = tmp_path / "out"
    killed = bench(tiny_synthetic, out, "--epochs", "1", kill_at="eval:test")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cell = out / "synthetic" / "vsepp" / "seed0"
    assert (cell / "checkpoint" / "last.pt").is_file() and not is_complete(cell)
    proc = bench(swapped, out, "--epochs", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "other data" in err[0] and "--overwrite" in err[0] and "Traceback" not in proc.stderr
    assert not is_complete(cell)
    # the right data resumes it; then the finished cell is refused (not skipped) on the swapped data
    assert bench(tiny_synthetic, out, "--epochs", "1").returncode == 0
    proc = bench(swapped, out, "--epochs", "1")
    assert proc.returncode == 2 and "other data" in proc.stderr and "skip" not in proc.stdout
    # --overwrite is the way out
    proc = bench(swapped, out, "--epochs", "1", "--overwrite")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_train_log_never_ahead_of_last_pt(tmp_path: Path, tiny_synthetic: Path) -> None:
    """Killed while last.pt of epoch 1 is being written: the log holds no row for epoch 1, so status
    reports the right resume point (before: the log was written first and showed epoch 1)."""
    out = tmp_path / "out"
    proc = bench(tiny_synthetic, out, "--epochs", "2", kill_at="write:last.pt")
    assert proc.returncode == -signal.SIGKILL
    cell = out / "synthetic" / "vsepp" / "seed0"
    assert not (cell / "checkpoint" / "last.pt").exists()
    log = cell / "train_log.csv"
    assert not log.exists() or len(log.read_text().strip().splitlines()) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_prints_resume_point_and_exits(tmp_path: Path, tiny_synthetic: Path, sig: int, code: int,
                                              name: str) -> None:
    """Ctrl-C / SIGTERM (SLURM preemption): one line naming the cell and the epoch the next run resumes from."""
    out = tmp_path / "out"
    proc = bench(tiny_synthetic, out, "--epochs", "200", "--set", "train.checkpoint_every_s=0", wait=False)
    log = out / "synthetic" / "vsepp" / "seed0" / "train_log.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().strip().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    lines = [s for s in stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert name in lines[0] and "seed0" in lines[0] and "resumes it from epoch" in lines[0]
    n = int(lines[0].split("from epoch ")[1].split()[0])
    assert n >= 1 and n == len(log.read_text().strip().splitlines()) - 1


# ---- #14: one helper for the one-line form of an error -------------------------------------------

@pytest.mark.parametrize(("exc", "expect"), [
    (EOFError(), "EOFError"),                                # no message: the type name
    (RuntimeError("\nfirst\nsecond"), "first"),              # a multi-line message: its first line
    (OSError("x" * 500), "x" * 500),
    # a DataLoader worker's re-raised error: the worker's own last traceback line, without its type
    (ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                "last):\n  File \"x.py\", line 1, in f\nValueError: /d/a.png: corrupt image\n"), "/d/a.png: corrupt image"),
    # a last line naming another type is not the worker's error line: the first line stays
    (ValueError("summary\nKeyError: k"), "summary"),
])
def test_one_line_is_the_one_first_line_helper(exc: BaseException, expect: str) -> None:
    from rsbench.errors import one_line

    assert one_line(exc) == expect
    assert one_line(exc, 10) == expect[:10]


def test_ctrl_c_inside_a_checkpoint_write_is_an_interrupt_not_a_failed_cell(tmp_path, monkeypatch) -> None:
    """SIGINT during torch.save surfaces as the zip writer's RuntimeError; the cell must not be marked failed."""
    from types import SimpleNamespace

    import torch

    from rsbench.engine import grid

    def interrupted_save(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None

    monkeypatch.setattr(grid, "_run_locked", interrupted_save)
    cell = tmp_path / "synthetic" / "vsepp" / "seed0"
    cell.mkdir(parents=True)
    cfg = SimpleNamespace(method="vsepp", seed=0)
    data = SimpleNamespace(name="synthetic")
    with pytest.raises(KeyboardInterrupt):
        grid.run_one_cell(cfg, data, cell, torch.device("cpu"), True, False, False)
    assert not (cell / "failed.json").exists()
