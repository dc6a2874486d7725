"""Ranks and metrics against a naive per-query stable argsort, ties and odd galleries included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsbench.evaluation.metrics import (
    METRIC_KEYS,
    chance_metrics,
    compute_ranks,
    compute_ranks_blockwise,
    evaluate_scores,
    metrics_from_ranks,
)


def naive_ranks(sims: np.ndarray, cap2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: per query, a stable argsort of descending scores (lower index first on ties)."""
    n_images, n_captions = sims.shape
    i2t = np.empty(n_images, dtype=np.int64)
    for i in range(n_images):
        order = np.argsort(-sims[i], kind="stable")
        pos = np.empty(n_captions, dtype=np.int64)
        pos[order] = np.arange(1, n_captions + 1)
        i2t[i] = pos[cap2img == i].min()
    t2i = np.empty(n_captions, dtype=np.int64)
    for j in range(n_captions):
        order = np.argsort(-sims[:, j], kind="stable")
        t2i[j] = int(np.flatnonzero(order == cap2img[j])[0]) + 1
    return i2t, t2i


def grouped_cap2img(counts: list[int] | np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def galleries() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    c5 = grouped_cap2img([5] * 30)
    out.append(("float", rng.standard_normal((30, 150)), c5))
    out.append(("float32", rng.standard_normal((30, 150)).astype(np.float32), c5))
    out.append(("ties", np.round(rng.standard_normal((30, 150)), 1), c5))
    out.append(("heavy_ties", rng.integers(0, 3, size=(30, 150)).astype(np.float64), c5))
    out.append(("all_equal", np.zeros((12, 60)), grouped_cap2img([5] * 12)))
    uneven = grouped_cap2img(rng.integers(1, 8, size=40))
    out.append(("1to7", np.round(rng.standard_normal((40, uneven.size)), 1), uneven))
    shuffled = rng.permutation(uneven)  # captions not grouped by image
    out.append(("shuffled", np.round(rng.random((40, shuffled.size)), 1), shuffled))
    # near-perfect scorer: positives score high, so ranks are mostly 1
    c = grouped_cap2img([3, 1, 4, 2, 5, 1])
    good = rng.standard_normal((6, c.size)) * 0.1
    good[c, np.arange(c.size)] += 1.0
    out.append(("good", good, c))
    out.append(("one_image", rng.standard_normal((1, 4)), np.zeros(4, dtype=np.int64)))
    out.append(("one_each", np.round(rng.standard_normal((7, 7)), 1), np.arange(7)))
    # a few exact ties with positives in an otherwise tie-free float32 matrix (the sparse tie path)
    few = rng.standard_normal((30, 150)).astype(np.float32)
    for img, cap in ((3, 40), (10, 2), (29, 149), (0, 0)):
        few[img, (cap + 17) % 150] = few[c5[cap], cap]  # ties the caption's positive in its row...
        few[(c5[cap] + 5) % 30, cap] = few[c5[cap], cap]  # ...and in its column
    out.append(("few_ties", few, c5))
    out.append(("float16", np.round(rng.standard_normal((30, 150)), 2).astype(np.float16), c5))
    return out


@pytest.mark.parametrize("name,sims,cap2img", galleries(), ids=[g[0] for g in galleries()])
def test_compute_ranks_matches_naive(name: str, sims: np.ndarray, cap2img: np.ndarray) -> None:
    ref_i2t, ref_t2i = naive_ranks(sims, cap2img)
    i2t, t2i = compute_ranks(sims, cap2img)
    assert i2t.dtype == np.int64 and t2i.dtype == np.int64
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)
    # torch input gives the same
    i2t_t, t2i_t = compute_ranks(torch.from_numpy(sims), torch.from_numpy(cap2img))
    np.testing.assert_array_equal(i2t_t, ref_i2t)
    np.testing.assert_array_equal(t2i_t, ref_t2i)


