"""Paired significance tests between methods on one test set, and Holm correction.

What is tested
--------------
For two methods A and B evaluated on the same dataset and test split we test each of the seven
reported metrics (mR and R@1/5/10 in both directions) with

* a paired randomisation (sign-flip) test over test queries, two-sided,
  p = (b + 1) / (n + 1) with b the number of the n random relabellings whose |difference| is at
  least the observed one;
* a paired bootstrap percentile confidence interval (level 1 - alpha) of the difference A - B;
* across seeds, a paired t-test (`scipy.stats.ttest_rel`) on the per-seed metric over the seeds
  both methods share (``seed_p``; NaN with fewer than two shared seeds);
* Holm's step-down correction of the query-level p over all method pairs of one
  (dataset, split, metric) family (``p_holm``; ``significant`` means p_holm < alpha).

Resampling unit: the image
--------------------------
Captions of one image are not independent queries, and an image query (image->text) is scored
against the same captions. So one *cluster* is an image together with its captions: the
image->text query of that image and the text->image queries of its captions are relabelled
(sign flip) or resampled (bootstrap) together. Each metric is a ratio of cluster sums,

    R@K(i2t) = 100 * sum_c 1[rank_c <= K] / n_images
    R@K(t2i) = 100 * sum_c #{captions of c with rank <= K} / sum_c n_captions(c)
    mR       = mean of the six recalls = (mean of the 3 i2t recalls + mean of the 3 t2i recalls) / 2,

so mR combines both directions in one statistic and the bootstrap recomputes each direction's
ratio on the resampled clusters (the t2i denominator is the resampled number of captions).
Under the sign-flip null, swapping A and B inside a cluster flips the sign of that cluster's
contribution to the difference; the denominators are the same for A and B.

Seeds
-----
The per-query success indicators of each method are averaged over the seeds both methods share
(a per-query success rate), and the query-level test is run once on these averages. This tests
"the seed-averaged models differ on this test set" with one p per pair and metric, and the
reported means are exactly the mean over shared seeds of the per-seed metric. The seed-to-seed
spread is covered separately by the paired t-test across seeds. If the two methods share no seed,
each method's indicators are averaged over all its own seeds (queries still pair, since the test
set is the same) and ``n_seeds`` is 0.

Wins / ties / losses are counted at the cluster level (per image, on the cluster's contribution
to the metric's difference, seed-averaged), so wins + ties + losses = n_clusters.

Std over seeds (``std_a``/``std_b``, ddof=1) is also over the shared seeds. Only cells of one
split are compared (default "test"; metrics.json "split").

Implementation choice
---------------------
The statistics are ratios of cluster sums with clusters of unequal size and two directions mixed
in mR; `scipy.stats.permutation_test` / `bootstrap` would call a Python statistic per batch and
cannot express "flip an image and all its captions together" without that wrapper anyway. We
therefore resample matrix-wise in numpy: a (resamples x n_clusters) matrix of random signs
(permutation) and one of multinomial counts (bootstrap); one matrix product each with the six
per-cluster recall differences gives every resampled statistic of all seven metrics at once.
The differences are integers after scaling by lcm(number of seeds averaged), so the products run
in float32 exactly (ties with the observed value, common for R@K, are counted exactly).
The random matrices are drawn once per test set, in fixed-size blocks, from
`numpy.random.SeedSequence([seed, crc32("dataset/split")])`, and shared by all pairs: results are
reproducible, a pair's result does not depend on which other methods are present, and the draws
are paid once. Timing at RSICD size (1093 images, 5465 captions), 10,000 resamples, measured on
a shared, heavily loaded 2-core machine: drawing < 1 s once per dataset, then 0.1-0.25 s per pair
for all seven metrics (a 5-method comparison, 10 pairs, in ~4.5 s including reading the cells).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError, unknown
from .metrics import METRICS as _SPECS
from .metrics import RECALL_KS as KS
from .metrics import TESTED_METRICS

COLUMNS: tuple[str, ...] = (
    "dataset", "split", "method_a", "method_b", "metric", "mean_a", "mean_b", "std_a", "std_b", "diff",
    "ci_low", "ci_high", "p", "p_holm", "significant", "wins", "ties", "losses", "n_queries",
    "n_clusters", "n_seeds", "seed_p",
)  # fmt: skip
_CHUNK = 2048  # resamples per generated block (bounds memory; part of the reproducible stream)


# --------------------------------------------------------------------------------------------
# per-cluster values


@dataclass
class QueryValues:
    """Per-cluster (per-image) success counts of one method, averaged over seeds.

    i2t: (n_images, 3) indicator of rank <= K for the image query, K in (1, 5, 10).
    t2i: (n_images, 3) number of the image's captions whose rank <= K.
    n_caps: (n_images,) number of captions of each image (the t2i denominator).
    n_seeds: number of seeds averaged (values are multiples of 1/n_seeds).
    """

    i2t: np.ndarray
    t2i: np.ndarray
    n_caps: np.ndarray
    n_seeds: int = 1

    @property
    def n_clusters(self) -> int:
        return int(self.n_caps.shape[0])


def query_values(i2t_rank: np.ndarray, t2i_rank: np.ndarray, cap2img: np.ndarray) -> QueryValues:
    """Cluster values from 1-based ranks. Ranks may be 1-D (one seed) or 2-D (seeds x queries):
    a 2-D input is averaged over seeds (per-query success rates)."""
    i2t_rank = np.atleast_2d(np.asarray(i2t_rank))
    t2i_rank = np.atleast_2d(np.asarray(t2i_rank))
    cap2img = np.asarray(cap2img, dtype=np.int64)
    n_images = i2t_rank.shape[1]
    if i2t_rank.shape[0] != t2i_rank.shape[0]:
        raise UserError(f"i2t_rank has {i2t_rank.shape[0]} seeds but t2i_rank has {t2i_rank.shape[0]}")
    if t2i_rank.shape[1] != cap2img.shape[0]:
        raise UserError(f"t2i_rank has {t2i_rank.shape[1]} captions but cap2img has {cap2img.shape[0]}")
    if cap2img.size and (cap2img.min() < 0 or cap2img.max() >= n_images):
        raise UserError(f"cap2img refers to images outside 0..{n_images - 1}")
    ks = np.asarray(KS)
    i2t = (i2t_rank[:, :, None] <= ks).mean(axis=0).astype(np.float64)  # (n_images, 3)
    hit = (t2i_rank[:, :, None] <= ks).mean(axis=0)  # (n_captions, 3)
    t2i = np.zeros((n_images, len(KS)))
    np.add.at(t2i, cap2img, hit)
    n_caps = np.bincount(cap2img, minlength=n_images).astype(np.float64)
    return QueryValues(i2t=i2t, t2i=t2i, n_caps=n_caps, n_seeds=int(i2t_rank.shape[0]))


def metric_weights(metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Weights (over K) of the i2t and t2i recalls making up `metric`."""
    spec = next((s for s in _SPECS if s.name == metric and s.in_table), None)
    if spec is None:
        raise unknown("metric", metric, TESTED_METRICS)
    wi, wt = np.zeros(len(KS)), np.zeros(len(KS))
    if spec.recall_k is None:  # mR: the mean of the six recalls
        wi[:] = wt[:] = 1.0 / (2 * len(KS))
    else:
        (wi if spec.query == "i2t" else wt)[KS.index(spec.recall_k)] = 1.0
    return wi, wt


