"""The synthetic dataset generator: determinism, layout, captions that match the scene, learnability."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsbench.datasets.synthetic import CLASSES, generate_synthetic, synthetic_params_key
from rsbench.errors import UserError

# Nouns a caption may use for each recorded object kind (independent of the generator's tables).
KIND_NOUNS = {
    "plane": {"plane", "planes", "airplane", "airplanes", "aircraft"},
    "ship": {"ship", "ships", "vessel", "vessels"},
    "boat": {"boat", "boats", "motorboat", "motorboats", "yacht", "yachts"},
    "storage tank": {"tank", "tanks"},
    "building": {
        "building",
        "buildings",
        "house",
        "houses",
        "warehouse",
        "warehouses",
        "terminal",
        "terminals",
    },
    "car": {"car", "cars", "vehicle", "vehicles"},
    "tree": {"tree", "trees", "plant", "plants", "shrub", "shrubs"},
    "road": {"road", "roads", "street", "streets"},
    "river": {"river", "rivers"},
    "runway": {"runway", "runways"},
    "dock": {"dock", "docks", "pier", "piers", "wharf", "wharves"},
}
CLASS_WORDS = {
    "airport": {"airport", "airfield"},
    "harbor": {"harbor", "harbour", "port"},
    "sea": {"sea", "ocean"},
    "farmland": {"farmland", "farm"},
    "forest": {"forest", "woodland"},
    "desert": {"desert"},
    "residential": {"residential", "neighborhood"},
    "industrial": {"industrial", "factory"},
    "parking": {"parking", "park"},
    "meadow": {"meadow", "grassland", "lawn"},
}
COLOUR_WORDS = {"white", "grey", "red", "blue", "green", "yellow", "orange", "black", "brown"}
NUMBERS = {"one": 1, "two": 2, "three": 3}
MODIFIERS = COLOUR_WORDS | {
    "dark",
    "colorful",
    "cargo",
    "terminal",
    "oil",
    "storage",
    "small",
    "large",
    "big",
}
POSITION_WORDS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "upper": "top",
    "bottom": "bottom",
    "lower": "bottom",
    "center": "center",
    "middle": "center",
}


def _gen(tmp_path: Path, name: str, **kw) -> tuple[Path, dict]:
    kw.setdefault("n_images", 40)
    kw.setdefault("image_size", 32)
    p = generate_synthetic(tmp_path / name, **kw)
    return p, json.loads(p.read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_params_key(monkeypatch):
    assert synthetic_params_key(300, 64, 0) == "v1_n300_s64_seed0"
    assert synthetic_params_key(50, 256, 7) == "v1_n50_s256_seed7"
    # a new generator version gets a new cache folder: old copies are never reused for it
    from rsbench.datasets.synthetic import generate

    monkeypatch.setattr(generate, "SYNTHETIC_VERSION", 2)
    assert synthetic_params_key(300, 64, 0) == "v2_n300_s64_seed0"


def test_deterministic_and_seed_dependent(tmp_path):
    a, _ = _gen(tmp_path, "a", seed=3)
    b, _ = _gen(tmp_path, "b", seed=3)
    c, _ = _gen(tmp_path, "c", seed=4)
    fa, fb, fc = _files(a.parent), _files(b.parent), _files(c.parent)
    assert fa == fb  # identical JSON and image bytes
    assert fa.keys() == fc.keys()
    assert fa["dataset.json"] != fc["dataset.json"]
    n_diff = sum(fa[k] != fc[k] for k in fa if k.startswith("images"))
    assert n_diff == len(fa) - 1  # every image changes with the seed


def test_scene_content_independent_of_size(tmp_path):
    _, small = _gen(tmp_path, "s", image_size=16, n_images=20)
    _, big = _gen(tmp_path, "b", image_size=48, n_images=20)
    for x, y in zip(small["images"], big["images"]):
        assert x["scene"] == y["scene"] and x["sentences"] == y["sentences"]


def test_layout_counts_and_splits(tmp_path):
    _, d = _gen(tmp_path, "d", n_images=60, captions_per_image=3, split_fractions=(0.6, 0.2, 0.2))
    assert d["dataset"] == "synthetic"
    imgs = d["images"]
    assert len(imgs) == 60
    assert [im["imgid"] for im in imgs] == list(range(60))
    assert Counter(im["class"] for im in imgs) == {c: 6 for c in CLASSES}
    splits = Counter(im["split"] for im in imgs)
    assert splits == {"train": 36, "val": 12, "test": 12}
    per = Counter((im["class"], im["split"]) for im in imgs)
    for c in CLASSES:  # stratified: 6 per class -> 3.6 / 1.2 / 1.2 each, within one
        assert (
            abs(per[c, "train"] - 3.6) < 1 and abs(per[c, "val"] - 1.2) < 1 and abs(per[c, "test"] - 1.2) < 1
        )
    sentids = []
    names = set()
    for im in imgs:
        assert re.fullmatch(rf"{im['class']}_\d+\.png", im["filename"])
        names.add(im["filename"])
        assert len(im["sentences"]) == 3 and im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for s in im["sentences"]:
            assert s["imgid"] == im["imgid"] and s["raw"].strip() and s["tokens"]
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
        sentids += im["sentids"]
    assert len(names) == 60
    assert sentids == list(range(180))


def test_images_exist_with_requested_size(tmp_path):
    p, d = _gen(tmp_path, "d", n_images=20, image_size=40)
    folder = p.parent / "images"
    assert sorted(x.name for x in folder.iterdir()) == sorted(im["filename"] for im in d["images"])
    for im in d["images"]:
        with Image.open(folder / im["filename"]) as img:
            assert img.size == (40, 40) and img.mode == "RGB"
    assert not [x for x in p.parent.parent.iterdir() if x.name.startswith(".")]  # no temp folder left


def test_large_images(tmp_path):
    p, d = _gen(tmp_path, "d", n_images=10, image_size=256, captions_per_image=1)
    with Image.open(p.parent / "images" / d["images"][0]["filename"]) as img:
        assert img.size == (256, 256)


def test_captions_match_scene_content(tmp_path):
    _, d = _gen(tmp_path, "d", n_images=200, image_size=16)
    n_caps = n_colour = n_count = n_pos = 0
    raw_all = []
    for im in d["images"]:
        scene = im["scene"]
        groups = {g["kind"]: g for g in scene["objects"]}
        assert scene["objects"] and all(g["count"] >= 1 for g in scene["objects"])
        rel = scene["relation"]
        assert rel is None or rel["subject"] in groups
        vocab = set(CLASS_WORDS[im["class"]]).union(*(KIND_NOUNS[k] for k in groups))
        subject_nouns = KIND_NOUNS[rel["subject"]] if rel else set()
        other_classes = set().union(*(w for c, w in CLASS_WORDS.items() if c != im["class"])) - vocab
        mentions_subject = False
        for s in im["sentences"]:
            toks = s["tokens"]
            raw_all.append(s["raw"])
            n_caps += 1
            assert vocab & set(toks), (im["filename"], s["raw"])  # mentions the class or its objects
            mentions_subject |= bool(subject_nouns & set(toks))
            for i, t in enumerate(toks):
                kind = next((k for k, nouns in KIND_NOUNS.items() if t in nouns), None)
                if kind is None or kind not in groups or i == 0:
                    continue
                prev = toks[i - 1]
                if prev in COLOUR_WORDS:  # a colour right before a noun is that object's colour
                    assert groups[kind]["colour"].split()[-1] == prev, (im["filename"], s["raw"])
                    n_colour += 1
                j = i - 1
                while j >= 0 and toks[j] in MODIFIERS:
                    j -= 1
                if j >= 0 and toks[j] in NUMBERS:  # 'three white cargo ships': the group's count
                    assert groups[kind]["count"] == NUMBERS[toks[j]], (im["filename"], s["raw"])
                    n_count += 1
            if rel and rel["type"] == "position":
                for t in toks:
                    if t in POSITION_WORDS:
                        assert POSITION_WORDS[t] == rel["object"], (im["filename"], s["raw"])
                        n_pos += 1
            assert not other_classes & set(toks), (im["filename"], s["raw"])
        assert mentions_subject or rel is None, im["filename"]
    assert n_colour > 200 and n_count > 100 and n_pos > 100  # the checks above did bite
    # paraphrase variety and some realistic mess
    assert len(set(raw_all)) > 0.8 * len(raw_all)
    assert any(r[:1].isupper() for r in raw_all) and any("  " in r for r in raw_all)
    assert any(not r.endswith(" .") for r in raw_all)
    dup_images = sum(len({s["raw"] for s in im["sentences"]}) < len(im["sentences"]) for im in d["images"])
    assert 0 < dup_images < 0.5 * len(d["images"])


def test_refuses_non_empty_out_dir(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_synthetic(out, n_images=10, image_size=16)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_synthetic(empty, n_images=10, image_size=16) == empty / "dataset.json"


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    from rsbench.datasets.synthetic import generate

    calls = []
    real = generate.make_scene

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("boom")
        return real(*a, **kw)

    monkeypatch.setattr(generate, "make_scene", flaky)
    with pytest.raises(RuntimeError):
        generate_synthetic(tmp_path / "out", n_images=10, image_size=16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kw",
    [
        {"n_images": 0},
        {"image_size": 4},
        {"seed": -1},
        {"captions_per_image": 0},
        {"split_fractions": (0.5, 0.2, 0.2)},
    ],
)
def test_bad_arguments(tmp_path, kw):
    with pytest.raises(UserError):
        generate_synthetic(tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_colour_histograms_carry_the_class(tmp_path):
    """Nearest class centroid on colour histograms of train images classifies test images well above chance."""
    p, d = _gen(tmp_path, "d", n_images=200, image_size=32)
    folder = p.parent / "images"

    def hist(name: str) -> np.ndarray:
        with Image.open(folder / name) as img:
            a = np.asarray(img.convert("RGB")) // 64
        h = np.bincount((a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel(), minlength=64).astype(float)
        return h / h.sum()

    x = np.stack([hist(im["filename"]) for im in d["images"]])
    y = np.array([CLASSES.index(im["class"]) for im in d["images"]])
    split = np.array([im["split"] for im in d["images"]])
    train, test = split != "test", split == "test"
    centroids = np.stack([x[train & (y == c)].mean(0) for c in range(len(CLASSES))])
    pred = np.argmin(((x[test][:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    acc = float((pred == y[test]).mean())
    assert acc >= 0.5, acc  # chance is 0.1


def test_same_bytes_as_version_1(tmp_path):
    """The tiny test set (40 images, 32 px, seed 0) is the one SYNTHETIC_VERSION 1 has always drawn.

    Published synthetic numbers rest on these bytes. The hashes were taken from a copy written by
    the generator before it became a subpackage; pixels are hashed decoded (PNG compression may
    differ between zlib builds).
    """
    p, d = _gen(tmp_path, "d", n_images=40, image_size=32, seed=0)
    pixels = hashlib.sha256()
    for im in d["images"]:
        with Image.open(p.parent / "images" / im["filename"]) as img:
            pixels.update(np.asarray(img.convert("RGB")).tobytes())
    hint = "generator output changed: bump SYNTHETIC_VERSION, or a numpy/Pillow upgrade changed drawing"
    assert hashlib.sha256(p.read_bytes()).hexdigest() == (
        "9931cb10a96646458ff499835abe8a2f8a0e8bc73f92d92d41c6573075209d1e"
    ), hint
    assert pixels.hexdigest() == "a4662669b7a7acf93ffb4b89fd5d7b6d010d8fe13168667dfd5a32172a929137", hint


def test_functions_at_most_80_lines():
    """Every function of the synthetic subpackage fits on a screen (issue 14's rule)."""
    folder = Path(__file__).resolve().parents[1] / "rsbench" / "datasets" / "synthetic"
    files = sorted(folder.glob("*.py"))
    assert len(files) > 5
    long = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{f.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long