@pytest.mark.parametrize("name,sims,cap2img", galleries(), ids=[g[0] for g in galleries()])
@pytest.mark.parametrize("bi,bc", [(1, 1), (3, 7), (4, 11), (7, 5), (64, 13), (1000, 1000)])
def test_blockwise_equals_full(name: str, sims: np.ndarray, cap2img: np.ndarray, bi: int, bc: int) -> None:
    ref = compute_ranks(sims, cap2img)
    t = torch.from_numpy(sims)
    seen: list[tuple[int, int]] = []

    def score_block(i: slice, c: slice) -> torch.Tensor:
        seen.append((i.stop - i.start, c.stop - c.start))
        return t[i, c].clone()

    got = compute_ranks_blockwise(score_block, *sims.shape, cap2img, block_images=bi, block_captions=bc)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    assert max(a for a, _ in seen) <= bi and max(b for _, b in seen) <= bc


@pytest.mark.parametrize("name,sims,cap2img", galleries(), ids=[g[0] for g in galleries()])
def test_torch_counting_path_matches_naive(name: str, sims: np.ndarray, cap2img: np.ndarray) -> None:
    """Non-CPU blocks are counted with torch ops: check that kernel on CPU against the reference."""
    from rsbench.evaluation import metrics

    ref = naive_ranks(sims.astype(np.float64), cap2img)
    counter = metrics._Counter()
    orig = counter.count
    counter.count = lambda b, thr, own, axis, start: counter._count_torch(b, thr, own, axis, start)
    counter.count_both = lambda *args: None  # no CPU fast path: every block through the torch kernel
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(metrics, "_Counter", lambda: counter)
            got = compute_ranks_blockwise(lambda i, c: torch.from_numpy(sims)[i, c], *sims.shape, cap2img, 7, 11)
    finally:
        counter.count = orig
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_fast_path_and_tie_fallback_match_naive_argsort(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU blocks without ties are counted by the fast path (both directions, `>` and `<` only);
    a block holding ties falls back to the tie rule. Both against a per-query stable argsort, on
    float32 scores with exact ties in one row block only; rows wider than 255 uint64 words and
    chunks of 3 rows exercise the word sums."""
    from rsbench.evaluation import metrics

    rng = np.random.default_rng(11)
    c2i = rng.permutation(grouped_cap2img([55] * 40))
    sims = rng.standard_normal((40, 2200)).astype(np.float32)
    tied = np.flatnonzero(c2i >= 25)[[0, 300, -1]]
    for cap in tied:  # ties in rows 20..39 only: a lower-index image equals the positive (t2i) ...
        sims[20 + c2i[cap] % 5, cap] = sims[c2i[cap], cap]
    img = 33  # ... and another caption equals the image's best positive (i2t)
    own = np.flatnonzero(c2i == img)
    best = own[np.argmax(sims[img, own])]
    sims[img, (best + 1) % 2200 if c2i[(best + 1) % 2200] != img else (best + 2) % 2200] = sims[img, best]

    results: list[bool] = []
    orig = metrics._Counter.count_both

    def spy(self: object, *args: object) -> object:
        out = orig(self, *args)
        results.append(out is not None)
        return out

    monkeypatch.setattr(metrics._Counter, "count_both", spy)
    monkeypatch.setattr(metrics._Counter, "CHUNK_BYTES", 4 * 2200 * 3)
    t = torch.from_numpy(sims)
    got = compute_ranks_blockwise(lambda i, c: t[i, c], 40, 2200, c2i, block_images=20, block_captions=2200)
    ref = naive_ranks(sims, c2i)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    assert results == [True, False]  # rows 0..19: fast path; rows 20..39 hold the ties: the tie rule
    strict = 1 + (sims[:, tied] > sims[c2i[tied], tied]).sum(0)
    np.testing.assert_array_equal(got[1][tied], strict + 1)  # the lower-index tie ranks first
    # a NaN where the fast path would run is still refused
    sims[2, 9] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_ranks_blockwise(lambda i, c: t[i, c], 40, 2200, c2i, block_images=20, block_captions=2200)


def test_own_positive_excluded_by_index_not_value() -> None:
    """A scorer that does not repeat itself (pass 2 scores the positives higher than pass 1) still
    never counts a query's own positive as a candidate above it."""
    rng = np.random.default_rng(5)
    c = grouped_cap2img([3] * 10)
    base = rng.standard_normal((10, 30))
    calls = {"n": 0}

    def score_block(i: slice, j: slice) -> torch.Tensor:
        calls["n"] += 1
        b = torch.from_numpy(base[i, j].copy())
        if calls["n"] > 1:  # second pass: every positive jumps up
            rows, cols = np.nonzero(c[None, j] == np.arange(i.start, i.stop)[:, None])
            b[rows, cols] += 10.0
        return b

    got = compute_ranks_blockwise(score_block, 10, 30, c, block_images=10, block_captions=30)
    # pass 1's positives against pass 2's other scores (other positives are +10 higher now)
    raised = base.copy()
    raised[c, np.arange(30)] += 10.0
    pos = base[c, np.arange(30)]
    t2i = 1 + np.array([(np.delete(raised[:, j], c[j]) > pos[j]).sum() for j in range(30)])
    np.testing.assert_array_equal(got[1], t2i)
    assert calls["n"] == 2


def test_blockwise_dot_product_scorer() -> None:
    """The intended use: embeddings scored block by block, never the full matrix."""
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    cap2img = grouped_cap2img(np.random.default_rng(1).integers(1, 6, size=50))
    txt = torch.nn.functional.normalize(img[cap2img] + 0.8 * torch.randn(cap2img.size, 16, generator=g), dim=1)
    full = compute_ranks((img @ txt.T).numpy(), cap2img)
    got = compute_ranks_blockwise(lambda i, c: img[i] @ txt[c].T, 50, cap2img.size, cap2img, 8, 33, "cpu")
    np.testing.assert_array_equal(got[0], full[0])
    np.testing.assert_array_equal(got[1], full[1])


def test_blockwise_rejects_bad_blocks_and_nan() -> None:
    sims = torch.zeros(4, 8)
    c = grouped_cap2img([2] * 4)
    with pytest.raises(ValueError, match="shape"):
        compute_ranks_blockwise(lambda i, j: torch.zeros(1, 1), 4, 8, c, 2, 2)
    sims[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compute_ranks(sims, c)


def test_bad_cap2img() -> None:
    with pytest.raises(ValueError, match="no caption"):
        compute_ranks(np.zeros((3, 4)), np.array([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="lie in"):
        compute_ranks(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        compute_ranks(np.zeros((2, 3)), np.array([0, 1]))


def test_metrics_from_ranks_values() -> None:
    i2t = np.array([1, 2, 6, 11, 100])
    t2i = np.array([1, 1, 5, 10, 10, 50, 200, 3, 2, 1])
    m = metrics_from_ranks(i2t, t2i)
    assert list(m) == [*METRIC_KEYS, "recall_curve"]
    assert m["i2t_r1"] == pytest.approx(20.0)
    assert m["i2t_r5"] == pytest.approx(40.0)
    assert m["i2t_r10"] == pytest.approx(60.0)
    assert m["t2i_r1"] == pytest.approx(30.0)
    assert m["t2i_r5"] == pytest.approx(60.0)
    assert m["t2i_r10"] == pytest.approx(80.0)
    assert m["mR"] == pytest.approx((20 + 40 + 60 + 30 + 60 + 80) / 6)
    assert m["i2t_medr"] == 6.0 and m["i2t_meanr"] == pytest.approx(24.0)
    assert m["t2i_medr"] == 4.0 and m["t2i_meanr"] == pytest.approx(28.3)
    curve = m["recall_curve"]
    assert curve["k"] == list(range(1, 101))
    assert len(curve["i2t"]) == 100 and len(curve["t2i"]) == 100
    for k in (1, 5, 10):
        assert curve["i2t"][k - 1] == m[f"i2t_r{k}"]
        assert curve["t2i"][k - 1] == m[f"t2i_r{k}"]
    assert curve["i2t"][-1] == 100.0 and curve["t2i"][-1] == 90.0
    assert all(isinstance(v, float) for k, v in m.items() if k != "recall_curve")
    assert metrics_from_ranks(i2t, t2i, max_k=3)["recall_curve"]["k"] == [1, 2, 3]


@pytest.mark.parametrize("ranks, medr", [
    ([1, 1, 2, 2], 1.0),  # 0-based median 0.5 -> floor 0 -> 1 (np.median of 1-based ranks: 1.5)
    ([1, 2, 3, 4], 2.0),  # 0-based 1.5 -> 2 (not 2.5)
    ([3, 1, 2], 2.0),  # odd count: the middle rank
    ([7, 1, 100, 4, 4, 9], 5.0),  # 0-based sorted 0 3 3 6 8 99: median 4.5 -> 5
])
def test_median_rank_field_convention(ranks: list[int], medr: float) -> None:
    """medr = floor(median of 0-based ranks) + 1 (VSE++/AMFMN/MSA evaluation code); meanr is 1-based."""
    m = metrics_from_ranks(np.array(ranks), np.array(ranks[::-1]))
    assert m["i2t_medr"] == medr and m["t2i_medr"] == medr
    assert m["i2t_meanr"] == pytest.approx(sum(ranks) / len(ranks))


def test_metrics_reject_bad_ranks() -> None:
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([0, 1]), np.array([1]))
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([], dtype=np.int64), np.array([1]))


def test_evaluate_scores_perfect() -> None:
    c = grouped_cap2img([2, 3, 1])
    sims = np.zeros((3, 6))
    sims[c, np.arange(6)] = 1.0
    m = evaluate_scores(sims, c)
    assert m["mR"] == 100.0 and m["i2t_medr"] == 1.0 and m["t2i_meanr"] == 1.0


@pytest.mark.parametrize("counts", [[5] * 8, [1, 2, 3, 4, 5, 6, 7], [1] * 6, [12, 1, 1]])
def test_chance_metrics_matches_monte_carlo(counts: list[int]) -> None:
    c = grouped_cap2img(counts)
    exp = chance_metrics(c)
    assert set(exp) == {f"chance_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} | {"chance_mR"}
    rng = np.random.default_rng(3)
    trials = 600
    sims = rng.random((trials, len(counts), c.size))
    acc = {k: 0.0 for k in exp}
    for s in sims:
        m = evaluate_scores(s, c)
        for k in exp:
            acc[k] += m[k.removeprefix("chance_")] / trials
    for k in exp:
        # R@K per trial is an average of Bernoullis: std of the MC mean <= 100 * 0.5 / sqrt(trials)
        assert acc[k] == pytest.approx(exp[k], abs=100 * 0.5 / np.sqrt(trials) * 4), k


def test_chance_metrics_closed_form() -> None:
    # 2 images x 5 captions, N = 10: P(miss at K=1) = 5/10; at K=5, C(5,5)/C(10,5) = 1/252
    m = chance_metrics(grouped_cap2img([5, 5]))
    assert m["chance_i2t_r1"] == pytest.approx(50.0)
    assert m["chance_i2t_r5"] == pytest.approx(100.0 * (1 - 1 / 252))
    assert m["chance_i2t_r10"] == pytest.approx(100.0)
    assert m["chance_t2i_r1"] == pytest.approx(50.0)
    assert m["chance_t2i_r5"] == pytest.approx(100.0)


def test_chance_curve_equals_enumeration_of_every_ranking() -> None:
    """#21: the chance curve the figures draw, for every K (beyond the gallery too), equals the mean
    recall over ALL orderings of a tiny gallery (3 images with 1, 2, 3 captions: 6! caption orders,
    3! image orders), which is what a random scorer averages to."""
    import itertools

    from rsbench.evaluation.metrics import chance_curve

    c2i = grouped_cap2img([1, 2, 3])
    ks = np.arange(1, 9)
    i2t, t2i = chance_curve(c2i, ks)
    ref_i2t = np.zeros(ks.size)
    perms = list(itertools.permutations(range(c2i.size)))
    for order in perms:  # order[r] = caption at rank r + 1
        first = {i: 1 + min(r for r, j in enumerate(order) if c2i[j] == i) for i in range(3)}
        ref_i2t += [100.0 * np.mean([first[i] <= k for i in range(3)]) for k in ks]
    ref_t2i = np.zeros(ks.size)
    img_perms = list(itertools.permutations(range(3)))
    for order in img_perms:
        ref_t2i += [100.0 * np.mean([order.index(i) + 1 <= k for i in c2i]) for k in ks]
    np.testing.assert_allclose(i2t, ref_i2t / len(perms), atol=1e-9)
    np.testing.assert_allclose(t2i, ref_t2i / len(img_perms), atol=1e-9)
    m = chance_metrics(c2i)
    assert [m[f"chance_i2t_r{k}"] for k in (1, 5)] == pytest.approx([i2t[0], i2t[4]])


# ---- #14: the metric list exists in one place ------------------------------------------------------

def test_metric_table_derives_every_list() -> None:
    from rsbench.evaluation import metrics as mt

    assert mt.METRIC_KEYS == ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR",
                              "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr")
    assert mt.METRIC_KEYS == tuple(s.name for s in mt.METRICS)
    assert mt.RECALL_KS == (1, 5, 10)
    assert mt.TABLE_METRICS == ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
    assert mt.TESTED_METRICS == ("mR", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
    assert mt.LEADERBOARD_METRICS == ("mR", *(k for k in mt.METRIC_KEYS if k != "mR"))
    assert {k for k, v in mt.METRIC_DIRECTION.items() if v < 0} == {"i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr"}
    assert mt.METRIC_HEADERS["t2i_r10"] == "T2I R@10" and mt.METRIC_HEADERS["i2t_meanr"] == "I2T MeanR"
    for s in mt.METRICS:  # a recall's K and direction are the ones its name says
        if s.recall_k is not None:
            assert s.name == f"{s.query}_r{s.recall_k}"


def test_no_other_module_spells_out_a_metric_list() -> None:
    """A tuple, list, set or dict naming three or more metrics outside evaluation/metrics.py is a
    second copy of the metric list (it drifts when a metric is added)."""
    import ast
    from pathlib import Path

    import rsbench
    from rsbench.evaluation.metrics import METRIC_KEYS

    names, pkg, found = set(METRIC_KEYS), Path(rsbench.__file__).parent, []
    for f in sorted(pkg.rglob("*.py")):
        if f == pkg / "evaluation" / "metrics.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            elts = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and elts:
                hits = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in names}
                if len(hits) >= 3:
                    found.append(f"{f.relative_to(pkg)}:{node.lineno}")
    assert found == []


def test_format_metrics_lists_every_metric() -> None:
    from rsbench.evaluation.metrics import format_metrics

    m = metrics_from_ranks(np.array([1, 2, 6, 11, 100]), np.array([1, 1, 5, 10, 10, 50, 200, 3, 2, 1]))
    m["chance_mR"] = 1.5
    assert format_metrics(m) == (
        "mR 48.33  (chance 1.50)\n"
        "i2t  R@1 20.00  R@5 40.00  R@10 60.00  medr 6  meanr 24.0\n"
        "t2i  R@1 30.00  R@5 60.00  R@10 80.00  medr 4  meanr 28.3")