def metric_value(v: QueryValues, metric: str) -> float:
    """The metric (percent) of one method's cluster values."""
    wi, wt = metric_weights(metric)
    i2t = 100.0 * v.i2t.sum(axis=0) / v.n_clusters
    t2i = 100.0 * v.t2i.sum(axis=0) / v.n_caps.sum()
    return float(wi @ i2t + wt @ t2i)


# --------------------------------------------------------------------------------------------
# the paired query-level test


@dataclass
class PairResult:
    metric: str
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p: float
    wins: int
    ties: int
    losses: int
    n_queries: int
    n_clusters: int


@dataclass
class Resamples:
    """Random draws shared by every pair of one test set.

    signs: blocks of (rows x n) sign flips (+1 keep, -1 swap A and B); counts: blocks of bootstrap
    multinomial counts. Stored as float32 ready for the matrix product when small (RSICD at
    10,000 resamples: 2 x 44 MB), else compactly (int8 / uint16) and converted block by block.
    """

    n: int
    resamples: int
    signs: list[np.ndarray]
    counts: list[np.ndarray]

    def sign_blocks(self) -> Iterable[np.ndarray]:
        for b in self.signs:
            yield b if b.dtype == np.float32 else b.astype(np.float32) * 2 - 1

    def count_blocks(self) -> Iterable[np.ndarray]:
        for b in self.counts:
            yield b if b.dtype == np.float32 else b.astype(np.float32)


