"""Loaders in every real layout, path resolution, val carving, safety checks and image decoding."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fakedata import make_karpathy, make_precomp, write_image, write_tiff
from helpers import shared_data
from PIL import Image, ImageFile

from rsbench.datasets import get_dataset_info, list_datasets, load_dataset, load_image
from rsbench.datasets.assembly import carve_val, class_from_name
from rsbench.datasets.images import decode_image
from rsbench.errors import DataError, UserError


# ---- registry ------------------------------------------------------------------------------------
def test_registry_names_aliases_and_unknown():
    names = [d.name for d in list_datasets()]
    assert names == ["nwpu", "rsicd", "rsitmd", "sydney", "synthetic", "ucm"]
    assert get_dataset_info("UCM-captions").name == "ucm"
    assert get_dataset_info("sydney-captions").name == "sydney"
    info = get_dataset_info("rsicd")
    assert info.ann_files[0] == "dataset_rsicd.json" and info.image_dirs[0] == "RSICD_images"
    with pytest.raises(UserError, match=r"unknown dataset 'rsitdm'.*did you mean 'rsitmd'"):
        get_dataset_info("rsitdm")


# ---- Karpathy JSON, each real layout ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["ucm", "sydney", "rsicd", "rsitmd"])
def test_karpathy_layouts(tmp_path, name):
    fs = make_karpathy(tmp_path / name, name)
    ds = load_dataset(name, data_root=fs.root)
    assert ds.name == name and ds.image_dir == fs.image_dir.resolve()
    assert ds.ann_file == fs.ann_file.resolve()
    assert ds.notes["layout"] == "karpathy"
    all_names = ds.train.image_names + ds.val.image_names + ds.test.image_names
    assert sorted(all_names) == sorted(fs.captions)
    assert ds.test.image_names == fs.splits["test"]
    for split in (ds.train, ds.val, ds.test):
        assert split.cap2img.dtype == np.int64 and len(split.cap2img) == split.n_captions
        for i, n in enumerate(split.image_names):
            assert [split.captions[c] for c in split.captions_of(i)] == fs.captions[n]
            assert split.image_paths[i] == fs.image_dir.resolve() / n and split.image_paths[i].is_absolute()
            assert split.image_classes[i] == fs.classes[n]
    if name == "rsitmd":  # no val in the JSON: carved from train, stratified, recorded
        vc = ds.notes["val_carving"]
        assert vc["n_val"] == ds.val.n_images == 3 and vc["n_train"] == ds.train.n_images == 12
        assert sorted(vc["val_images"]) == sorted(ds.val.image_names)
        assert not set(ds.val.image_names) & set(ds.test.image_names)
    else:
        assert "val_carving" not in ds.notes and ds.val.image_names == fs.splits["val"]
    if name == "rsicd":  # unequal captions per image come from the data
        counts = Counter(ds.train.cap2img.tolist())
        assert set(counts.values()) == {4, 5, 6}


def test_caption_normalisation_and_class_sources(tmp_path):
    img = tmp_path / "images"
    for n in ("airport_12.jpg", "7.jpg", "dense_residential_3.jpg"):
        write_image(img / n, np.random.default_rng(0), 16)
    ann = {"images": [
        {"filename": "airport_12.jpg", "split": "train", "sentences": [{"raw": "  A  plane\t\tis here . \n"}]},
        {"filename": "7.jpg", "split": "test", "class": "river", "sentences": [{"raw": "x"}, {"raw": "y"}]},
        {"filename": "dense_residential_3.jpg", "split": "restval", "sentences": [{"raw": "z"}]},
    ]}
    (tmp_path / "dataset.json").write_text(json.dumps(ann))
    ds = load_dataset("ucm", data_root=tmp_path, val_fraction=0.5)
    assert ds.test.image_classes == ["river"]  # explicit "class" key wins
    all_train = dict(zip(ds.train.image_names + ds.val.image_names, ds.train.image_classes + ds.val.image_classes))
    assert all_train == {"airport_12.jpg": "airport", "dense_residential_3.jpg": "dense_residential"}
    caps = ds.train.captions + ds.val.captions
    assert "A plane is here ." in caps  # raw kept (case, punctuation) but stripped / collapsed
    assert ds.notes["split_remap"] == {"restval": {"to": "train", "n_images": 1}}
    assert class_from_name("airport_12.jpg") == "airport" and class_from_name("12.tif") == ""


def test_fingerprint_tracks_annotation_and_split(tmp_path):
    fs = make_karpathy(tmp_path / "r", "rsitmd")
    a = load_dataset("rsitmd", data_root=fs.root)
    assert load_dataset("rsitmd", data_root=fs.root).fingerprint == a.fingerprint
    b = load_dataset("rsitmd", data_root=fs.root, val_seed=1)
    assert b.fingerprint != a.fingerprint and b.val.image_names != a.val.image_names
    obj = json.loads(fs.ann_file.read_text())
    obj["images"][0]["sentences"][0]["raw"] += " changed"
    fs.ann_file.write_text(json.dumps(obj))
    assert load_dataset("rsitmd", data_root=fs.root).fingerprint != a.fingerprint


# ---- finding files ----------------------------------------------------------------------------------
def test_separate_ann_file_and_image_dir_and_variants(tmp_path):
    fs = make_karpathy(tmp_path / "copy", "rsicd")
    moved = tmp_path / "elsewhere" / "pics"
    moved.parent.mkdir()
    fs.image_dir.rename(moved)
    ds = load_dataset("rsicd", ann_file=fs.ann_file, image_dir=moved)
    assert ds.image_dir == moved.resolve() and ds.test.n_images == 3
    # images directly in the root, next to the JSON
    for p in moved.iterdir():
        p.rename(fs.root / p.name)
    ds2 = load_dataset("rsicd", data_root=fs.root)
    assert ds2.image_dir == fs.root.resolve() and ds2.fingerprint == ds.fingerprint
    # a folder named `images` instead of RSICD_images
    (fs.root / "images").mkdir()
    for p in fs.root.glob("*.jpg"):
        p.rename(fs.root / "images" / p.name)
    assert load_dataset("rsicd", data_root=fs.root).image_dir == (fs.root / "images").resolve()
    # a folder nested in itself by a zip extraction
    (fs.root / "images").rename(fs.root / "tmp")
    (fs.root / "images").mkdir()
    (fs.root / "tmp").rename(fs.root / "images" / "images")
    assert load_dataset("rsicd", data_root=fs.root).image_dir == (fs.root / "images" / "images").resolve()


def test_resolution_errors(tmp_path):
    with pytest.raises(UserError, match="data root folder not found"):
        load_dataset("ucm", data_root=tmp_path / "nope")
    with pytest.raises(UserError, match="give --data-root"):
        load_dataset("ucm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no annotation found \(looked for dataset.json"):
        load_dataset("ucm", data_root=tmp_path / "empty")
    (tmp_path / "empty" / "dataset.json").write_text('{"images": []}')
    with pytest.raises(UserError, match="no image folder found.*pass --image-dir"):
        load_dataset("ucm", data_root=tmp_path / "empty")
    with pytest.raises(UserError, match="unknown layout"):
        load_dataset("ucm", data_root=tmp_path / "empty", layout="coco")


# ---- AMFMN precomp -----------------------------------------------------------------------------------
def test_precomp_layout(tmp_path):
    fs = make_precomp(tmp_path, "rsitmd", test_caps=(5, 4, 6))
    ds = load_dataset("rsitmd", data_root=tmp_path)
    assert ds.notes["layout"] == "precomp" and ds.ann_file == fs.ann_file.resolve()
    assert ds.test.image_names == fs.splits["test"]
    assert Counter(ds.test.cap2img.tolist()) == {0: 5, 1: 4, 2: 6}
    assert sorted(ds.train.image_names + ds.val.image_names) == sorted(fs.splits["train"])
    assert ds.notes["val_carving"]["n_val"] == ds.val.n_images == 3
    for split in (ds.train, ds.val, ds.test):
        for i, n in enumerate(split.image_names):
            assert [split.captions[c] for c in split.captions_of(i)] == fs.captions[n]
    # the same via the precomp folder itself as --ann-file, and as --data-root
    assert load_dataset("rsitmd", ann_file=fs.ann_file, image_dir=fs.image_dir).fingerprint == ds.fingerprint
    assert load_dataset("rsitmd", data_root=fs.ann_file).fingerprint == ds.fingerprint


def test_precomp_vs_json_ambiguity_and_explicit_layout(tmp_path):
    make_precomp(tmp_path, "rsitmd")
    fs = make_karpathy(tmp_path, "rsitmd")
    with pytest.raises(UserError, match="holds both dataset_RSITMD.json and the precomp folder"):
        load_dataset("rsitmd", data_root=tmp_path)
    assert load_dataset("rsitmd", data_root=tmp_path, layout="karpathy").ann_file == fs.ann_file.resolve()
    assert load_dataset("rsitmd", data_root=tmp_path, layout="precomp").notes["layout"] == "precomp"


def test_precomp_bad_caption_count(tmp_path):
    fs = make_precomp(tmp_path, "rsicd", ext=".jpg")
    caps = fs.ann_file / "train_caps.txt"
    caps.write_text(caps.read_text() + "one more caption\n")
    with pytest.raises(DataError, match=r"train_caps.txt: 76 captions for 15 images in train_filename.txt is not a whole"):
        load_dataset("rsicd", data_root=tmp_path)


def test_precomp_non_utf8(tmp_path):
    fs = make_precomp(tmp_path, "rsitmd")
    caps = fs.ann_file / "test_caps.txt"
    data = caps.read_bytes()
    caps.write_bytes(data[:10] + b"\xff\xfe" + data[10:])
    with pytest.raises(DataError, match=r"test_caps.txt: not valid UTF-8 at byte offset 10 \(line 1\)"):
        load_dataset("rsitmd", data_root=tmp_path)


@pytest.mark.parametrize("name,counts", [
    ("rsitmd", {"train": (3435, 17155), "val": (856, 4280), "test": (452, 2260)}),
    ("rsicd", {"train": (7862, 39310), "val": (1966, 9830), "test": (1093, 5465)}),
])
def test_real_precomp_captions(tmp_path, name, counts):
    """Text parsing of the real AMFMN caption files (images not needed: verify_images=False)."""
    ds = load_dataset(name, ann_file=shared_data(f"data/captions/{name}_precomp"), image_dir=tmp_path,
                      verify_images=False)
    got = {s.name: (s.n_images, s.n_captions) for s in (ds.train, ds.val, ds.test)}
    assert got == counts
    assert ds.notes["train_captions_per_image"] == 5
    assert all(len(ds.test.captions_of(i)) == 5 for i in range(0, ds.test.n_images, 50))
    if name == "rsicd":  # the spec's "3331 distinct texts": one pair differs only by spacing
        assert len(set(ds.test.captions)) == 3330
        assert ds.test.image_names[0] == "airport_1.jpg" or ds.test.image_names[0].endswith(".jpg")
    else:
        assert len({c.lower() for c in ds.test.captions}) == 2108
        # the 20 blank lines (4 images x 5) are left out of training, counted, and warned about
        assert "" not in ds.train.captions + ds.val.captions and ds.notes["empty_train_captions"] == 20


# ---- val carving --------------------------------------------------------------------------------------
def _carve_props(names, classes, fraction, seed):
    val = carve_val(names, classes, fraction, seed)
    assert np.array_equal(val, carve_val(names, classes, fraction, seed))  # deterministic
    assert len(set(val.tolist())) == len(val) and np.all(np.diff(val) > 0)
    per = Counter(classes)
    vper = Counter(classes[i] for i in val)
    for c, n in per.items():  # each class's val share within rounding
        assert abs(vper.get(c, 0) - n * fraction) <= 0.5 + 1e-9 or vper.get(c, 0) == n - 1
    return val


def test_val_carving_stratified_deterministic_order_free():
    rng = np.random.default_rng(3)
    names = [f"{c}_{i}.tif" for c in ("a", "b", "cc") for i in range(int(rng.integers(5, 40)))]
    classes = [class_from_name(n) for n in names]
    val = _carve_props(names, classes, 0.2, 0)
    assert not np.array_equal(val, carve_val(names, classes, 0.2, 1))
    # independent of the order the annotation lists the images
    perm = rng.permutation(len(names))
    val_p = carve_val([names[i] for i in perm], [classes[i] for i in perm], 0.2, 0)
    assert sorted(names[perm[i]] for i in val_p) == sorted(names[i] for i in val)
    with pytest.raises(UserError, match="bad val fraction"):
        carve_val(names, classes, 1.0, 0)


def test_val_carving_real_rsitmd_train():
    names = (shared_data("data/captions/rsitmd_precomp") / "train_filename.txt").read_text().split()
    assert len(names) == 4291
    classes = [class_from_name(n) for n in names]
    val = _carve_props(names, classes, 0.2, 0)
    # Per-class round-half-up of 0.2 * n_c gives the field's 3435 / 856 (a global round would give 858).
    assert (len(names) - len(val), len(val)) == (3435, 856)
    assert sum(math.floor(n * 0.2 + 0.5) for n in Counter(classes).values()) == 856


# ---- safety and robustness ------------------------------------------------------------------------------
def _json_with_names(tmp_path, names):
    (tmp_path / "images").mkdir(exist_ok=True)
    imgs = [{"filename": n, "split": "test", "sentences": [{"raw": "a b"}]} for n in names]
    p = tmp_path / "dataset_rsicd.json"
    p.write_text(json.dumps({"images": imgs}))
    return p


@pytest.mark.parametrize("bad,msg", [
    ("../secret.jpg", r"images\[1\]: image name '../secret.jpg' escapes the image folder"),
    ("sub/../../x.jpg", "escapes the image folder"),
    ("/etc/passwd", r"images\[1\]: image name '/etc/passwd' is an absolute path"),
])
def test_names_escaping_the_image_folder(tmp_path, bad, msg):
    ann = _json_with_names(tmp_path, ["ok_1.jpg", bad])
    with pytest.raises(DataError, match=msg) as e:
        load_dataset("rsicd", data_root=tmp_path, verify_images=False)
    assert str(ann.resolve()) in str(e.value)


def test_symlink_pointing_outside(tmp_path):
    ann = _json_with_names(tmp_path, ["ok_1.jpg", "link_2.jpg"])
    outside = tmp_path / "outside.jpg"
    write_image(outside, np.random.default_rng(0), 16)
    write_image(tmp_path / "images" / "ok_1.jpg", np.random.default_rng(0), 16)
    os.symlink(outside, tmp_path / "images" / "link_2.jpg")
    with pytest.raises(DataError, match=r"images\[1\]: image name 'link_2.jpg' resolves outside the image folder") as e:
        load_dataset("rsicd", data_root=tmp_path)
    assert str(ann.resolve()) in str(e.value)
    # a symlink that stays inside the folder is fine
    os.remove(tmp_path / "images" / "link_2.jpg")
    os.symlink(tmp_path / "images" / "ok_1.jpg", tmp_path / "images" / "link_2.jpg")
    assert load_dataset("rsicd", data_root=tmp_path).test.n_images == 2


def test_missing_images_named_and_counted(tmp_path):
    fs = make_karpathy(tmp_path, "ucm")
    (fs.image_dir / "2.tif").unlink()
    (fs.image_dir / "5.tif").unlink()
    with pytest.raises(DataError, match=r"imgs/2.tif: image file not found \(images\[1\] of .*dataset.json\); "
                       r"2 of 18 listed images are missing"):
        load_dataset("ucm", data_root=tmp_path)
    assert load_dataset("ucm", data_root=tmp_path, verify_images=False).train.n_images == 12


@pytest.mark.parametrize("content,msg", [
    ('{"images": [', r"dataset.json: not valid JSON \(line 1 column 13"),
    ('[1, 2]', "dataset.json: top level must be an object with an 'images' list"),
    ('{"imgs": []}', "dataset.json: top level: missing key 'images'"),
    ('{"images": [{"split": "train", "sentences": []}]}', r"images\[0\]: missing key 'filename'"),
    (('{"images": [{"filename": "1.tif", "split": "train", "sentences": [{"raw": "a"}]}, '
      '{"filename": "2.tif", "split": "train"}]}'), r"images\[1\] \('2.tif'\): missing key 'sentences'"),
    ('{"images": [{"filename": "1.tif", "split": "train", "sentences": [{"raw": "a"}, {"tokens": []}]}]}',
     r"images\[0\] \('1.tif'\) sentences\[1\]: missing key 'raw'"),
    ('{"images": [{"filename": "1.tif", "sentences": []}]}', r"images\[0\] \('1.tif'\): missing key 'split'"),
    (('{"images": [{"filename": "1.tif", "split": "test", "sentences": []}, '
      '{"filename": "1.tif", "split": "train", "sentences": []}]}'), r"images\[1\]: image '1.tif' is listed twice"),
])
def test_bad_json(tmp_path, content, msg):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(DataError, match=msg):
        load_dataset("ucm", data_root=tmp_path, verify_images=False)


def test_non_utf8_json(tmp_path):
    (tmp_path / "imgs").mkdir()
    data = b'{"images": [{"filename": "1.tif", "split": "train",\n"sentences": [{"raw": "caf\xe9"}]}]}'
    (tmp_path / "dataset.json").write_bytes(data)
    off = data.index(b"\xe9")
    with pytest.raises(DataError, match=rf"dataset.json: not valid UTF-8 at byte offset {off} \(line 2\)"):
        load_dataset("ucm", data_root=tmp_path, verify_images=False)


# ---- synthetic -----------------------------------------------------------------------------------------
def test_synthetic_generated_once_into_cache(tmp_path, monkeypatch):
    from rsbench.datasets.synthetic import store

    calls = []

    def fake_build(folder, *args):
        calls.append(Path(folder))
        assert not Path(folder).name.startswith("v1_n300")  # written to a temp folder, renamed after
        make_karpathy(Path(folder), "sydney", per_class=6)  # per class 4 train, 1 val, 1 test; dataset.json + images/

    monkeypatch.setattr(store.generate, "_build", fake_build)
    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    # a half-written folder from a crashed older writer is not used
    (tmp_path / "cache" / "synthetic" / "v1_n300_s64_seed0").mkdir(parents=True)
    (tmp_path / "cache" / "synthetic" / "v1_n300_s64_seed0" / "half.png").write_bytes(b"")
    a = load_dataset("synthetic")
    b = load_dataset("synthetic")
    assert len(calls) == 1 and a.fingerprint == b.fingerprint
    assert a.image_dir == (tmp_path / "cache" / "synthetic" / "v1_n300_s64_seed0" / "images").resolve()
    assert not [p for p in (tmp_path / "cache" / "synthetic").iterdir() if p.name.startswith(".")]


def test_synthetic_real_generator(tmp_path, monkeypatch):
    pytest.importorskip("rsbench.datasets.synthetic")
    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path))
    from rsbench.datasets.synthetic import generate_synthetic

    ann = generate_synthetic(tmp_path / "s", n_images=20, image_size=16, seed=0)
    ds = load_dataset("synthetic", data_root=Path(ann).parent)
    assert ds.train.n_images + ds.val.n_images + ds.test.n_images == 20
    assert all(ds.train.image_classes)


# ---- images ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fname,variant,mode", [
    ("a.tif", "rgb8", "RGB"),
    ("a.tif", "grey8", "L"),
    ("a.tif", "grey16", "I;16"),
    ("a.tif", "rgb16", "RGB (16-bit)"),
    ("a.tif", "rgbn16", "RGB (16-bit, 4 bands)"),
    ("a.tif", "rgba8", "RGBA"),
    ("a.tif", "rgbn8", "RGB (4 bands)"),
    ("a.png", "palette", "P"),
    ("a.png", "grey16", "I;16"),
    ("a.jpg", "rgb8", "RGB"),
])
def test_load_image_variants_to_rgb(tmp_path, fname, variant, mode):
    p = tmp_path / fname
    write_image(p, np.random.default_rng(1), 20, variant)
    d = decode_image(p)
    assert d.image.mode == "RGB" and d.image.size == (20, 20) and d.mode == mode
    arr = np.asarray(load_image(p))
    truth = np.asarray(Image.open(tmp_path / fname).convert("RGB")) if variant in ("rgb8", "palette") else None
    if variant in ("grey8", "grey16"):
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    if truth is not None:
        assert np.array_equal(arr, truth)


def test_16bit_and_4band_scaling_is_consistent(tmp_path):
    """16-bit = v >> 8 for single- and multi-band alike; 4-band keeps the first three bands."""
    rng = np.random.default_rng(0)
    rgb16 = rng.integers(0, 65536, (8, 9, 3), dtype=np.uint16)
    write_tiff(tmp_path / "rgb16.tif", rgb16)
    write_tiff(tmp_path / "g16.tif", rgb16[..., 1])
    write_tiff(tmp_path / "rgbn16.tif", np.concatenate([rgb16, rgb16[..., :1] // 3], axis=2))
    write_tiff(tmp_path / "rgbn8.tif", np.concatenate([(rgb16 >> 8).astype(np.uint8)] * 2, axis=2)[..., :4])
    hi = (rgb16 >> 8).astype(np.uint8)
    assert np.array_equal(np.asarray(load_image(tmp_path / "rgb16.tif")), hi)
    assert np.array_equal(np.asarray(load_image(tmp_path / "rgbn16.tif")), hi)
    assert np.array_equal(np.asarray(load_image(tmp_path / "rgbn8.tif")), hi)
    assert np.array_equal(np.asarray(load_image(tmp_path / "g16.tif"))[..., 0], hi[..., 1])


def test_corrupt_and_truncated_images_raise(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    p = tmp_path / "t.jpg"
    write_image(p, np.random.default_rng(0), 32)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match=r"t.jpg: corrupt or truncated image \(image file is truncated"):
        load_image(p)
    q = tmp_path / "junk.tif"
    q.write_bytes(b"II*\0garbage")
    with pytest.raises(DataError, match="junk.tif: not a readable image"):
        load_image(q)
    with pytest.raises(DataError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")


# ---- the data source -----------------------------------------------------------------------------------
def test_data_source_is_the_one_parameter_list(tmp_path):
    import pickle

    from rsbench.datasets import DataSource

    fs = make_karpathy(tmp_path / "rsitmd", "rsitmd")
    src = DataSource("rsitmd", data_root=str(fs.root), val_seed=1)
    assert src.data_root == fs.root and pickle.loads(pickle.dumps(src)) == src
    by_name = load_dataset("rsitmd", data_root=fs.root, val_seed=1)
    assert load_dataset(src).fingerprint == by_name.fingerprint != load_dataset("rsitmd", data_root=fs.root).fingerprint
    with pytest.raises(TypeError, match="not both"):
        load_dataset(src, val_seed=2)
    # a grid over several datasets: root/<dataset> when that folder exists, else the root itself
    grid = DataSource("", data_root=tmp_path)
    assert grid.for_dataset("rsitmd").data_root == fs.root
    assert grid.for_dataset("rsitmd", several=False).data_root == tmp_path
    assert grid.for_dataset("ucm").data_root == tmp_path and grid.for_dataset("ucm").name == "ucm"
    rel = DataSource("ucm", data_root="rel", image_dir="~/imgs").absolute()
    assert rel.data_root == (Path.cwd() / "rel").resolve() and rel.image_dir == (Path.home() / "imgs").resolve()
    assert rel.ann_file is None


def test_display_names_come_from_the_catalogue():
    from rsbench.datasets import display_name

    assert [display_name(n) for n in ("rsicd", "RSITMD", "ucm", "sydney-captions")] == \
        ["RSICD", "RSITMD", "UCM-captions", "Sydney-captions"]
    assert display_name("synthetic") == "synthetic" and display_name("MyData") == "MyData"

