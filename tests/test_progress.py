"""#21 progress and time: the whole-run line and its ETA, a cell's estimate, bars that end at 100 %."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from helpers import run_cli

from rsbench.engine.progress import (
    BAR_SMOOTHING,
    Bar,
    CellTime,
    CellWork,
    RunClock,
    cell_rates,
    eta_seconds,
    format_duration,
)

TINY = ["--methods", "vsepp", "--dataset", "synthetic", "--device", "cpu", "--threads", "1",
        "--set", "train.sampling=image", "--set", "train.image_size=32", "--set", "backbone=test_resnet",
        "--set", "embed_dim=32", "--set", "hidden_dim=32", "--set", "word_dim=16"]

# two vsepp cells on rsicd (2 epochs each: 20 s and 24 s of epochs, 26 s and 33 s in all) and one clip cell
DONE = [CellTime("vsepp", "rsicd", 2, 20.0, 26.0), CellTime("vsepp", "rsicd", 2, 24.0, 33.0),
        CellTime("clip", "rsicd", 1, 100.0, 110.0)]


def test_durations_are_short_and_exact() -> None:
    assert [format_duration(s) for s in (0, 44.6, 60, 130, 3599, 3900, -3)] == \
        ["0s", "45s", "1m00s", "2m10s", "59m59s", "1h05m", "0s"]


def test_rates_come_from_the_most_specific_cells_that_have_them() -> None:
    """Same method and dataset: 44 s / 4 epochs = 11 s per epoch, min(6, 9) = 6 s overhead (one-time costs
    land in the first cell); same method elsewhere: the vsepp cells; an unseen method: every cell
    (144 s / 5 epochs, min(6, 9, 10) s)."""
    assert cell_rates(DONE, "vsepp", "rsicd") == pytest.approx((11.0, 6.0))
    assert cell_rates(DONE, "clip", "rsicd") == pytest.approx((100.0, 10.0))
    assert cell_rates(DONE, "vsepp", "ucm") == pytest.approx((11.0, 6.0))
    assert cell_rates(DONE, "msa", "rsicd") == pytest.approx((28.8, 6.0))
    assert cell_rates([], "vsepp", "rsicd") is None


def test_eta_adds_each_cell_left_at_its_own_rate() -> None:
    left = [CellWork("vsepp", "rsicd", 2),  # 6 + 2 x 11 = 28
            CellWork("clip", "rsicd", 3),  # 10 + 3 x 100 = 310
            CellWork("vsepp", "ucm", 1),  # resumed with one epoch left: 6 + 11 = 17
            CellWork("msa", "rsicd", 2)]  # 6 + 2 x 28.8 = 63.6
    assert eta_seconds(left, DONE) == pytest.approx(28 + 310 + 17 + 63.6)
    assert eta_seconds([], DONE) == 0.0
    assert eta_seconds([CellWork("vsepp", "rsicd", 1)], []) is None  # nothing trained yet
    zero_shot = [CellTime("zoo", "rsicd", 0, 0.0, 12.0)]
    assert eta_seconds([CellWork("zoo", "rsicd", 0)], zero_shot) == pytest.approx(12.0)
    assert eta_seconds([CellWork("vsepp", "rsicd", 1)], zero_shot) is None  # no epoch timed yet


def test_skipped_and_failed_cells_count_as_done_without_changing_the_rate() -> None:
    clock = RunClock(total=8, start=0.0)
    clock.cell_finished(None)  # skipped (complete)
    left = [CellWork("vsepp", "rsicd", 2)] * 5
    assert clock.line(left, now=3.0) == "[1/8 cells | 3s elapsed | time left: known after the first trained cell]"
    clock.cell_finished(DONE[0])
    clock.cell_finished(None)  # failed
    assert clock.line(left, now=130.0) == "[3/8 cells | 2m10s elapsed | ~2m10s left]"  # 5 x (6 + 2 x 10)
    for _ in range(5):
        clock.cell_finished(DONE[1])
    assert clock.line([], now=400.0) == "[8/8 cells | 6m40s elapsed]"


def test_a_cell_estimate_needs_an_earlier_cell_of_its_method_on_its_dataset() -> None:
    clock = RunClock(total=4, start=0.0)
    for c in DONE:
        clock.cell_finished(c)
    note = clock.cell_estimate(CellWork("vsepp", "rsicd", 3))
    assert note is not None and "estimated 39s for 3 epoch(s)" in note and "2 earlier vsepp cells on rsicd" in note
    assert clock.cell_estimate(CellWork("vsepp", "ucm", 3)) is None  # other data: its first steps are timed
    assert clock.cell_estimate(CellWork("msa", "rsicd", 3)) is None


def _frames(text: str, desc: str) -> list[str]:
    """The drawn states of the bar named `desc` (carriage-return separated), blank clears left out."""
    return [f for f in text.split("\r") if f.strip().startswith(desc)]


def test_a_bar_draws_its_final_count_before_it_is_cleared() -> None:
    """tqdm redraws at most every 0.1 s: a fast loop's cleared bar never showed its end."""
    out = io.StringIO()
    assert list(Bar(range(50), "encode", True, file=out)) == list(range(50))
    frames = _frames(out.getvalue(), "encode")
    assert "100%" in frames[-1] and "50/50" in frames[-1]
    out = io.StringIO()  # a loop left early (an error) does not claim 100 %
    for i in Bar(range(50), "encode", True, file=out):
        if i == 10:
            break
    assert "100%" not in "".join(_frames(out.getvalue(), "encode"))


