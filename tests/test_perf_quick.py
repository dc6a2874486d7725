"""The perf harness runs end to end in --quick mode: every item prints numbers, value checks hold.

Timing targets are NOT asserted here (they depend on the machine); only that the harness completes,
reports every item with timings, and that our code gives the same values as the references.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rsbench.benchmarks import harness, items_training, perf

NUMBER = re.compile(r"\d+(\.\d+)?\s*(us|ms|s)\b")


def _rows(report: str) -> list[list[str]]:
    """Cells of the results table's body rows."""
    lines = [ln for ln in report.splitlines() if ln.startswith("| ") and not ln.startswith("| # ")]
    rows = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    return [r for r in rows if len(r) == len(harness.COLUMNS)]


def test_side_by_side_and_table_helpers():
    calls = []
    t_o, t_r, a, b = harness.side_by_side(lambda: calls.append("o") or 1, lambda: calls.append("r") or 2, 3, 10.0)
    assert (a, b) == (1, 2) and t_o.n == 3 and t_r.n == 3
    assert calls[:2] == ["o", "r"] and calls[2:] == ["o", "r"] * 3  # warm-up, then interleaved
    table = harness.format_table([harness.Row("1", "x|y", "1.0 ms", ok=True)])
    assert "x/y" in table and table.count("\n") == 2
    assert perf.parse_only("3,1") == [1, 3]
    with pytest.raises(SystemExit):
        perf.parse_only("99")


def test_bench_perf_command(capsys: pytest.CaptureFixture[str]):
    from helpers import run_cli

    code, out, err = run_cli(["perf", "--quick", "--only", "1", "--threads", "1"], capsys)
    assert code == 0, err
    rows = _rows(out)
    table = rows[-2:]  # the progress lines print all rows of an item but the last (it carries the item's time)
    assert [r[0] for r in table] == ["1", "1b"] and all(r[6].endswith("True") for r in table)
    assert "acc_i2t" in table[0][1]  # item 1 names the authors' function it mirrors
    code, out, err = run_cli(["perf", "--only", "99"], capsys)
    assert code == 2 and err.startswith("error: --only: no item") and len(err.strip().splitlines()) == 1


def test_amfmn_step_item_quick_gives_its_auto_and_fp32_rows(tmp_path: Path):
    """Item 8 at quick sizes: ours at auto (the target row) and at fp32, the fp32 losses equal. The AMFMN items
    iterate (label, precision) pairs; when they shared a module with the MSA items, whose `_precisions` returns
    a dict, the later definition shadowed theirs and items 2 and 8 crashed."""
    from rsbench.benchmarks.items_amfmn import item_amfmn_step
    from rsbench.benchmarks.workspace import QUICK, Workspace

    rows = item_amfmn_step(Workspace(QUICK, tmp_path))
    assert [r.item for r in rows] == ["8", "8+"]
    assert "ours at auto" in rows[0].name and rows[1].name.endswith("ours at fp32")
    assert rows[0].ok is True and rows[0].check.endswith("True"), rows[0].check


@pytest.mark.slow
def test_quick_harness_prints_every_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "RESULTS.md"
    code = perf.main(["--quick", "--threads", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = out.read_text()
    assert report in printed  # the printed report is what was written
    for key in ("CPU:", "torch:", "date:", "load average"):
        assert key in report
    rows = _rows(report)
    items = {r[0].rstrip("+gba") for r in rows}
    assert items == {str(i) for i in perf.ITEMS}, items
    for r in rows:
        item, ours, check = r[0], r[2], r[6]
        assert NUMBER.search(ours), r  # a timing for every row
        if item != "6":
            assert r[5] == "-" or "MiB" in r[5], r
        assert r[8] in ("PASS", "FAIL", "-"), r
        if item.startswith(("1", "2", "3", "4", "6", "7")):  # items with an identical-values check
            assert check.endswith("True"), r
            assert "False" not in check, r
        if item in ("1", "2", "3", "4", "7", "7+"):
            assert NUMBER.search(r[3]) and r[4].endswith("x"), r  # reference time and ratio
    assert any(r[0] == "2b" and "ours" in r[5] and "ref" in r[5] for r in rows)  # peak memory, both sides
    assert [r[0] for r in rows if r[0].startswith(("2", "8"))] == ["2", "2+", "2b", "8", "8+"]
    assert all("auto" in r[1] for r in rows if r[0] in ("2", "8"))  # the target rows: ours at the default
    assert all("shard_dis" in r[3] for r in rows if r[0].startswith("2") and r[0] != "2b")  # what they mirror
    assert any(r[0] == "6" and "peak RSS" in r[5] for r in rows)
    assert sum(r[0] == "5" for r in rows) == len(items_training.METHODS)
    assert [r[0] for r in rows if r[0].startswith("7")] == ["7", "7+"]  # SCAN scoring, t2i and i2t
    assert all(r[4].endswith("%") for r in rows if r[0] == "5")
    grid = next(r for r in rows if r[0] == "11")  # the grid at --jobs 2 and at --jobs 1, every cell complete
    assert "--jobs 2" in grid[1] and "(--jobs 1)" in grid[3] and grid[6] == "4 cells complete: True", grid


def test_every_method_names_its_image_backbone_and_training_text_outputs(tmp_path: Path):
    """The perf harness reaches into a method only through the interface: image_backbone() is one of the
    method's own modules that encode_images runs (its weights get gradients from the image side), and
    training_text_outputs(batch) gives one row per caption."""
    import numpy as np
    import torch

    from rsbench.config.resolve import resolve_config
    from rsbench.methods import Batch, MethodContext, create_method, list_methods

    caps = ["a red airport with planes", "a blue harbor with ships", "green farmland", "a dense forest"]
    ctx = MethodContext(train_captions=caps, train_cap2img=np.arange(4), cache_dir=tmp_path)
    for spec in list_methods():
        if getattr(spec.cls, "needs_weights_file", False):  # zoo:*, hf_clip: built from files only (their tests)
            continue
        cfg = resolve_config(spec.name, "synthetic", preset="small")
        torch.manual_seed(0)
        method = create_method(spec.name, cfg.model, ctx).train()
        backbone = method.image_backbone()
        assert any(m is backbone for m in method.modules()), spec.name
        size = cfg.train.image_size
        batch = Batch(torch.randn(4, 3, size, size), method.tokenizer()(caps), torch.arange(4), torch.arange(4))
        method.encode_images(batch.images).float().sum().backward()
        grads = [p.grad for p in backbone.parameters() if p.requires_grad]
        assert getattr(spec.cls, "frozen_backbone", False) or grads and any(g is not None and g.abs().sum() > 0 for g in grads), spec.name
        outs = method.training_text_outputs(batch)
        assert outs and all(o.shape[0] == 4 for o in outs), spec.name