_CACHE_ELEMENTS = 16_000_000  # above this many draws per matrix, keep them compact


def draw_resamples(n: int, resamples: int, seed: int | Sequence[int] = 0) -> Resamples:
    """Sign flips and bootstrap counts for `n` clusters, reproducible from `seed`.

    Generated in blocks of 2048 rows from two independent streams spawned from `seed`
    (numpy.random.SeedSequence), so the draws depend only on (n, resamples, seed).
    """
    if resamples < 1:
        raise UserError(f"--resamples must be >= 1 (got {resamples})")
    rng_sign, rng_boot = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    ready = n * resamples <= _CACHE_ELEMENTS
    count_dtype = np.float32 if ready else (np.uint16 if n < 2**16 else np.int64)
    signs, counts = [], []
    for start in range(0, resamples, _CHUNK):
        r = min(_CHUNK, resamples - start)
        flips = rng_sign.integers(0, 2, size=(r, n), dtype=np.int8)
        signs.append(flips.astype(np.float32) * 2 - 1 if ready else flips)
        idx = rng_boot.integers(0, n, size=(r, n)) + (np.arange(r) * n)[:, None]
        counts.append(np.bincount(idx.ravel(), minlength=r * n).reshape(r, n).astype(count_dtype))
    return Resamples(n=n, resamples=resamples, signs=signs, counts=counts)


def _tol(obs: np.ndarray) -> float:
    # equal statistics computed along different summation orders differ by rounding only
    return 1e-9 * max(1.0, float(np.abs(obs).max(initial=0.0)))


