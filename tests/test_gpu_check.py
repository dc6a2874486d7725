"""The one-command GPU check (rsbench.benchmarks.gpu) run on CPU with tiny models, and the precision that
last.pt records (a resume in another precision is refused in one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli

TINY_SET = {"train.sampling": "image", "train.image_size": "32", "backbone": "test_resnet", "embed_dim": "32",
            "hidden_dim": "32", "word_dim": "16", "train.keep_last": "true"}

pytestmark = pytest.mark.usefixtures("isolated_cache")


# ---- precision recorded in last.pt (item 5) -----------------------------------------------------------

def _run(out: Path, syn: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    sets = [a for k, v in TINY_SET.items() for a in ("--set", f"{k}={v}")]
    return run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn), "--epochs", "1",
                    "--batch-size", "8", "--device", "cpu", "--out", str(out), "--precision", "auto", *sets, *extra],
                   capsys)


def _interrupted_cell(out: Path, syn: Path, capsys: pytest.CaptureFixture[str], native: bool,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cell trained under --precision auto (bf16 where `native`), left as a kill after training leaves it."""
    from rsbench.engine import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda flags=None: native)
    code, _, err = _run(out, syn, capsys)
    assert code == 0, err
    cell = out / "synthetic" / "vsepp" / "seed0"
    (cell / "metrics.json").unlink()  # no longer complete: the next run resumes from last.pt
    return cell


def test_last_pt_records_its_precision_and_a_resume_in_another_is_refused(tmp_path, tiny_synthetic, capsys,
                                                                          monkeypatch):
    from rsbench.engine import device
    from rsbench.engine.checkpoint import load_resume

    cell = _interrupted_cell(tmp_path, tiny_synthetic, capsys, True, monkeypatch)
    assert load_resume(cell / "checkpoint" / "last.pt")["precision"] == "bf16"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda flags=None: False)  # auto now means fp32
    code, out, err = _run(tmp_path, tiny_synthetic, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "last.pt: resume state trained in bf16, this run asks for fp32 (train.precision=auto on cpu)" in err
    assert "--no-resume" in err
    assert not (cell / "metrics.json").exists()
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda flags=None: True)  # same precision: resumes
    code, out, err = _run(tmp_path, tiny_synthetic, capsys)
    assert code == 0 and "resuming" in out, err


def test_old_last_pt_without_precision_uses_run_json_or_is_refused(tmp_path, tiny_synthetic, capsys, monkeypatch):
    from rsbench.engine.checkpoint import load_resume

    cell = _interrupted_cell(tmp_path, tiny_synthetic, capsys, False, monkeypatch)
    last = cell / "checkpoint" / "last.pt"
    state = load_resume(last)
    del state["precision"]  # as written before the field existed
    torch.save(state, last)
    run = json.loads((cell / "run.json").read_text())
    assert run["precision"] == "fp32"
    (cell / "run.json").write_text(json.dumps({**run, "precision": "bf16"}))  # run.json says bf16: refused
    code, _, err = _run(tmp_path, tiny_synthetic, capsys)
    assert code == 2 and "resume state trained in bf16 (recorded in run.json), this run asks for fp32" in err, err
    (cell / "run.json").unlink()  # nothing says which precision it had, and auto depends on the machine
    code, _, err = _run(tmp_path, tiny_synthetic, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "does not record its precision" in err and "--no-resume" in err
    (cell / "run.json").write_text(json.dumps(run))  # run.json says fp32, as auto gives here: resumes
    code, out, err = _run(tmp_path, tiny_synthetic, capsys)
    assert code == 0 and "resuming" in out, err
