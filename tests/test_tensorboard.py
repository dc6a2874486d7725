"""train.tensorboard: a real tiny run writes loss, lr and val metrics per epoch as TensorBoard scalars
(the values of train_log.csv); without the package the option fails at resolution, before any data."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

TINY = {"train.sampling": "image", "train.image_size": "32", "backbone": "test_resnet", "embed_dim": "32",
        "hidden_dim": "32", "word_dim": "16", "train.batch_size": "8"}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the event files under `folder`, read by TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_match_train_log(tiny_synthetic: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(tiny_synthetic),
                            "--epochs", "2", "--out", str(out), *TINY_ARGS, "--set", "train.tensorboard=true"],
                           capsys)
    assert code == 0, err
    cell = out / "synthetic" / "vsepp" / "seed0"
    events = list((cell / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in cell.rglob("*"))
    with open(cell / "train_log.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    got = _scalars(cell / "tensorboard")
    for r in rows:
        e = int(r["epoch"])
        assert got["train/loss"][e] == pytest.approx(float(r["loss"]), abs=1e-6)
        assert got["train/lr"][e] == pytest.approx(float(r["lr"]), rel=1e-6)
        assert got["val/mR"][e] == pytest.approx(float(r["val_mR"]), abs=1e-4)
    assert set(got["val/mR"]) == {1, 2} and set(got["train/loss"]) == {1, 2}
    assert {"val/i2t_r1", "val/t2i_r10"} <= set(got)  # every val metric, not only the selected one


def test_tensorboard_off_writes_nothing(tiny_synthetic: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(tiny_synthetic),
                            "--epochs", "1", "--out", str(out), *TINY_ARGS], capsys)
    assert code == 0, err
    assert not (out / "synthetic" / "vsepp" / "seed0" / "tensorboard").exists()


def test_tensorboard_missing_package_fails_at_resolution(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what find_spec / import see without the package
    missing = tmp_path / "no_such_data"  # resolution must fail before the data folder is even looked at
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(missing),
                              "--epochs", "1", "--out", str(tmp_path / "out"), *TINY_ARGS,
                              "--set", "train.tensorboard=true"], capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "train.tensorboard" in lines[0] and "pip install tensorboard" in lines[0]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_tensorboard_default_off_and_not_imported() -> None:
    from rsbench.config.resolve import resolve_config

    before = "tensorboard" in sys.modules
    cfg = resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": 1}, {})
    assert cfg.train.tensorboard is False
    assert ("tensorboard" in sys.modules) == before


def test_tensorboard_does_not_block_resume_or_skip() -> None:
    """Logging changes no result: a cell started without it (or before the option existed) resumes with it."""
    from rsbench.config.resolve import resolve_config
    from rsbench.engine.cellfolder import config_differences, config_record

    old = config_record(resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": 1}, {}))
    del old["train"]["tensorboard"]  # a config.json written before train.tensorboard existed
    on = resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": 1}, {"train.tensorboard": "true"})
    assert config_differences(old, config_record(on)) == []
    assert config_differences(old, config_record(resolve_config(
        "vsepp", "synthetic", 0, "small", {}, {"epochs": 2}, {"train.tensorboard": "true"}))) != []


@pytest.mark.slow
def test_tensorboard_resume_shows_each_epoch_once(tiny_synthetic: Path, tmp_path: Path) -> None:
    """Killed after epoch 2's events, before its last.pt: the resumed run redoes epoch 2, and TensorBoard
    shows epochs 1 and 2 once each (the writer purges what the kill left), with the final log's values."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "rsbench.cli", "run", "--methods", "vsepp", "--dataset", "synthetic",
            "--device", "cpu", "--data-root", str(tiny_synthetic), "--out", str(out), "--epochs", "2",
            *TINY_ARGS, "--set", "train.tensorboard=true", "--set", "train.checkpoint_every_s=0"]
    env = {**os.environ, "RSBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(argv, env={**env, "RSBENCH_TEST_KILL_AT": "write:last.pt#2"}, capture_output=True,
                            text=True, timeout=600, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    env.pop("RSBENCH_TEST_KILL_AT", None)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cell = out / "synthetic" / "vsepp" / "seed0"
    acc = EventAccumulator(str(cell / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    with open(cell / "train_log.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for tag, col in (("train/loss", "loss"), ("val/mR", "val_mR")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2], tag
        assert [round(e.value, 4) for e in events] == [pytest.approx(float(r[col]), abs=1e-4) for r in rows]
