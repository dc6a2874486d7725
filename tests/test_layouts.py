"""The layouts of #17 read from generated copies in their real structure (tests/fake_layouts.py).

Each test checks counts per split and captions per image, and where the same data exists in the
Karpathy layout, that both layouts give the same records (names, split, captions, in order).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_layouts import make_csv, make_hf_parquet, make_nwpu, make_pir_json, make_verify
from fakedata import make_karpathy, make_precomp

from rsbench.datasets import DataSource, load_dataset
from rsbench.datasets.check import check_dataset, format_report
from rsbench.datasets.images import load_image
from rsbench.errors import DataError, UserError


def _records(ds, strip_folder: bool = False) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """split -> [(image name, its captions)] in split order; names without folders if asked."""
    out = {}
    for split in ("train", "val", "test"):
        s = ds.split(split)
        caps: list[list[str]] = [[] for _ in range(s.n_images)]
        for t, i in zip(s.captions, s.cap2img.tolist()):
            caps[i].append(t)
        names = [Path(n).name if strip_folder else n for n in s.image_names]
        out[split] = sorted(zip(names, map(tuple, caps)))
    return out


@pytest.fixture
def rsicd(tmp_path: Path):
    return make_karpathy(tmp_path / "karpathy", "rsicd")


def test_hf_parquet_same_records_as_karpathy_and_images_from_bytes(tmp_path, rsicd, isolated_cache):
    make_hf_parquet(tmp_path / "hf", rsicd)
    ds = load_dataset("rsicd", data_root=tmp_path / "hf")
    ref = load_dataset("rsicd", data_root=rsicd.root)
    assert ds.notes["layout"] == "hf_parquet"
    assert [ds.split(s).n_images for s in ("train", "val", "test")] == [12, 3, 3]
    assert _records(ds) == _records(ref)
    assert sorted(np.bincount(ds.test.cap2img).tolist()) == sorted(len(rsicd.captions[n]) for n in rsicd.splits["test"])
    # the images are the parquet's bytes: decoded pixels equal the Karpathy copy's files
    for name, path in zip(ds.test.image_names, ds.test.image_paths):
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(rsicd.image_dir / name)))
    assert str(ds.image_dir).startswith(str(isolated_cache))
    report = check_dataset("rsicd", data_root=tmp_path / "hf")
    assert report.ok and report.layout == "hf_parquet" and "layout: hf_parquet" in format_report(report)
    assert sum(s.n_images for s in report.splits.values()) == 18
    again = load_dataset("rsicd", data_root=tmp_path / "hf")  # the written images are reused
    assert again.fingerprint == ds.fingerprint and again.image_dir == ds.image_dir


def test_hf_parquet_image_cache_builds(tmp_path, rsicd, isolated_cache):
    from rsbench.datasets.cache import ImageCache

    make_hf_parquet(tmp_path / "hf", rsicd)
    ds = load_dataset("rsicd", data_root=tmp_path / "hf")
    cache = ImageCache.build(ds, 8, fingerprint=ds.fingerprint)
    assert len(cache) == 18 and cache.get_array(0).shape == (8, 8, 3)


def test_hf_parquet_without_image_bytes_is_one_line(tmp_path, rsicd, isolated_cache):
    import pandas as pd

    data = make_hf_parquet(tmp_path / "hf", rsicd)
    df = pd.read_parquet(data / "test-00000-of-00001.parquet")
    df["image"] = [{"bytes": None, "path": n} for n in df["filename"]]
    df.to_parquet(data / "test-00000-of-00001.parquet", index=False)
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet: row 0 .*'image' has no bytes"):
        load_dataset("rsicd", data_root=tmp_path / "hf")


def test_pir_json_same_records_val_used_as_is(tmp_path, rsicd):
    make_pir_json(tmp_path / "pir", rsicd)
    ds = load_dataset("rsicd", data_root=tmp_path / "pir")
    ref = load_dataset("rsicd", data_root=rsicd.root)
    assert ds.notes["layout"] == "pir_json" and "val_carving" not in ds.notes
    assert ds.train.image_names[0].startswith("train/") and ds.test.image_names[0].startswith("test/")
    assert _records(ds, strip_folder=True) == _records(ref)
    assert ds.train.image_classes == [rsicd.classes[Path(n).name] for n in ds.train.image_names]
    one = load_dataset("rsicd", ann_file=tmp_path / "pir" / "rsicd_test.json")  # --ann-file: one of the files
    assert one.fingerprint == ds.fingerprint


def test_csv_test_only_utf8_and_tab_filepath(tmp_path, rsicd):
    make_csv(tmp_path / "c1", rsicd)
    make_csv(tmp_path / "c2", rsicd, sep="\t", column="filepath")
    ref = _records(load_dataset("rsicd", data_root=rsicd.root))["test"]
    for root in (tmp_path / "c1", tmp_path / "c2"):
        ds = load_dataset("rsicd", data_root=root)
        assert ds.notes["layout"] == "csv" and ds.notes["encoding"] == {"rsicd_test.csv": "utf-8"}
        assert ds.train.n_images == 0 and ds.val.n_images == 0 and ds.test.n_images == 3
        assert _records(ds)["test"] == ref


def test_csv_gb18030_and_absolute_paths(tmp_path, rsicd):
    extra = "机场 附近 有 许多 建筑"  # GeoRSCLIP's RSICD CSV holds such text, encoded GB18030
    make_csv(tmp_path / "gb", rsicd, encoding="gb18030", absolute=True, extra_caption=extra)
    ds = load_dataset("rsicd", data_root=tmp_path / "gb")
    assert ds.notes["encoding"] == {"rsicd_test.csv": "gb18030"}
    assert ds.image_dir == (tmp_path / "gb" / "images").resolve()
    assert ds.test.image_names == rsicd.splits["test"]
    assert ds.test.captions.count(extra) == 3
    assert all(p.is_file() for p in ds.test.image_paths)


def test_csv_that_is_no_text_encoding_is_one_line(tmp_path, rsicd):
    make_csv(tmp_path / "bad", rsicd)
    (tmp_path / "bad" / "rsicd_test.csv").write_bytes(b"filename,title\nx.jpg,\xff\xff\xff\xff\n")
    with pytest.raises(DataError, match=r"rsicd_test.csv: not valid UTF-8 at byte offset"):
        load_dataset("rsicd", data_root=tmp_path / "bad")


def test_nwpu_counts_classes_and_folders(tmp_path):
    truth = make_nwpu(tmp_path / "nwpu")
    ds = load_dataset("nwpu", data_root=tmp_path / "nwpu")
    assert ds.notes["layout"] == "nwpu"
    assert [ds.split(s).n_images for s in ("train", "val", "test")] == [9, 3, 3]
    assert np.bincount(ds.train.cap2img).tolist() == [5] * 9
    for s in ("train", "val", "test"):
        split = ds.split(s)
        for k, n in enumerate(split.image_names):
            assert truth[n]["split"] == s
            assert split.image_classes[k] == truth[n]["class"]
            assert [split.captions[c] for c in split.captions_of(k)] == truth[n]["captions"]
    assert ds.test.image_paths[0].parent.parent.name == "NWPU_images"
    assert check_dataset("nwpu", data_root=tmp_path / "nwpu").layout == "nwpu"


def test_precomp_verify_files_give_the_val_split(tmp_path):
    fs = make_precomp(tmp_path, "rsitmd")
    want = make_verify(fs)
    ds = load_dataset("rsitmd", data_root=tmp_path)
    assert ds.notes["layout"] == "precomp_verify" and "val_carving" not in ds.notes
    assert ds.val.image_names == want["val"] and ds.train.image_names == want["train"]
    assert ds.test.image_names == fs.splits["test"]
    assert [ds.val.captions[c] for c in ds.val.captions_of(0)] == fs.captions[want["val"][0]]
    plain = load_dataset("rsitmd", data_root=tmp_path, layout="precomp")  # explicit: the plain layout
    assert plain.notes["layout"] == "precomp" and "val_carving" in plain.notes


def test_named_val_split_list_and_pir_json(tmp_path, rsicd):
    default = load_dataset("rsitmd", data_root=make_karpathy(tmp_path / "tmd", "rsitmd").root)
    chosen = default.train.image_names[:4]
    lst = tmp_path / "val.txt"
    lst.write_text("\n".join(chosen) + "\n")
    ds = load_dataset(DataSource("rsitmd", data_root=tmp_path / "tmd", val_split=lst))
    assert ds.val.image_names == sorted(chosen, key=default.train.image_names.index)
    assert ds.train.n_images == default.train.n_images + default.val.n_images - 4
    assert ds.test.image_names == default.test.image_names
    assert ds.fingerprint != default.fingerprint and ds.notes["val_split"]["n_val"] == 4
    lst.write_text("\n".join(chosen) + "\n\n")  # same names, other bytes: the file's hash counts
    assert load_dataset(DataSource("rsitmd", data_root=tmp_path / "tmd", val_split=lst)).fingerprint != ds.fingerprint
    # a PIR val JSON (names carry 'val/') as the val split of the Karpathy copy reproduces PIR's split
    make_pir_json(tmp_path / "pir", rsicd)
    k = load_dataset(DataSource("rsicd", data_root=rsicd.root, val_split=tmp_path / "pir" / "rsicd_val.json"))
    assert k.val.image_names == rsicd.splits["val"]


def test_named_val_split_refuses_test_and_unknown_images(tmp_path):
    fs = make_karpathy(tmp_path / "tmd", "rsitmd")
    bad = tmp_path / "val.txt"
    bad.write_text(fs.splits["test"][0] + "\n")
    with pytest.raises(DataError, match=r"val.txt: '.*' is a test image"):
        load_dataset(DataSource("rsitmd", data_root=fs.root, val_split=bad))
    bad.write_text("nope.tif\n")
    with pytest.raises(DataError, match=r"val.txt: 1 of 1 listed images are not in .* \(first: 'nope.tif'\)"):
        load_dataset(DataSource("rsitmd", data_root=fs.root, val_split=bad))


def test_unknown_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        load_dataset("rsicd", data_root=tmp_path / "empty")
    msg = str(e.value)
    assert "\n" not in msg
    for what in ("dataset_rsicd.json", "rsicd_precomp/", ".parquet", "rsicd_{train,val,test}.json", "*.csv"):
        assert what in msg


def _bench(*args: str, cwd: Path, env_cache: Path) -> subprocess.CompletedProcess[str]:

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "RSBENCH_CACHE": str(env_cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rsbench.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_test_only_csv_evaluates_with_epochs_0_and_refuses_training(tmp_path, rsicd):
    make_csv(tmp_path / "csv", rsicd)
    common = ("run", "--methods", "vsepp", "--dataset", "rsicd", "--data-root", str(tmp_path / "csv"),
              "--preset", "small", "--device", "cpu")
    train = _bench(*common, "--epochs", "1", "--out", str(tmp_path / "r1"), cwd=tmp_path, env_cache=tmp_path / "c")
    assert train.returncode == 2
    assert "rsicd: " in train.stderr and "has no train split" in train.stderr and "--epochs 0" in train.stderr
    assert "Traceback" not in train.stderr
    zero = _bench(*common, "--epochs", "0", "--out", str(tmp_path / "r0"), cwd=tmp_path, env_cache=tmp_path / "c")
    assert zero.returncode == 0, zero.stderr
    import json

    m = json.loads((tmp_path / "r0" / "rsicd" / "vsepp" / "seed0" / "metrics.json").read_text())
    assert m["n_images"] == 3
