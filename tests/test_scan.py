"""SCAN: cross attention (t2i, i2t; LSE, AVG) against a literal per-pair reference and a hand-worked case,
blockwise scoring, training, and an end-to-end run on the tiny synthetic set."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsbench.errors import UserError
from rsbench.methods.base import Batch, MethodContext
from rsbench.methods.scan import SCAN, SCANConfig, xattn_block

CAPS = ["many planes are parked in an airport", "a plane at the airport", "green trees around a pond",
        "a pond with trees", "a dense residential area", "houses in a residential area", "a river in farmland",
        "farmland divided by a river"]
TINY = SCANConfig(backbone="test_resnet", pretrained=False, feature_stage=4, embed_dim=16, word_dim=8)


def make(tmp_path: Path, **kw) -> SCAN:
    torch.manual_seed(0)
    ctx = MethodContext(train_captions=CAPS, train_cap2img=np.arange(8) // 2, cache_dir=tmp_path)
    return SCAN(replace(TINY, **kw), ctx)


def pair_reference(v: torch.Tensor, e: torch.Tensor, n_words: int, direction: str, pooling: str,
                   lam1: float, lam2: float) -> float:
    """One pair, as the paper writes it: v (R, D) regions, e (n_words, D) the caption's real words."""
    e = e[:n_words]
    s = v @ e.T  # (R, L) cosines (inputs are unit vectors)
    if direction == "t2i":
        queries, context, s = e, v, s.T  # s[l, r]
    else:
        queries, context = v, e  # s[r, l]
    rel = []
    for q in range(len(queries)):
        # clipped l2norm: LeakyReLU then normalise each context item over the queries
        c = F.leaky_relu(s, 0.1)
        c = c / (c.pow(2).sum(0, keepdim=True).sqrt() + 1e-8)
        w = [math.exp(lam1 * float(c[q, k])) for k in range(len(context))]
        att = sum(wk * context[k] for k, wk in enumerate(w)) / sum(w)
        rel.append(float(F.cosine_similarity(att, queries[q], dim=0)))
    if pooling == "lse":
        return math.log(sum(math.exp(lam2 * r) for r in rel)) / lam2
    return sum(rel) / len(rel)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("pooling", ["lse", "avg"])
def test_score_matches_per_pair_reference(tmp_path, direction, pooling) -> None:
    model = make(tmp_path, direction=direction, pooling=pooling).eval()
    g = torch.Generator().manual_seed(1)
    v = F.normalize(torch.randn(5, 6, 16, generator=g), dim=-1)
    e = F.normalize(torch.randn(7, 9, 16, generator=g), dim=-1)
    lengths = torch.tensor([9, 3, 1, 5, 9, 2, 7])
    e = e * (torch.arange(9)[None, :, None] < lengths[:, None, None])  # padded words are zero, as encoded
    text = torch.cat([e, (torch.arange(9)[None] < lengths[:, None]).float()[..., None]], -1)
    want = torch.tensor([[pair_reference(v[i], e[j], int(lengths[j]), direction, pooling, model.lam1, model.lam2)
                          for j in range(7)] for i in range(5)])
    with torch.no_grad():
        assert (model.score(v, text) - want).abs().max() < 1e-5
        model.chunk_bytes = 2 * 6 * 4 * 6 * 9  # 2 pairs a chunk: the bounded-memory path
        assert model._chunks(5, 7, 6, 9, v.device) == (1, 2)
        assert (model.score(v, text) - want).abs().max() < 1e-5
        assert (model.score(v[1:4], text[2:6]) - want[1:4, 2:6]).abs().max() < 1e-5  # a runner block
    assert model.lam1 == {"t2i": 9.0, "i2t": 4.0}[direction] and model.lam2 == {"t2i": 6.0, "i2t": 5.0}[direction]


