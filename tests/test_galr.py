"""GaLR: MR re-ranking, DREA, the GCN and the MIDF fusion against literal references; the detector path
(a randomly initialised detector) with its per-image cache; an end-to-end run on the tiny synthetic set."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import paired_step
from test_scan import assert_far_above_chance, run_small

from rsbench.errors import UserError
from rsbench.methods.base import MethodContext
from rsbench.methods.galr import GCN, MIDF, GaLR, GaLRConfig, drea, multivariate_rerank

CAPS = ["many planes are parked in an airport", "a plane at the airport", "green trees around a pond",
        "a pond with trees", "a dense residential area", "houses in a residential area", "a river in farmland",
        "farmland divided by a river"]
TINY = GaLRConfig(backbone="test_resnet", pretrained=False, embed_dim=16, word_dim=8, hidden_dim=8, heads=2,
                  ff_dim=16, fusion_dim=8, n_regions=4, local_dim=6, gcn_out=3)


def make(tmp_path, **kw) -> GaLR:
    torch.manual_seed(0)
    ctx = MethodContext(train_captions=CAPS, train_cap2img=np.arange(8) // 2, cache_dir=tmp_path)
    return GaLR(replace(TINY, **kw), ctx)


def mr_reference(sim: np.ndarray, k: int, wp1: float, wp2: float) -> np.ndarray:
    """Per query (row) loop, as GaLR's paper describes MR: saliency share, own rank, reverse-search rank."""
    n, m = sim.shape
    k = min(max(10, k), m)
    out = np.zeros_like(sim)
    for i in range(n):
        cand = sorted(range(m), key=lambda t: (-sim[i, t], t))[:k]
        reverse = []
        for j, t in enumerate(cand):
            out[i, t] = wp1 * sim[i, t] / sum(sim[x, t] for x in range(n)) + math.exp(-0.05 * (j + 1))
            col = sorted(range(n), key=lambda x: (-sim[x, t], x))
            reverse.append((col.index(i), j, t))
        for pos, (_, _, t) in enumerate(sorted(reverse)):  # by reverse rank, ties by first-pass order
            out[i, t] += wp2 * math.exp(-0.05 * (pos + 1))
    return out


def test_mr_matches_the_per_query_reference() -> None:
    rng = np.random.default_rng(0)
    sim = rng.uniform(0.05, 1.0, size=(7, 16))
    sim[2, 5] = sim[2, 6]  # a tie: index order decides
    i2t, t2i = multivariate_rerank(sim, k=12, wp1=0.3, wp2=1.1)
    assert np.allclose(i2t, mr_reference(sim, 12, 0.3, 1.1))
    assert np.allclose(t2i, mr_reference(sim.T, 12, 0.3, 1.1).T)  # only 7 images: every one a candidate
    assert (i2t > 0).sum(1).tolist() == [12] * 7  # k = max(10, 12) candidates per image


def test_mr_reverse_search_promotes_mutual_neighbours() -> None:
    """Hand-worked: caption 1 is image 0's second choice but ranks image 0 first; caption 0 prefers image 1."""
    sim = np.array([[0.50, 0.45], [0.90, 0.10]])
    i2t, _ = multivariate_rerank(sim, k=10, wp1=0.0, wp2=1.1)
    e = [math.exp(-0.05), math.exp(-0.10)]
    assert i2t[0, 0] == pytest.approx(e[0] + 1.1 * e[1]) and i2t[0, 1] == pytest.approx(e[1] + 1.1 * e[0])
    assert i2t[0, 1] > i2t[0, 0]  # re-ranked: caption 1 now first for image 0


