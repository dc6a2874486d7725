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

pytestmark = pytest.mark.usefixtures("isolated_cache", "one_thread")


@pytest.fixture
def one_thread():
    """One torch thread (tiny models; `bench run` in process sets its own), restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- precision recorded in last.pt (item 5) -----------------------------------------------------------

def _run(out: Path, syn: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    sets = [a for k, v in TINY_SET.items() for a in ("--set", f"{k}={v}")]
    return run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn), "--epochs", "1",
                    "--batch-size", "8", "--device", "cpu", "--out", str(out), "--precision", "auto", "--threads", "1",
                    *sets, *extra],
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


# ---- the GPU check on CPU (items 1-4) -----------------------------------------------------------------

def test_cpu_only_machine_prints_one_line_and_exits_0(monkeypatch, capfd):
    from rsbench.benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 0
    out, err = capfd.readouterr()
    assert out == gpu.NO_GPU + "\n" and err == ""


def test_budget_share_and_step_plan_hand_worked():
    from rsbench.benchmarks.gpu_steps import plan_steps, setting_share, settings_for

    # 480 s budget, 100 s gone, 15 s reserve, 12 settings left: (480 - 100 - 15) / 12 = 30.4166 s each
    assert setting_share(480, 100, 12, 15) == pytest.approx(365 / 12)
    assert setting_share(480, 470, 3, 15) == 0.0  # overspent: nothing left, never negative
    # a 30 s share, 12 s spent on build + warm-up + 5 probe steps, 0.25 s a step: 5 + 72 = 77 of 300
    assert plan_steps(300, 5, 30.0, 12.0, 0.25) == 77
    assert plan_steps(50, 5, 30.0, 12.0, 0.25) == 50  # fits: the requested count
    assert plan_steps(300, 5, 10.0, 12.0, 0.25) == 5  # share already spent: the probe steps only
    assert plan_steps(300, 5, 30.0, 29.9, 0.25) == 5  # 0.1 s left is not one more step
    rows = settings_for(["vsepp", "msa"], compile_too=True)
    assert [(s.method, s.precision, s.channels_last, s.compile) for s in rows] == [
        ("vsepp", "fp32", True, False), ("vsepp", "bf16", True, False), ("vsepp", "bf16", False, False),
        ("msa", "fp32", True, False), ("msa", "bf16", True, False), ("msa", "bf16", False, False),
        ("vsepp", "bf16", True, True), ("msa", "bf16", True, True)]  # compiled settings last


def _table(text: str, first: str) -> list[list[str]]:
    """Rows of the markdown table whose header starts with `first` (header included)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first} |"))
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split(" | ")])
    return [rows[0]] + rows[2:]


def test_tiny_cpu_run_reports_every_setting_and_column(tmp_path, capsys):
    from rsbench.benchmarks import gpu

    out = tmp_path / "gpu.md"
    code = gpu.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "0", "--images", "20",
                     "--skip-checks", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    text = out.read_text()
    assert text in printed and "torch:" in text and "budget: 480 s" in text
    table = _table(text, "method")
    assert tuple(table[0]) == gpu.COLUMNS
    body = table[1:]
    assert [(r[0], r[3], r[4]) for r in body] == [(m, p, cl) for m in gpu.METHODS
                                                  for p, cl in (("fp32", "yes"), ("bf16", "yes"), ("bf16", "no"))]
    for r in body:
        assert len(r) == len(gpu.COLUMNS) and r[1] == "8" and r[2] == "32" and r[6] == "2"
        wait, compute, step = float(r[9]), float(r[10]), float(r[8])
        assert wait >= 0 and compute > 0 and step == pytest.approx(wait + compute, abs=0.16)
        assert float(r[7]) == pytest.approx(8 / (step / 1000), rel=0.02, abs=0.051)  # img/s = batch / step time
        assert r[11] == "-"  # no GPU memory on CPU


