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


def _audit(tmp_path: Path, leaked: list[str]) -> Path:
    """An audit.json pairing each `leaked` synthetic test image with a train image of another set."""
    pairs = [{"a": {"dataset": "synthetic", "split": "test", "filename": n},
              "b": {"dataset": "rsitmd", "split": "train", "filename": f"copy_{n}"}, "distance": 0}
             for n in leaked]
    pairs.append({"a": {"dataset": "synthetic", "split": "test", "filename": "x"},  # test vs test: no leak
                  "b": {"dataset": "rsitmd", "split": "test", "filename": "y"}, "distance": 2})
    path = tmp_path / "audit.json"
    path.write_text(json.dumps({"image_duplicates": pairs, "caption_duplicates": [], "ceilings": {}}))
    return path


def test_excluded_metrics_equal_the_metrics_of_the_smaller_test_set(tiny_synthetic, tmp_path, capsys, monkeypatch):
    """A planted leaked test image: metrics_excluded.json holds the metrics of the score sub-matrix without
    it and its captions (computed here from the full matrix the model gives), and metrics.json is unchanged."""

    from rsbench.datasets import load_dataset
    from rsbench.engine import evaluate as ev
    from rsbench.evaluation.metrics import evaluate_scores

    data = load_dataset("synthetic", data_root=tiny_synthetic)
    leaked = [data.test.image_names[1], data.test.image_names[4]]
    full: dict[str, np.ndarray] = {}
    real = ev.encode_split

    def spy(method, split, *a, **k):  # the full test score matrix, as the model scores it
        img, txt = real(method, split, *a, **k)
        if split.n_images == data.test.n_images:
            full["sims"] = method.score(img, txt).float().numpy()
        return img, txt

    monkeypatch.setattr(ev, "encode_split", spy)
    args = ["--data-root", str(tiny_synthetic)]
    code, out, err = _run([*args, "--out", str(tmp_path / "plain")], capsys)
    assert code == 0, err
    code, out, err = _run([*args, "--out", str(tmp_path / "ex"), "--set", f"eval.exclude={_audit(tmp_path, leaked)}"],
                          capsys)
    assert code == 0, err
    cell = tmp_path / "ex/synthetic/vsepp/seed0"
    std = json.loads((cell / "metrics.json").read_text())
    assert std == {**json.loads((tmp_path / "plain/synthetic/vsepp/seed0/metrics.json").read_text())}
    exc = json.loads((cell / "metrics_excluded.json").read_text())
    keep = np.array([n not in leaked for n in data.test.image_names])
    c2i = np.asarray(data.test.cap2img)
    new = np.cumsum(keep) - 1
    sub = full["sims"][keep][:, keep[c2i]]
    want = evaluate_scores(sub, new[c2i[keep[c2i]]])
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "mR", "t2i_meanr"):
        assert exc[key] == pytest.approx(want[key]), key
    assert exc["n_images"] == data.test.n_images - 2 and exc["n_captions"] == int(keep[c2i].sum())
    assert sorted(exc["excluded_images"]) == sorted(leaked) and exc["mR"] != std["mR"]
    assert f"excluding 2 leaked test images: mR {exc['mR']:.2f}" in out
    # a later run of the cell without eval.exclude leaves no stale excluded metrics behind
    code, out, err = _run([*args, "--out", str(tmp_path / "ex"), "--overwrite"], capsys)
    assert code == 0, err
    assert not (cell / "metrics_excluded.json").exists()