def test_drea_drops_duplicates_and_enhances_salient_neighbours() -> None:
    f = torch.tensor([[[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.6, 0.8]]])
    sal = torch.tensor([[0.9, 0.5, 0.2, 0.7]])
    valid = torch.tensor([[True, True, True, False]])
    x, adj = drea(f, sal, valid, threshold=0.9)
    # region 1 duplicates region 0 (cos > 0.9); region 3 is invalid -> kept: 0 then 2, then padding
    assert torch.allclose(x[0, :2], f[0, [0, 2]]) and torch.all(x[0, 2:] == 0)
    # adjacency among kept: cos(0, 2) = 0 -> each keeps only its self-loop; padded rows are zero
    assert torch.allclose(adj[0], torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    f2 = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    _, a2 = drea(f2, torch.tensor([[1.0, 0.5]]), torch.ones(1, 2, dtype=torch.bool), threshold=0.9)
    raw = torch.tensor([[2.0, 0.6 * 1.5], [0.6 * 2.0, 1.5]])  # cos * (1 + saliency of the neighbour)
    assert torch.allclose(a2[0], raw / raw.sum(1, keepdim=True))


def test_gcn_matches_a_per_image_reference() -> None:
    torch.manual_seed(0)
    gcn = GCN(6, 3, 4, 5)
    x, a = torch.randn(3, 4, 6), torch.rand(3, 4, 4)
    want = []
    for b in range(3):
        h = x[b]
        for w in gcn.w:
            h = torch.relu((a[b] @ h) @ w.weight.T)
        want.append(F.normalize(gcn.out(h.reshape(-1)), dim=0))
    assert torch.allclose(gcn(a, x), torch.stack(want), atol=1e-6)


def test_midf_fusion_by_hand() -> None:
    """With one token per level, attention is out_proj(v_proj(.)); the rest is the published fusion."""
    torch.manual_seed(0)
    m = MIDF(8, 2, 16, 4).eval()
    g, loc = torch.randn(3, 8), torch.randn(3, 8)

    def att(mha, x):  # softmax over one key = 1
        wv, bv = mha.in_proj_weight[16:], mha.in_proj_bias[16:]
        return mha.out_proj(x @ wv.T + bv)

    def block(b, x, y=None):
        x = b.norms[0](x + att(b.self_att, x))
        if y is not None:
            x = b.norms[1](x + att(b.guide, y))
        return b.norms[-1](x + b.ffn(x))

    with torch.no_grad():
        g1, l1 = block(m.g2g, g), block(m.l2l, loc)
        l2 = block(m.g2l, l1, g1)
        g2 = block(m.l2g, g1, l2)
        gg, ll = torch.sigmoid(l2) * g2, g2 + l2
        w = torch.softmax(m.weights(gg + ll), -1)
        assert torch.allclose(m(g, loc), w[:, :1] * gg + w[:, 1:] * ll, atol=1e-5)


def test_grid_fallback_trains_a_step_and_mr_is_an_option(tmp_path) -> None:
    model = make(tmp_path)
    assert model.detector is None and "grid" in model.extra_state_json()["region_source"]
    paired_step(model, CAPS)
    assert model.gcn.out.weight.grad is not None and model.fusion.weights[0].weight.grad is not None
    assert model.global_encoder.mvsa.fc.weight.grad is not None
    assert not model.reranks and make(tmp_path, rerank="mr").reranks  # the engine re-ranks only with mr
    with pytest.raises(UserError, match="bad rerank 'xr'"):
        make(tmp_path, rerank="xr")


def test_detector_path_caches_region_features(tmp_path, monkeypatch) -> None:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    det = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    det.rpn.score_thresh = 0.0
    weights = tmp_path / "det.pth"
    torch.save(det.state_dict(), weights)
    model = make(tmp_path, detector_weights=str(weights), detector_arch="fasterrcnn_mobilenet_v3_large_320_fpn",
                 detector_min_size=64).eval()
    model.detector.det[0].roi_heads.score_thresh = 0.0  # random weights: keep whatever it finds
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        first = model.encode_images(images)
    files = sorted((tmp_path / "galr_regions").rglob("*.npz"))
    assert len(files) == 2 and first.shape == (2, 16) and torch.isfinite(first).all()
    with np.load(files[0]) as z:
        assert z["feats"].shape[1] == 1024 and len(z["scores"]) <= 4

    def boom(*_a, **_k):
        raise AssertionError("detector ran again: cache not used")

    monkeypatch.setattr(model.detector, "detect", boom)
    with torch.no_grad():
        assert torch.allclose(model.encode_images(images), first, atol=1e-6)
    assert not any(k.startswith("detector") for k in model.state_dict())  # frozen detector is not saved with GaLR
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match="not a torchvision Faster R-CNN"):
        make(tmp_path, detector_weights=str(bad))


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache")
def test_trains_on_synthetic_far_above_chance(tiny_synthetic, tmp_path) -> None:
    metrics = run_small("galr", tiny_synthetic, tmp_path, epochs=15)
    assert_far_above_chance(metrics)


