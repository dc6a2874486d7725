"""`check_dataset` and `bench data check/synth/cache` on good and broken copies of each layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fakedata import make_karpathy, make_precomp, write_image
from helpers import run_cli as run_main
from helpers import shared_data
from typer.testing import CliRunner

from rsbench.cli.data import build_data_app
from rsbench.datasets import check_dataset


def run_data(args: list[str]):
    return CliRunner().invoke(build_data_app(), args)


@pytest.mark.parametrize("name", ["ucm", "sydney", "rsicd", "rsitmd"])
def test_check_clean_copies(tmp_path, name, capsys):
    fs = make_karpathy(tmp_path, name)
    rep = check_dataset(name, data_root=tmp_path)
    assert rep.ok and rep.layout == "karpathy"
    assert {k: v.n_images for k, v in rep.splits.items()} == {"train": 12, "val": 3, "test": 3}
    tr = rep.splits["train"]
    assert tr.n_captions == sum(len(fs.captions[n]) for n in fs.splits["train"]) or name == "rsitmd"
    assert tr.n_distinct_captions < tr.n_captions  # caption 0 repeats within a class
    if name == "rsicd":
        assert (tr.captions_per_image_min, tr.captions_per_image_max) == (4, 6)
        assert tr.image_sizes == {"16x16": 6, "20x20": 6} and len(tr.classes) == 3
    if name == "sydney":
        assert set(tr.image_modes) == {"RGB", "L", "RGB (16-bit)"}
    code, out, err = run_main(["data", "check", name, "--data-root", str(tmp_path)], capsys)
    assert code == 0, err
    assert "split" in out and "no problems found" in out and "train" in out


def test_check_precomp_clean(tmp_path):
    make_precomp(tmp_path, "rsicd", ext=".jpg")
    rep = check_dataset("rsicd", data_root=tmp_path)
    assert rep.ok and rep.layout == "precomp" and rep.notes["val_carving"]["n_val"] == 3
    assert (rep.splits["test"].captions_per_image_min, rep.splits["test"].captions_per_image_max) == (4, 5)
    from rsbench.datasets import DataSource

    again = check_dataset(DataSource("rsicd", data_root=tmp_path, val_seed=3), decode=False)
    assert again.ok and again.layout == "precomp" and again.fingerprint != rep.fingerprint  # another val carving
    assert again.fingerprint == check_dataset("rsicd", data_root=tmp_path, val_seed=3, decode=False).fingerprint


def _check_fails(tmp_path: Path, name: str, capsys, *expected: str, args: tuple[str, ...] = ()) -> list[str]:
    """Run the check via the Typer app and the main entry; each expected text on an `error:` line."""
    res = run_data(["check", name, "--data-root", str(tmp_path), *args])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    for text in expected:
        assert any(text in ln for ln in lines), (text, lines)
    code, _, err = run_main(["data", "check", name, "--data-root", str(tmp_path), *args], capsys)
    assert code == 1 and err.count("error: ") == len(lines)
    return lines


def test_check_missing_files_all_listed(tmp_path, capsys):
    fs = make_karpathy(tmp_path, "ucm")
    (fs.image_dir / "3.tif").unlink()
    (fs.image_dir / "17.tif").unlink()
    lines = _check_fails(tmp_path, "ucm", capsys, "imgs/3.tif: image file not found", "imgs/17.tif: image file not found")
    assert len(lines) == 2


def test_check_wrong_image_folder_is_one_problem(tmp_path, capsys):
    make_karpathy(tmp_path, "rsitmd")
    (tmp_path / "other").mkdir()
    lines = _check_fails(tmp_path, "rsitmd", capsys, "none of the 18 images listed in", args=("--image-dir",
                                                                                               str(tmp_path / "other")))
    assert len(lines) == 1 and "wrong --image-dir?" in lines[0]


def test_check_truncated_and_unreadable_images(tmp_path, capsys):
    fs = make_karpathy(tmp_path, "rsicd")
    bad = fs.image_dir / fs.splits["train"][0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    junk = fs.image_dir / fs.splits["test"][0]
    junk.write_bytes(b"not an image at all")
    lines = _check_fails(tmp_path, "rsicd", capsys, f"{bad}: corrupt or truncated image",
                         f"{junk}: not a readable image")
    assert len(lines) == 2
    rep = check_dataset("rsicd", data_root=tmp_path)
    assert rep.splits["train"].n_unreadable_images == 1 and rep.splits["test"].n_unreadable_images == 1


def test_check_empty_caption(tmp_path, capsys):
    fs = make_karpathy(tmp_path, "sydney")
    obj = json.loads(fs.ann_file.read_text())
    obj["images"][4]["sentences"][2]["raw"] = "   "
    fs.ann_file.write_text(json.dumps(obj))
    name = obj["images"][4]["filename"]
    _check_fails(tmp_path, "sydney", capsys, f"dataset.json: image '{name}' (val) caption 2: empty caption")


def test_check_empty_caption_precomp(tmp_path, capsys):
    fs = make_precomp(tmp_path, "rsitmd")
    caps = fs.ann_file / "test_caps.txt"
    lines = caps.read_text().split("\n")
    lines[6] = ""  # test image 1 (5 + 4 captions per image), its caption 1
    caps.write_text("\n".join(lines))
    _check_fails(tmp_path, "rsitmd", capsys, f"test_caps.txt: image '{fs.splits['test'][1]}' (test) caption 1: empty")


@pytest.mark.parametrize("content,text", [
    ('{"images": [{"filename": ', "dataset.json: not valid JSON (line 1 column 26"),
    ('{"imgs": []}', "dataset.json: top level: missing key 'images'"),
    ('{"images": [{"filename": "1.tif", "split": "train", "sentences": [{"raw": "a"}]}, {"split": "test"}]}',
     "dataset.json: images[1]: missing key 'filename'"),
    ('{"images": [{"filename": "1.tif", "split": "train", "sentences": [{"text": "a"}]}]}',
     "dataset.json: images[0] ('1.tif') sentences[0]: missing key 'raw'"),
    ('{"images": [{"filename": "../../etc/x.tif", "split": "train", "sentences": []}]}',
     "dataset.json: images[0]: image name '../../etc/x.tif' escapes the image folder"),
    ('{"images": [{"filename": "/etc/hostname", "split": "train", "sentences": []}]}',
     "dataset.json: images[0]: image name '/etc/hostname' is an absolute path"),
])
def test_check_bad_annotation(tmp_path, capsys, content, text):
    (tmp_path / "imgs").mkdir()
    write_image(tmp_path / "imgs" / "1.tif", np.random.default_rng(0), 16)
    (tmp_path / "dataset.json").write_text(content)
    lines = _check_fails(tmp_path, "ucm", capsys, text)
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path.resolve()}/dataset.json: ")


def test_check_symlink_outside(tmp_path, capsys):
    fs = make_karpathy(tmp_path / "d", "rsitmd")
    target = fs.image_dir / fs.splits["test"][0]
    outside = tmp_path / "outside.tif"
    target.rename(outside)
    os.symlink(outside, target)
    _check_fails(tmp_path / "d", "rsitmd", capsys, f"image name '{target.name}' resolves outside the image folder")


def test_check_non_utf8_caption_file(tmp_path, capsys):
    fs = make_precomp(tmp_path, "rsitmd")
    caps = fs.ann_file / "train_caps.txt"
    data = caps.read_bytes()
    off = data.index(b"\n", 100) + 3
    caps.write_bytes(data[:off] + b"\xe9t\xe9" + data[off:])
    line = data.count(b"\n", 0, off) + 1
    _check_fails(tmp_path, "rsitmd", capsys, f"train_caps.txt: not valid UTF-8 at byte offset {off} (line {line})")


def test_check_user_errors_exit_2(tmp_path, capsys):
    code, _, err = run_main(["data", "check", "ucm", "--data-root", str(tmp_path / "nope")], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope'}: data root folder not found"
    code, _, err = run_main(["data", "check", "rsicdd", "--data-root", str(tmp_path)], capsys)
    assert code == 2 and "unknown dataset 'rsicdd' (did you mean 'rsicd'?)" in err


def test_check_real_rsitmd_captions_at_scale(tmp_path, monkeypatch):
    """Real caption files at scale. No images: existence is faked (creating 4743 files is slow on
    a busy disk) and decoding is off, so this checks the text side of `check_dataset`."""
    import rsbench.datasets.check as check_mod

    img = tmp_path / "images"
    img.mkdir()
    pre = shared_data("data/captions/rsitmd_precomp")
    monkeypatch.setattr(check_mod.os.path, "isfile", lambda p: str(p).startswith(str(img.resolve())))
    rep = check_dataset("rsitmd", ann_file=pre, image_dir=img, decode=False)
    assert {k: (v.n_images, v.n_captions) for k, v in rep.splits.items()} == {
        "train": (3435, 17155), "val": (856, 4280), "test": (452, 2260)}
    assert len(rep.splits["train"].classes) == 33
    # the real train captions have 4 images whose 5 captions are blank lines: a warning (counted,
    # left out of training), not an error, and not hidden
    assert rep.ok and rep.splits["train"].n_empty_captions == 20
    assert [w.message.split(" (first")[0] for w in rep.warnings] == [
        "20 empty caption(s) in train left out of training", ("4 train image(s) have no caption and are left out "
        "of training")]
    assert all(w.file.endswith("train_caps.txt") for w in rep.warnings)


def test_synth_command(tmp_path):
    pytest.importorskip("rsbench.datasets.synthetic")
    res = run_data(["synth", str(tmp_path / "syn"), "--n-images", "12", "--image-size", "16", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "syn" / "dataset.json").is_file() and "wrote" in res.stdout
    assert run_data(["check", "synthetic", "--data-root", str(tmp_path / "syn")]).exit_code == 0


def test_cache_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    make_karpathy(tmp_path / "d", "rsicd")
    res = run_data(["cache", "rsicd", "--data-root", str(tmp_path / "d"), "--image-size", "16"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("built ") and "(18 images, 17x17)" in res.stdout
    assert len(list((tmp_path / "cache" / "images").glob("*_17.u8"))) == 1
    res = run_data(["cache", "rsicd", "--data-root", str(tmp_path / "d"), "--image-size", "16"])
    assert res.stdout.startswith("reused ")


def test_cache_command_builds_the_cache_the_methods_train_from(tiny_synthetic, isolated_cache, capsys):
    """#21: `bench data cache synthetic` built a 224/244 px cache that no run on the 64 px set reads. With --methods
    it builds the size each method trains at on this dataset (vsepp 64 -> 70, amfmn 64 -> 72 on the synthetic set),
    and the training engine then finds those caches instead of building its own."""
    from rsbench.config.resolve import resolve_config
    from rsbench.datasets import DataSource, load_dataset
    from rsbench.engine.train import build_image_cache

    code, out, err = run_main(["data", "cache", "synthetic", "--data-root", str(tiny_synthetic), "--methods",
                               "vsepp,amfmn"], capsys)
    assert code == 0, err
    assert "(40 images, 70x70) for vsepp" in out and "(40 images, 72x72) for amfmn" in out
    assert sorted(p.name.rsplit("_", 1)[1] for p in (isolated_cache / "images").glob("*.u8")) == ["70.u8", "72.u8"]
    data = load_dataset(DataSource("synthetic", tiny_synthetic))
    for m in ("vsepp", "amfmn"):
        cfg = resolve_config(m, "synthetic", overrides={"train.image_cache": True})
        assert build_image_cache(data, cfg).reused, m
    code, _, err = run_main(["data", "cache", "synthetic", "--data-root", str(tiny_synthetic)], capsys)
    assert code == 2 and "--methods" in err and "--image-size" in err and len(err.strip().splitlines()) == 1


def test_numbered_rsicd_files_are_not_a_class_of_their_own(tmp_path):
    """#21: RSICD names some images by number (00001.jpg, no class prefix): class_from_name gives ''
    for them, and `data check` counted that as a 31st class."""
    from rsbench.datasets.assembly import class_from_name
    from rsbench.datasets.check import class_counts

    names = ["airport_1.jpg", "airport_2.jpg", "beach_1.jpg", "00001.jpg", "00002.jpg"]
    assert class_counts([class_from_name(n) for n in names]) == {"airport": 2, "beach": 1}
