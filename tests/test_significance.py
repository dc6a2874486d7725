"""Paired randomisation test, cluster bootstrap, Holm, and `bench compare` (rsbench.evaluation.statistics, rsbench.results.compare).

The statistical tests check calibration on simulated data whose truth is known: p is about
uniform under the null (with per-image correlation, as in real text->image queries), small for a
planted difference, the bootstrap CI covers a planted difference at about its nominal rate, and
the matrix-wise resampling agrees exactly with a naive recomputation from rsbench.evaluation.metrics.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from rsbench.errors import UserError
from rsbench.evaluation.metrics import TESTED_METRICS as METRICS
from rsbench.evaluation.metrics import metrics_from_ranks
from rsbench.evaluation.statistics import (
    COLUMNS,
    draw_resamples,
    holm,
    paired_test,
    query_values,
    resampling_distributions,
)
from rsbench.results.cell import write_eval_outputs
from rsbench.results.compare import compare_results, format_significance, write_significance

FAR = 50  # a rank beyond K = 10


def _clustered_ranks(rng, n_img, caps, p_easy_img, p_hard_img, easy):
    """Ranks 1 (hit) or FAR (miss); success probability depends on the image's shared state."""
    cap2img = np.repeat(np.arange(n_img), caps)
    p_img = np.where(easy, p_easy_img, p_hard_img)
    i2t = np.where(rng.random(n_img) < p_img, 1, FAR)
    t2i = np.where(rng.random(cap2img.size) < p_img[cap2img], 1, FAR)
    return i2t, t2i, cap2img


def _random_ranks(rng, n_img, caps, difficulty):
    """Graded ranks (1..100) whose distribution depends on a per-image difficulty."""
    cap2img = np.repeat(np.arange(n_img), caps)
    i2t = np.minimum(rng.geometric(np.clip(0.25 * difficulty, 0.01, 0.99)), 100)
    t2i = np.minimum(rng.geometric(np.clip(0.15 * difficulty[cap2img], 0.01, 0.99)), 100)
    return i2t, t2i, cap2img


def write_cell(root: Path, dataset: str, method: str, seed: int, i2t, t2i, cap2img) -> None:
    cell = root / dataset / method / f"seed{seed}"
    write_eval_outputs(cell, i2t, t2i, cap2img, {"selected_epoch": 1})


# ---------------------------------------------------------------------------------------------
# Holm


def test_holm_matches_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    out = holm([0.02, math.nan, 0.04])  # NaN stays NaN and does not count in m
    np.testing.assert_allclose(out[[0, 2]], [0.04, 0.04])
    assert math.isnan(out[1])
    assert holm([]).size == 0


# ---------------------------------------------------------------------------------------------
# exactness of the vectorised resampling


def _naive_metrics(i2t, t2i):
    m = metrics_from_ranks(i2t, t2i)
    return np.array([m[k] for k in METRICS])


def test_resampling_matches_naive_recomputation():
    """Each sign flip equals swapping A/B ranks of whole images (+ their captions) and recomputing
    the metrics with rsbench.evaluation.metrics; each bootstrap row equals recomputing on the resampled images."""
    rng = np.random.default_rng(3)
    caps = np.array([1, 2, 3, 5, 4, 2, 3])  # unequal clusters: t2i is a ratio estimator
    cap2img = np.repeat(np.arange(caps.size), caps)
    ra = (rng.integers(1, 15, caps.size), rng.integers(1, 15, cap2img.size))
    rb = (rng.integers(1, 15, caps.size), rng.integers(1, 15, cap2img.size))
    a, b = query_values(*ra, cap2img), query_values(*rb, cap2img)
    draws = draw_resamples(caps.size, 40, seed=1)
    obs, contrib, perm, boot = resampling_distributions(a, b, METRICS, draws)

    np.testing.assert_allclose(obs, _naive_metrics(*ra) - _naive_metrics(*rb), atol=1e-9)
    np.testing.assert_allclose(contrib.sum(0), obs, atol=1e-9)
    signs = np.concatenate(list(draws.sign_blocks()))
    counts = np.concatenate(list(draws.count_blocks())).astype(int)
    for r in range(draws.resamples):
        keep = signs[r] > 0  # +1: A stays A; -1: A and B swapped for the image and its captions
        xa = (np.where(keep, ra[0], rb[0]), np.where(keep[cap2img], ra[1], rb[1]))
        xb = (np.where(keep, rb[0], ra[0]), np.where(keep[cap2img], rb[1], ra[1]))
        np.testing.assert_allclose(perm[r], _naive_metrics(*xa) - _naive_metrics(*xb), atol=1e-9)

        imgs = np.repeat(np.arange(caps.size), counts[r])
        cap_idx = np.concatenate([np.flatnonzero(cap2img == i) for i in imgs])
        da = _naive_metrics(ra[0][imgs], ra[1][cap_idx])
        db = _naive_metrics(rb[0][imgs], rb[1][cap_idx])
        np.testing.assert_allclose(boot[r], da - db, atol=1e-9)


