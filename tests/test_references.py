"""The perf harness's references (#20) must compute what rsbench computes, the authors' way."""

from __future__ import annotations

import numpy as np
import pytest


def _tie_free(ni: int, nt: int, seed: int) -> np.ndarray:
    """Distinct integer scores in float32 (exact below 2**24): no ties, so every tie rule agrees."""
    return np.random.default_rng(seed).permutation(ni * nt).reshape(ni, nt).astype(np.float32)


def test_authors_procedure_equals_compute_ranks_and_metrics():
    from rsbench.benchmarks.amfmn_refs import ranks_authors_procedure
    from rsbench.evaluation.metrics import compute_ranks, metrics_from_ranks

    sims = _tie_free(23, 107, 0)
    c2i = np.sort(np.random.default_rng(1).integers(0, 23, 107))
    c2i[:23] = np.arange(23)  # every image has a caption; some have 1, others many (not always 5)
    c2i.sort()
    i2t, t2i, m = ranks_authors_procedure(sims, c2i)
    ref_i2t, ref_t2i = compute_ranks(sims, c2i)
    assert i2t.tolist() == ref_i2t.tolist() and t2i.tolist() == ref_t2i.tolist()
    ours = metrics_from_ranks(ref_i2t, ref_t2i)
    assert {k: float(v) for k, v in m.items()} == pytest.approx({k: ours[k] for k in m}, rel=1e-12, abs=0)


def test_authors_procedure_by_hand():
    """2 images x 4 captions (captions 0,1 of image 0; 2,3 of image 1), worked out by hand."""
    from rsbench.benchmarks.amfmn_refs import ranks_authors_procedure

    sims = np.array([[0.1, 0.5, 0.9, 0.2],    # image 0: best own caption (1) is 2nd -> rank 2
                     [0.8, 0.3, 0.7, 0.05]],  # image 1: best own caption (2) is 2nd -> rank 2
                    dtype=np.float32)
    i2t, t2i, m = ranks_authors_procedure(sims, np.array([0, 0, 1, 1]))
    assert i2t.tolist() == [2, 2] and t2i.tolist() == [2, 1, 2, 2]  # caption 2: 0.9 for image 0 beats 0.7
    assert m["i2t_r1"] == 0.0 and m["t2i_r1"] == 25.0 and m["t2i_medr"] == 2.0 and m["t2i_meanr"] == 1.75
