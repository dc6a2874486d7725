"""`bench data audit` (datasets/audit.py, hashing.py) and the eval.exclude function (evaluation/exclusion.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from fakedata import make_karpathy
from PIL import Image
from typer.testing import CliRunner

from rsbench.contracts import Split
from rsbench.datasets import load_dataset
from rsbench.datasets.audit import caption_audit, run_audit
from rsbench.evaluation.exclusion import exclude_images, excluded_metrics, leaked_images
from rsbench.evaluation.metrics import compute_ranks, evaluate_scores


def _split(captions: list[str], cap2img: list[int]) -> Split:
    n = max(cap2img) + 1
    return Split("test", [Path(f"{i}.jpg") for i in range(n)], [f"{i}.jpg" for i in range(n)], captions,
                 np.array(cap2img, dtype=np.int64))


def test_caption_ceiling_hand_worked():
    # 'a' twice on image 0 and once on image 1: one ranking serves all three queries -> 2 hits at best
    s = _split(["a", "a", "b", "a", "c"], [0, 0, 0, 1, 2])
    row, groups = caption_audit(s)
    assert row["t2i_r1_ceiling"] == pytest.approx(80.0)
    assert row["n_captions_shared_across_images"] == 3 and row["n_distinct"] == 3
    assert row["n_captions_repeated_within_image"] == 1
    assert groups == [{"text": "a", "images": ["0.jpg", "1.jpg"], "n_captions": 3}]


def test_caption_ceiling_is_reached_by_the_best_scorer():
    """Independent check: a scorer whose column for each text is one-hot on that text's best image
    (identical texts -> identical columns) reaches exactly the ceiling, by the metrics code."""
    rng = np.random.default_rng(0)
    texts = [f"t{k}" for k in rng.integers(0, 12, 60)]
    c2i = np.sort(rng.integers(0, 15, 60))
    c2i[:15] = np.arange(15)
    order = np.argsort(c2i, kind="stable")
    c2i = c2i[order]
    s = _split([texts[i] for i in order], c2i.tolist())
    best: dict[str, int] = {}
    for t in set(s.captions):
        imgs = [i for c, i in zip(s.captions, c2i.tolist()) if c == t]
        best[t] = max(set(imgs), key=lambda i: (imgs.count(i), -i))
    sims = np.zeros((s.n_images, s.n_captions))
    for c, t in enumerate(s.captions):
        sims[best[t], c] = 1.0
    _, t2i = compute_ranks(sims, c2i)
    assert caption_audit(s)[0]["t2i_r1_ceiling"] == pytest.approx(100.0 * np.mean(t2i == 1))


def _smooth(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A smooth random field (upsampled 6x6 noise): aerial-like low frequencies, unlike any other."""
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    return small.resize((size, size), Image.BICUBIC)


def _reencode(src: Path, dst: Path, fmt: str, quality: int = 60, resize: int | None = None) -> None:
    im = Image.open(src).convert("RGB")
    if resize:
        im = im.resize((resize, resize), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)  # lossy step first, then the target format
    Image.open(buf).convert("RGB").save(dst, fmt)


@pytest.fixture
def two_sets(tmp_path: Path):
    rng = np.random.default_rng(1)
    a = make_karpathy(tmp_path / "root" / "rsicd", "rsicd")
    b = make_karpathy(tmp_path / "root" / "rsitmd", "rsitmd")
    for fs in (a, b):
        for names in fs.splits.values():
            for n in names:
                _smooth(rng).save(fs.image_dir / n, "JPEG" if n.endswith(".jpg") else "TIFF")
    s0, s1, s2 = a.splits["test"][:3]
    t0, t1 = b.splits["train"][:2]
    r0 = a.splits["train"][0]
    _reencode(a.image_dir / s0, b.image_dir / t0, "TIFF", resize=60)  # JPEG -> TIFF, resized
    _reencode(a.image_dir / s1, b.image_dir / t1, "TIFF", quality=40)
    _reencode(a.image_dir / r0, a.image_dir / s2, "JPEG", quality=50)  # train image re-encoded into test
    want = {(("rsicd", "test", s0), ("rsitmd", "train", t0)), (("rsicd", "test", s1), ("rsitmd", "train", t1)),
            (("rsicd", "train", r0), ("rsicd", "test", s2))}
    return tmp_path / "root", want