def test_p_matches_exact_enumeration():
    """With 8 images, all 256 cluster sign flips can be enumerated: the sampled p is close."""
    rng = np.random.default_rng(5)
    caps = np.array([3, 5, 2, 5, 4, 1, 5, 3])
    cap2img = np.repeat(np.arange(caps.size), caps)
    ra = (rng.integers(1, 8, caps.size), rng.integers(1, 4, cap2img.size))
    rb = (rng.integers(2, 12, caps.size), rng.integers(1, 9, cap2img.size))
    obs = _naive_metrics(*ra) - _naive_metrics(*rb)
    exceed = np.zeros(len(METRICS))
    for flips in itertools.product([True, False], repeat=caps.size):
        keep = np.array(flips)
        xa = (np.where(keep, ra[0], rb[0]), np.where(keep[cap2img], ra[1], rb[1]))
        xb = (np.where(keep, rb[0], ra[0]), np.where(keep[cap2img], rb[1], ra[1]))
        d = _naive_metrics(*xa) - _naive_metrics(*xb)
        exceed += np.abs(d) >= np.abs(obs) - 1e-9
    exact = exceed / 2**caps.size
    res = paired_test(query_values(*ra, cap2img), query_values(*rb, cap2img), resamples=20_000, seed=0)
    got = np.array([res[m].p for m in METRICS])
    np.testing.assert_allclose(got, exact, atol=0.015)
    assert res["mR"].wins + res["mR"].ties + res["mR"].losses == caps.size


