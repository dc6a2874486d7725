"""Grid-level options (`data.*`, `eval.*`) and the run-wide options of `bench run` (#16, #17, #18):
a named val split reaching the loaded data, the leaked-image exclusion beside the standard metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

pytestmark = pytest.mark.usefixtures("isolated_cache")

TINY = ["--methods", "vsepp", "--dataset", "synthetic", "--epochs", "0", "--set", "train.image_size=32",
        "--set", "backbone=test_resnet", "--set", "embed_dim=32", "--set", "hidden_dim=32", "--set", "word_dim=16"]


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    return run_cli(["run", *TINY, *args], capsys)


def test_named_val_split_reaches_the_grid_data(tiny_synthetic, tmp_path, capsys):
    from rsbench.datasets import load_dataset

    default = load_dataset("synthetic", data_root=tiny_synthetic)
    names = default.train.image_names[:3]
    lst = tmp_path / "val.txt"
    lst.write_text("\n".join(names) + "\n", encoding="utf-8")
    code, out, err = _run(["--data-root", str(tiny_synthetic), "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert f"val {default.val.n_images} / " in out
    code, out, err = _run(["--data-root", str(tiny_synthetic), "--out", str(tmp_path / "b"),
                           "--set", f"data.val_split={lst}"], capsys)
    assert code == 0, err
    assert "val 3 / " in out and f"train {default.train.n_images + default.val.n_images - 3} / " in out
    fp = {k: json.loads((tmp_path / k / "synthetic/vsepp/seed0/data.json").read_text())["fingerprint"]
          for k in ("a", "b")}
    assert fp["a"] == default.fingerprint and fp["b"] != fp["a"]
    # the same key from a config file's [data] table
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[data]\nval_split = "{lst.as_posix()}"\n', encoding="utf-8")
    code, out, err = _run(["--data-root", str(tiny_synthetic), "--out", str(tmp_path / "c"), "--config", str(cfg)],
                          capsys)
    assert code == 0, err
    assert "val 3 / " in out
    assert json.loads((tmp_path / "c/synthetic/vsepp/seed0/data.json").read_text())["fingerprint"] == fp["b"]


def test_unknown_grid_keys_and_missing_files_are_one_line(tiny_synthetic, tmp_path, capsys):
    code, _, err = _run(["--data-root", str(tiny_synthetic), "--set", "data.val_splt=x.txt"], capsys)
    assert code == 2 and "unknown option 'data.val_splt'" in err and "did you mean 'data.val_split'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(["--data-root", str(tiny_synthetic), "--set", "eval.exclud=a.json"], capsys)
    assert code == 2 and "did you mean 'eval.exclude'" in err
    code, _, err = _run(["--data-root", str(tiny_synthetic), "--out", str(tmp_path / "o"),
                         "--set", f"eval.exclude={tmp_path / 'none.json'}"], capsys)
    assert code == 2 and "eval.exclude" in err and "none.json" in err and len(err.strip().splitlines()) == 1