def _ranks_loop(sim: np.ndarray, cap2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-query reference: 1 + candidates scoring higher, or equal with a lower index (the ties rule)."""
    n, m = sim.shape
    i2t = [min(1 + sum(sim[i, x] > sim[i, c] or (sim[i, x] == sim[i, c] and x < c) for x in range(m))
               for c in range(m) if cap2img[c] == i) for i in range(n)]
    t2i = [1 + sum(sim[x, c] > sim[cap2img[c], c] or (sim[x, c] == sim[cap2img[c], c] and x < cap2img[c])
                   for x in range(n)) for c in range(m)]
    return np.array(i2t), np.array(t2i)


@pytest.mark.usefixtures("isolated_cache")
def test_mr_cell_ranks_each_direction_from_its_own_mr_matrix(tiny_synthetic, tmp_path) -> None:
    """galr_mr end to end: the cell's ranks are those of ranking the MR matrices of the selected model's
    full test matrix directly (images->captions from one, captions->images from the other); rank_split's
    top-K lists come from the same two matrices; config.json records rerank=mr."""
    import json

    from rsbench.config.resolve import resolve_config
    from rsbench.datasets import load_dataset
    from rsbench.engine.cell import build_method
    from rsbench.engine.checkpoint import load_best
    from rsbench.engine.device import pick_precision
    from rsbench.engine.evaluate import encode_split, rank_split
    from rsbench.evaluation.topk import topk_from_scores

    metrics = run_small("galr_mr", tiny_synthetic, tmp_path, epochs=1)
    cell = tmp_path / "galr_mr" / "seed0"
    assert json.loads((cell / "config.json").read_text())["model"]["rerank"] == "mr"
    data = load_dataset("synthetic", data_root=tiny_synthetic)
    cfg = resolve_config("galr_mr", "synthetic", 0, "small", {}, {"epochs": 1, "batch_size": 8},
                         {"backbone": "test_resnet", "train.image_size": "32"})
    cpu = torch.device("cpu")
    method = build_method(cfg, data, cpu)
    method.load_extra_state_json(load_best(cell / "checkpoint", method, "galr_mr").get("text_state", {}))
    prec = pick_precision(cfg.train.precision, cpu)
    img, txt = encode_split(method, data.test, cfg, cpu, prec)
    by_image, by_caption = multivariate_rerank(method.score(img, txt).numpy(), cfg.model.mr_k, cfg.model.mr_wp1,
                                               cfg.model.mr_wp2)
    c2i = np.asarray(data.test.cap2img)
    with np.load(cell / "ranks.npz") as z:
        assert z["i2t_rank"].tolist() == _ranks_loop(by_image, c2i)[0].tolist()
        assert z["t2i_rank"].tolist() == _ranks_loop(by_caption, c2i)[1].tolist()
    assert metrics["n_images"] == data.test.n_images and metrics["method"] == "galr_mr"
    *_, top = rank_split(method, data.test, cfg, cpu, prec, topk=True)
    a, b = topk_from_scores(by_image), topk_from_scores(by_caption)
    assert np.array_equal(top.i2t_idx, a.i2t_idx) and np.array_equal(top.t2i_idx, b.t2i_idx)
    assert np.allclose(top.i2t_score, a.i2t_score) and np.allclose(top.t2i_score, b.t2i_score)