def test_non_integer_values_take_the_float64_path():
    """Values that are not multiples of 1/n_seeds (hand-made QueryValues) use float64 products;
    halving both methods halves the difference and CI and leaves p unchanged."""
    from dataclasses import replace

    rng = np.random.default_rng(8)
    ra = _random_ranks(rng, 60, 5, rng.gamma(2.0, 0.5, 60))
    rb = _random_ranks(rng, 60, 5, rng.gamma(2.0, 0.5, 60))
    a, b = query_values(*ra[:2], ra[2]), query_values(*rb[:2], rb[2])
    half = [replace(v, i2t=v.i2t * 0.5 + 1e-3, t2i=v.t2i * 0.5 + 1e-3) for v in (a, b)]
    full, halved = paired_test(a, b, resamples=999), paired_test(*half, resamples=999)
    for m in METRICS:
        assert halved[m].p == full[m].p
        assert halved[m].diff == pytest.approx(full[m].diff / 2)
        assert halved[m].ci_low == pytest.approx(full[m].ci_low / 2, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# calibration on simulated data


def test_p_roughly_uniform_under_null():
    """200 null pairs (both methods draw from the same per-image distribution, with correlated
    captions): the fraction of p < 0.05 is near 0.05, and p is not piled up at either end."""
    rng = np.random.default_rng(11)
    ps = []
    for rep in range(200):
        difficulty = rng.gamma(2.0, 0.5, 40)
        ra = _random_ranks(rng, 40, 5, difficulty)
        rb = _random_ranks(rng, 40, 5, difficulty)
        res = paired_test(query_values(*ra[:2], ra[2]), query_values(*rb[:2], rb[2]), ["mR"], 199, seed=rep)
        ps.append(res["mR"].p)
    ps = np.array(ps)
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10
    assert 0.35 <= np.mean(ps < 0.5) <= 0.65


def test_small_p_and_ci_excluding_zero_for_planted_difference():
    rng = np.random.default_rng(2)
    easy = rng.random(300) < 0.5
    ra = _clustered_ranks(rng, 300, 5, 0.9, 0.45, easy)  # A: +10 points on every recall
    rb = _clustered_ranks(rng, 300, 5, 0.8, 0.35, easy)
    res = paired_test(query_values(*ra[:2], ra[2]), query_values(*rb[:2], rb[2]), resamples=2000, seed=0)
    for m in ("mR", "t2i_r1"):
        assert res[m].p <= 2 / 2001
        assert 0 < res[m].ci_low < res[m].diff < res[m].ci_high
    assert res["mR"].wins > res["mR"].losses
    assert res["mR"].n_queries == 300 + 1500 and res["t2i_r1"].n_queries == 1500


def test_bootstrap_ci_covers_planted_difference_at_nominal_rate():
    """Images are easy or hard (their captions succeed or fail together); A beats B by exactly
    10 points in expectation in every state. The 90% cluster-bootstrap CI of mR and of t2i R@1
    (captions correlated within an image) should cover 10 about 90% of the time."""
    rng = np.random.default_rng(7)
    reps, cover = 200, {"mR": 0, "t2i_r1": 0}
    for rep in range(reps):
        easy = rng.random(150) < 0.5
        ra = _clustered_ranks(rng, 150, 5, 0.9, 0.3, easy)
        rb = _clustered_ranks(rng, 150, 5, 0.8, 0.2, easy)
        res = paired_test(
            query_values(*ra[:2], ra[2]), query_values(*rb[:2], rb[2]), list(cover), 400, alpha=0.10, seed=rep
        )
        for m in cover:
            cover[m] += res[m].ci_low <= 10.0 <= res[m].ci_high
    for m, c in cover.items():
        assert 0.82 <= c / reps <= 0.97, (m, c / reps)


def test_identical_methods_give_p_one():
    rng = np.random.default_rng(0)
    r = _random_ranks(rng, 30, 5, rng.gamma(2.0, 0.5, 30))
    v = query_values(*r[:2], r[2])
    res = paired_test(v, v, resamples=500)
    assert all(res[m].p == 1.0 and res[m].diff == 0 and res[m].ties == 30 for m in METRICS)


def test_seeded_and_reproducible():
    rng = np.random.default_rng(4)
    ra = _random_ranks(rng, 50, 5, rng.gamma(2.0, 0.5, 50))
    rb = _random_ranks(rng, 50, 5, rng.gamma(2.0, 0.5, 50))
    va, vb = query_values(*ra[:2], ra[2]), query_values(*rb[:2], rb[2])
    r1 = paired_test(va, vb, resamples=3000, seed=1)
    r2 = paired_test(va, vb, resamples=3000, seed=1)
    r3 = paired_test(va, vb, resamples=3000, seed=2)
    assert r1 == r2
    assert r1["mR"].ci_low != r3["mR"].ci_low


# ---------------------------------------------------------------------------------------------
# result folders and CLI


def _results(tmp_path: Path, seeds_c=(0, 1, 2)) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "res"
    easy = rng.random(120) < 0.5
    for method, (pe, ph), seeds in (
        ("good", (0.9, 0.5), (0, 1, 2)),
        ("mid", (0.8, 0.4), (0, 1, 2)),
        ("twin", (0.8, 0.4), seeds_c),
    ):
        for s in seeds:
            write_cell(root, "toy", method, s, *_clustered_ranks(rng, 120, 5, pe, ph, easy))
    return root


def test_compare_results_table(tmp_path):
    root = _results(tmp_path, seeds_c=(5,))
    df = compare_results(root, resamples=999)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 3 * len(METRICS)  # 3 pairs x 7 metrics
    mr = df[df.metric == "mR"].set_index(["method_a", "method_b"])
    gm = mr.loc[("good", "mid")]
    assert gm.significant and gm["diff"] > 0 and gm.n_seeds == 3 and not math.isnan(gm.seed_p)
    assert gm.p_holm >= gm.p
    # 'twin' shares no seed with the others: query-level test still runs, seed test is NaN
    gt = mr.loc[("good", "twin")]
    assert gt.n_seeds == 0 and math.isnan(gt.seed_p) and gt.significant
    # the means are the seed means of metrics.json
    from rsbench.results.scan import scan_results

    seed_mr = [c.metrics["mR"] for c in scan_results(root) if c.method == "good"]
    assert gm.mean_a == pytest.approx(np.mean(seed_mr))
    assert gm.std_a == pytest.approx(np.std(seed_mr, ddof=1))
    assert (df.wins + df.ties + df.losses == df.n_clusters).all()
    # reproducible, and a pair's result does not depend on the other methods present
    again = compare_results(root, resamples=999)
    assert again.equals(df)
    import shutil

    shutil.rmtree(root / "toy" / "twin")
    alone = compare_results(root, resamples=999).set_index(["method_a", "method_b", "metric"])
    pd_row = alone.loc[("good", "mid", "mR")]
    assert (pd_row.p, pd_row.ci_low, pd_row.ci_high) == (gm.p, gm.ci_low, gm.ci_high)
    write_significance(df, tmp_path / "sig.csv")
    assert (tmp_path / "sig.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    text = format_significance(df, "mR")
    assert "good" in text and "Holm" in text


def test_compare_errors(tmp_path):
    root = _results(tmp_path)
    with pytest.raises(UserError, match="did you mean 'toy'"):
        compare_results(root, dataset="tyo")
    with pytest.raises(UserError, match="alpha"):
        compare_results(root, alpha=1.5)
    with pytest.raises(UserError, match="not found"):
        compare_results(tmp_path / "missing")


def test_cli_compare(tmp_path):
    from typer.testing import CliRunner

    from rsbench.cli.app import build_app

    root = _results(tmp_path)
    result = CliRunner().invoke(build_app(), ["compare", str(root), "--resamples", "500", "--metric", "t2i_r1"])
    assert result.exit_code == 0, result.output
    assert "t2i_r1" in result.output and (root / "significance.csv").is_file()
    bad = CliRunner().invoke(build_app(), ["compare", str(root), "--metric", "mr"])
    assert isinstance(bad.exception, UserError) and "did you mean 'mR'" in str(bad.exception)


def test_statistics_is_pure_and_the_folder_half_lives_in_results() -> None:
    """evaluation.statistics reads no folder (#14): no import of rsbench.results or rsbench.io in it."""
    import ast
    from pathlib import Path

    import rsbench.evaluation.statistics as st

    tree = ast.parse(Path(st.__file__).read_text(encoding="utf-8"))
    imported = {("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if "results" in m or m.endswith("io")}
    assert not any(callable(getattr(st, name, None)) and name in st.__dict__
                   for name in ("group_runs", "load_runs", "compare_results", "format_significance"))