def test_checks_table_and_a_spent_budget_skipping_every_setting(tmp_path, capsys):
    from rsbench.benchmarks import gpu

    code = gpu.main(["--device", "cpu", "--tiny", "--budget", "1", "--images", "40", "--methods", "vsepp"])
    printed = capsys.readouterr().out
    body = _table(printed, "method")[1:]
    assert code == 0 and len(body) == 3 and all(r[-1] == "skipped: the budget is spent" for r in body)
    checks = _table(printed, "check")
    assert checks[0] == ["check", "result", "detail"]
    assert [r[1] for r in checks[1:]] == ["PASS", "SKIPPED"]
    assert checks[1][0].startswith("fp16 + GradScaler") and checks[1][2].startswith("bitwise equal")
    assert checks[2][0].startswith("DDP") and "no CUDA GPU" in checks[2][2]


def _drop_scaler(path: Path) -> None:
    from rsbench.engine.checkpoint import load_resume

    state = load_resume(path)
    del state["scaler"]  # a resume that forgets the GradScaler (its scale and growth tracker)
    torch.save(state, path)


def test_fp16_resume_check_passes_and_fails_when_the_scaler_state_is_dropped(tmp_path):
    from rsbench.benchmarks.gpu import make_data
    from rsbench.benchmarks.gpu_checks import resume_check

    _, data = make_data(tmp_path, 40, tiny=True)
    ok = resume_check(data, torch.device("cpu"), tmp_path / "ok", tiny=True)
    assert ok.status == "PASS" and ok.detail.startswith("bitwise equal after 2 epochs"), ok.detail
    bad = resume_check(data, torch.device("cpu"), tmp_path / "bad", tiny=True, corrupt=_drop_scaler)
    assert bad.status == "FAIL" and "scaler" in bad.detail, bad.detail


def test_bench_perf_gpu_without_cuda_and_bad_combinations(monkeypatch, capsys):
    from rsbench.benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(["perf", "--gpu", "--compile"], capsys)
    assert code == 0 and out == gpu.NO_GPU + "\n" and err == ""
    code, out, err = run_cli(["perf", "--compile"], capsys)
    assert code == 2 and err.startswith("error: --gpu takes only --compile and --out") and len(err.splitlines()) == 1


def test_resume_judged_against_the_noise_of_a_repeat_where_kernels_are_not_deterministic():
    """The GPU branch of the resume check: not bitwise equal passes only within 10x a repeat's difference."""
    from rsbench.benchmarks.gpu_checks import _differences, _judge_noise

    a = {"model": {"w": torch.tensor([1.0, 2.0])}, "scaler": {"scale": 1024.0, "_growth_tracker": 3}, "epoch": 2}
    near = {"model": {"w": torch.tensor([1.0, 2.0 + 2**-20])}, "scaler": dict(a["scaler"]), "epoch": 2}
    far = {"model": {"w": torch.tensor([1.0, 2.5])}, "scaler": dict(a["scaler"]), "epoch": 2}
    keys, diff = _differences(a, near)
    assert keys == ["model.w"] and diff == 2**-20
    assert _differences(a, {**a, "scaler": {"scale": 512.0, "_growth_tracker": 3}})[0] == ["scaler.scale"]
    assert _judge_noise("r", keys, diff, ([], 0.0)).status == "FAIL"  # a repeat is exact: the resume is wrong
    assert _judge_noise("r", keys, diff, _differences(a, near)).status == "PASS"  # same size as a repeat's
    keys_far, diff_far = _differences(a, far)
    bad = _judge_noise("r", keys_far, diff_far, _differences(a, near))  # 0.5 > 10 x 2^-20
    assert bad.status == "FAIL" and "> 10 x" in bad.detail
    scaler = _judge_noise("r", ["model.w", "scaler._growth_tracker"], 2**-20, _differences(a, near))
    assert scaler.status == "FAIL" and scaler.detail.startswith("differs in scaler._growth_tracker")