def resampling_distributions(
    a: QueryValues, b: QueryValues, metrics: Sequence[str], draws: Resamples
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs (M,), contrib (n, M), perm (R, M), boot (R, M)) for the difference A - B per metric.

    obs: the observed difference; contrib: each cluster's contribution to it (sums to obs);
    perm: the difference under each random sign flip of whole clusters; boot: the difference
    recomputed on each bootstrap resample of clusters (ratio of resampled sums per direction).

    The per-cluster differences are integers once multiplied by lcm(seeds of A, seeds of B), so
    the matrix products run in float32 and are exact (sums stay below 2**24); the seven metrics
    are then formed from the six exact recall sums in float64. Exact sums make ties with the
    observed statistic, which are common for R@K, count the same way in every run.
    """
    n = a.n_clusters
    n_cap = float(a.n_caps.sum())
    weights = [metric_weights(m) for m in metrics]
    W_i = 100.0 * np.stack([w[0] for w in weights], axis=1)  # (3, M)
    W_t = 100.0 * np.stack([w[1] for w in weights], axis=1)
    scale = math.lcm(a.n_seeds, b.n_seeds)
    D = np.concatenate([a.i2t - b.i2t, a.t2i - b.t2i], axis=1) * scale  # (n, 6)
    Dr = np.rint(D)
    exact = np.allclose(D, Dr, rtol=0, atol=1e-6) and n * max(np.abs(Dr).max(initial=0), a.n_caps.max()) < 2**24
    dt = np.float32 if exact else np.float64
    X = (Dr if exact else D).astype(dt)

    def to_metrics(raw: np.ndarray, n_den: float | np.ndarray = n_cap) -> np.ndarray:
        return raw[:, :3] / (scale * n) @ W_i + raw[:, 3:6] / (scale * n_den) @ W_t

    obs = to_metrics(X.sum(axis=0, dtype=np.float64)[None, :])[0]
    contrib = to_metrics(X.astype(np.float64))
    perm = np.concatenate([to_metrics((S.astype(dt, copy=False) @ X).astype(np.float64)) for S in draws.sign_blocks()])
    Xb = np.concatenate([X, a.n_caps[:, None].astype(dt)], axis=1)  # (n, 7)
    boot = []
    for C in draws.count_blocks():
        s = (C.astype(dt, copy=False) @ Xb).astype(np.float64)  # the resampled i2t denominator is n
        boot.append(to_metrics(s, s[:, 6:7]))
    return obs, contrib, perm, np.concatenate(boot, axis=0)


def paired_test(
    a: QueryValues,
    b: QueryValues,
    metrics: Sequence[str] = TESTED_METRICS,
    resamples: int = 10_000,
    alpha: float = 0.05,
    seed: int | Sequence[int] = 0,
    draws: Resamples | None = None,
) -> dict[str, PairResult]:
    """Paired sign-flip test and cluster bootstrap CI of A - B for each metric.

    The same random matrices serve every metric (one matrix product each). They come from
    `draws` when given (shared by all pairs of a test set), else from draw_resamples(n, resamples, seed).
    """
    if a.n_clusters != b.n_clusters or not np.array_equal(a.n_caps, b.n_caps):
        raise UserError("the two methods were not evaluated on the same test set (images/captions differ)")
    n = a.n_clusters
    if draws is None:
        draws = draw_resamples(n, resamples, seed)
    elif draws.n != n:
        raise ValueError(f"draws are for {draws.n} clusters, the data has {n}")
    weights = [metric_weights(m) for m in metrics]
    obs, contrib, perm, boot = resampling_distributions(a, b, metrics, draws)
    tol = _tol(obs)
    # two-sided; p = (b + 1) / (n + 1) with b = #(|relabelled diff| >= |observed diff|)
    exceed = (np.abs(perm) >= np.abs(obs) - tol).sum(axis=0)
    p = (exceed + 1) / (draws.resamples + 1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    n_cap = float(a.n_caps.sum())

    out = {}
    for j, m in enumerate(metrics):
        wi, wt = weights[j]
        n_q = (n if wi.any() else 0) + (int(n_cap) if wt.any() else 0)
        c = contrib[:, j]
        out[m] = PairResult(
            metric=m,
            mean_a=metric_value(a, m),
            mean_b=metric_value(b, m),
            diff=float(obs[j]),
            ci_low=float(lo[j]),
            ci_high=float(hi[j]),
            p=float(p[j]),
            wins=int((c > tol).sum()),
            ties=int((np.abs(c) <= tol).sum()),
            losses=int((c < -tol).sum()),
            n_queries=n_q,
            n_clusters=n,
        )
    return out


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def seed_ttest(a: Sequence[float], b: Sequence[float]) -> float:
    """Paired t-test p over shared seeds; NaN with fewer than two seeds or zero variance."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = stats.ttest_rel(a, b).pvalue
    return float(p)


def stream_seed(seed: int, dataset: str, split: str) -> list[int]:
    """The resampling stream of one test set: the user's seed and a hash of dataset/split."""
    return [int(seed), zlib.crc32(f"{dataset}/{split}".encode())]


def check_alpha(alpha: float) -> None:
    """--alpha must lie strictly between 0 and 1 (compare, leaderboard)."""
    if not 0.0 < alpha < 1.0:
        raise UserError(f"--alpha must be between 0 and 1 (got {alpha})")