def _pairs(result) -> set:
    def key(d: dict) -> tuple[str, str, str]:
        return d["dataset"], d["split"], d["filename"]

    return {tuple(sorted((key(p["a"]), key(p["b"])))) for p in result["image_duplicates"]}


def test_audit_finds_planted_copies_and_no_false_pairs(two_sets, isolated_cache, tmp_path, monkeypatch):
    root, want = two_sets
    dss = [load_dataset(n, data_root=root / n) for n in ("rsicd", "rsitmd")]
    result = run_audit(dss, tmp_path / "out", workers=2)
    assert _pairs(result) == {tuple(sorted(p)) for p in want}
    assert all(p["distance"] <= 6 for p in result["image_duplicates"])
    on_disk = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert set(on_disk) >= {"image_duplicates", "caption_duplicates", "ceilings"}
    assert "Near-duplicate images" in (tmp_path / "out" / "audit.md").read_text()
    test_member = {m[2] for pair in want for m in pair if m[:2] == ("rsicd", "test")}
    assert leaked_images(on_disk, "rsicd") == test_member and len(test_member) == 3
    # second run: every hash comes from the per-image cache
    from rsbench.datasets import hashing

    monkeypatch.setattr(hashing, "phash_file", lambda p: (_ for _ in ()).throw(AssertionError(f"rehashed {p}")))
    again = run_audit(dss, None, workers=1)
    assert _pairs(again) == _pairs(result)


def test_audit_cli_writes_json_and_md(two_sets, isolated_cache, tmp_path):
    from rsbench.cli.audit import audit

    root, _ = two_sets
    app = typer.Typer()
    app.command("audit")(audit)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["audit", "rsicd", "rsitmd", "--data-root", str(root), "--out",
                                   str(tmp_path / "o"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert len(data["image_duplicates"]) == 3
    assert data["ceilings"]["rsicd"]["test"]["n_captions"] > 0


def test_excluded_metrics_equal_metrics_of_the_smaller_test_set():
    rng = np.random.default_rng(3)
    c2i = np.repeat(np.arange(6), 2)
    sims = rng.normal(size=(6, 12))
    names = [f"{i}.jpg" for i in range(6)]
    got = excluded_metrics(sims, c2i, names, {"1.jpg", "4.jpg"})
    keep = [0, 2, 3, 5]  # by hand: rows 0,2,3,5 and their captions
    cols = [c for c in range(12) if c2i[c] in keep]
    ref = evaluate_scores(sims[keep][:, cols], np.repeat(np.arange(4), 2))
    assert got["mR"] == pytest.approx(ref["mR"]) and got["t2i_r1"] == pytest.approx(ref["t2i_r1"])
    assert got["excluded_images"] == ["1.jpg", "4.jpg"] and got["n_images"] == 4
    sub, new = exclude_images(sims, c2i, np.array([True, False, True, True, False, True]))
    assert sub.shape == (4, 8) and new.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_leaked_images_only_counts_pairs_with_training_data():
    audit = {"image_duplicates": [
        {"a": {"dataset": "rsicd", "split": "test", "filename": "x"}, "b": {"dataset": "rsitmd", "split": "train",
                                                                           "filename": "y"}, "distance": 1},
        {"a": {"dataset": "rsicd", "split": "test", "filename": "z"}, "b": {"dataset": "rsitmd", "split": "test",
                                                                           "filename": "w"}, "distance": 0},
        {"a": {"dataset": "rsicd", "split": "val", "filename": "v"}, "b": {"dataset": "rsicd", "split": "test",
                                                                          "filename": "u"}, "distance": 2}]}
    assert leaked_images(audit, "rsicd") == {"x", "u"}
    assert leaked_images(audit, "rsitmd") == set()