def _worst_eta_error(smoothing: float, monkeypatch: pytest.MonkeyPatch) -> float:
    """Largest relative error of the bar's seconds-per-step after 50 steps, when every 10th step stalls
    (5 s, a data worker) and the others take 0.5 s: 0.95 s per step on average."""
    now = [1000.0]
    monkeypatch.setattr("tqdm.std.time", lambda: now[0])
    bar = Bar(total=300, desc="epoch", show=True, file=io.StringIO(), smoothing=smoothing)
    worst = 0.0
    for step in range(300):
        now[0] += 5.0 if step % 10 == 9 else 0.5
        bar.update(1)
        if step >= 50:
            worst = max(worst, abs(1.0 / bar.format_dict["rate"] - 0.95) / 0.95)
    bar.close()
    return worst


def test_the_epoch_eta_is_smoothed_over_more_than_a_few_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _worst_eta_error(0.3, monkeypatch) > 0.5  # tqdm's default: the ETA swings by more than half
    assert _worst_eta_error(BAR_SMOOTHING, monkeypatch) < 0.3


@pytest.mark.slow
def test_a_run_prints_progress_between_cells_and_each_cell_estimate(tmp_path: Path, tiny_synthetic: Path, capsys,
                                                                     monkeypatch, isolated_cache) -> None:
    """3 cells, the first fails: counted as done, no rate from it; the second times its first steps;
    the third is estimated from the second; a second run skips two complete cells (counted, ETA 0)."""
    import torch

    from rsbench.engine import cell as runner
    from rsbench.errors import UserError

    real = runner.run_cell

    def first_fails(cfg, *a, **k):
        if cfg.seed == 0:
            raise UserError("out of memory on cpu at epoch 1, step 1 with batch size 2")
        return real(cfg, *a, **k)

    monkeypatch.setattr(runner, "run_cell", first_fails)
    args = ["run", *TINY, "--epochs", "1", "--seeds", "0,1,2", "--batch-size", "2", "--data-root",
            str(tiny_synthetic), "--out", str(tmp_path / "out"), "--progress"]
    before = torch.get_num_threads()
    try:
        code, out, err = run_cli(args, capsys)
        assert code == 2, err  # a failed cell
        lines = out.splitlines()
        assert any(re.fullmatch(r"\[1/3 cells \| \d+s elapsed \| time left: known after the first trained "
                                r"cell\]", x) for x in lines), out
        assert any(re.fullmatch(r"\[2/3 cells \| \d+s elapsed \| ~\d+s left\]", x) for x in lines), out
        assert any(re.fullmatch(r"\[3/3 cells \| \d+s elapsed\]", x) for x in lines), out
        timed = [x for x in lines if re.search(r"timed over steps 3-12 of \d+;", x)]
        assert len(timed) == 1 and "for 1 epoch(s)" in timed[0], out
        assert sum("(from 1 earlier vsepp cell on synthetic in this run)" in x for x in lines) == 1, out
        for desc in ("encode val images", "encode val captions", "encode test images", "encode test captions"):
            frames = _frames(err, desc)
            assert frames and "100%" in frames[-1], (desc, frames[-3:])
        code, out, err = run_cli([x.replace("0,1,2", "1,2") for x in args], capsys)  # both skipped now
        assert code == 0, err
        assert re.search(r"^\[1/2 cells \| \d+s elapsed \| ~0s left\]$", out, re.MULTILINE), out
    finally:
        torch.set_num_threads(before)