def test_hand_worked_single_region() -> None:
    """One region: every word attends to it (t2i), so R_l = cos(v, e_l)."""
    v = torch.tensor([[[1.0, 0.0]]])
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # third word is padding
    avg = xattn_block(v, e, mask, "t2i", "avg", 9.0, 6.0)
    lse = xattn_block(v, e, mask, "t2i", "lse", 9.0, 6.0)
    assert avg.item() == pytest.approx(0.5)
    assert lse.item() == pytest.approx(math.log(math.exp(6.0) + 1.0) / 6.0)
    # i2t with one word: the region attends to it alone, R = cos(v, e_1) = 1 whatever lambda_1
    assert xattn_block(v, e, torch.tensor([[True, False, False]]), "i2t", "avg", 4.0, 5.0).item() == pytest.approx(1.0)


def test_encoders_and_a_training_step(tmp_path) -> None:
    model = make(tmp_path)
    tok = model.tokenizer()
    images = torch.randn(4, 3, 64, 64).repeat_interleave(2, 0)
    batch = Batch(images=images, text=tok(CAPS), image_ids=torch.arange(8) // 2, caption_ids=torch.arange(8))
    assert model.encode_images(images[:2]).shape == (2, 4, 16)  # 2x2 map at stride 32
    t = model.encode_texts(tok(CAPS[:2]))
    assert t.shape[-1] == 17 and t[1, :, -1].tolist() == [1.0] * 7 + [0.0] * 2  # BOS + 5 words + EOS, padded
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model.training_loss(batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0 and isinstance(out.logs["triplet"], torch.Tensor)
    out.loss.backward()
    assert model.word_encoder.embed.weight.grad is not None and model.region_encoder.fc.weight.grad is not None
    opt.step()
    with pytest.raises(UserError, match="direction"):
        make(tmp_path, direction="both")


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache")
def test_trains_on_synthetic_far_above_chance(tiny_synthetic, tmp_path) -> None:
    metrics = run_small("scan", tiny_synthetic, tmp_path, epochs=6)
    assert_far_above_chance(metrics)


def run_small(method: str, root: Path, tmp_path: Path, epochs: int, **extra: str) -> dict:
    """The method's small preset on the tiny synthetic set through the runner; test metrics."""
    from rsbench.config.resolve import resolve_config
    from rsbench.datasets import load_dataset
    from rsbench.engine.cell import run_cell

    over = {"backbone": "test_resnet", "train.image_size": "32", **extra}
    cfg = resolve_config(method, "synthetic", 0, "small", {}, {"epochs": epochs, "batch_size": 8}, over)
    torch.manual_seed(0)
    cell = tmp_path / method / "seed0"
    run_cell(cfg, load_dataset("synthetic", data_root=root), cell, torch.device("cpu"), log=lambda *_: None)
    return json.loads((cell / "metrics.json").read_text())


def assert_far_above_chance(m: dict) -> None:
    """The tiny set has 6 test images, so R@5/R@10 saturate (chance mR ~61): judge R@1 against 1/6."""
    chance_r1 = 100.0 / m["n_images"]
    assert (m["i2t_r1"] + m["t2i_r1"]) / 2 > 2 * chance_r1 and m["mR"] > m["chance_mR"] + 10, m


# ---- precomputed region features (region_features=DIR, as the original SCAN's detector features) ----------


def write_features(folder: Path, images: list[Path], regions: int = 5, dim: int = 12, seed: int = 0) -> Path:
    """Random (regions, dim) float32 features per image, saved as <image stem>.npy."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image in images:
        np.save(folder / f"{Path(image).stem}.npy", rng.standard_normal((regions, dim)).astype(np.float32))
    return folder


def test_precomputed_regions_train_a_step_and_score(tmp_path) -> None:
    feats = write_features(tmp_path / "feats", [Path("a.jpg")])
    model = make(tmp_path, region_features=str(feats), region_dim=12)
    assert model.region_encoder.cnn is None and model.image_input().dim == 12  # no CNN is built
    assert model.image_input().folder == feats
    with pytest.raises(UserError, match="region_features"):
        model.image_backbone()
    regions = torch.randn(4, 5, 12).repeat_interleave(2, 0)  # the loader's "images": (B, R, region_dim)
    batch = Batch(images=regions, text=model.tokenizer()(CAPS), image_ids=torch.arange(8) // 2,
                  caption_ids=torch.arange(8))
    v = model.encode_images(regions)
    assert v.shape == (8, 5, 16) and torch.allclose(v.norm(dim=-1), torch.ones(8, 5))
    out = model.training_loss(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.region_encoder.fc.weight.grad.abs().sum() > 0
    with torch.no_grad():
        s = model.score(model.encode_images(regions[::2]), model.encode_texts(model.tokenizer()(CAPS)))
    assert s.shape == (4, 8) and torch.isfinite(s).all()
    with pytest.raises(UserError, match="region_features"):
        make(tmp_path, region_features=str(tmp_path / "nowhere"))
    # without region_features nothing changes: pixels in, no feature input declared
    assert make(tmp_path).image_input() is None


def _synthetic_images(root: Path) -> list[Path]:
    from rsbench.datasets import load_dataset

    data = load_dataset("synthetic", data_root=root)
    return [p for s in (data.train, data.val, data.test) for p in s.image_paths]


@pytest.mark.usefixtures("isolated_cache")
def test_precomputed_regions_through_the_runner(tiny_synthetic, tmp_path) -> None:
    """The engine hands SCAN the feature arrays (train and eval loaders, no pixel normaliser, no image
    cache even when asked for) and the cell completes with test metrics."""
    feats = write_features(tmp_path / "feats", _synthetic_images(tiny_synthetic), regions=4, dim=12)
    metrics = run_small("scan", tiny_synthetic, tmp_path, epochs=1, region_features=str(feats), region_dim="12",
                        **{"train.image_cache": "true"})
    assert metrics["n_images"] == 6 and 0 <= metrics["mR"] <= 100


@pytest.mark.parametrize("damage", ["missing", "shape", "not_npy"])
@pytest.mark.usefixtures("isolated_cache")
def test_bad_feature_file_is_a_one_line_error(tiny_synthetic, tmp_path, capsys, damage) -> None:
    from helpers import run_cli

    images = _synthetic_images(tiny_synthetic)
    feats = write_features(tmp_path / "feats", images, regions=4, dim=12)
    bad = feats / f"{images[-1].stem}.npy"  # a test image
    if damage == "missing":
        bad.unlink()
    elif damage == "shape":
        np.save(bad, np.zeros((3, 12), dtype=np.float32))
    else:
        bad.write_bytes(b"not an array")
    code, _out, err = run_cli(["run", "--methods", "scan", "--dataset", "synthetic", "--data-root",
                               str(tiny_synthetic), "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "o"),
                               "--set", "backbone=test_resnet", "--set", f"region_features={feats}",
                               "--set", "region_dim=12"], capsys)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in err, err
    assert {"missing": "missing", "shape": "(3, 12)", "not_npy": "not a readable"}[damage] in lines[0]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("pooling", ["lse", "avg"])
def test_perf_reference_is_the_paper_and_blockwise_scores_match_it(direction, pooling) -> None:
    """bench perf item 7's reference (the authors' shard + loop-over-captions procedure) gives the per-pair
    numbers, and so does the method's blockwise kernel with small chunks (the bounded-memory path)."""
    from rsbench.benchmarks.items_ranking import scan_inputs
    from rsbench.benchmarks.references import scan_score_sharded
    from rsbench.methods.scan import blockwise_scores

    x = scan_inputs(5, 7, 4, 6, 8)
    lam1, lam2 = {"t2i": (9.0, 6.0), "i2t": (4.0, 5.0)}[direction]
    want = torch.tensor([[pair_reference(x["v"][i], x["e"][j], int(x["lengths"][j]), direction, pooling, lam1, lam2)
                          for j in range(7)] for i in range(5)])
    got_ref = scan_score_sharded(x["v"], x["e"], x["lengths"], direction, pooling, lam1, lam2, shard=3)
    got = blockwise_scores(x["v"], x["e"], x["wmask"], direction, pooling, lam1, lam2, (2, 3))
    assert (got_ref - want).abs().max() < 1e-5 and (got - want).abs().max() < 1e-5
