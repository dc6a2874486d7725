"""Per-query top-K (rsbench.evaluation.topk) against a naive per-query sort, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsbench.errors import UserError
from rsbench.evaluation.topk import TopK, read_topk, topk_blockwise, topk_from_scores, write_topk


def _naive(sims: np.ndarray, k: int) -> tuple[list[list[int]], list[list[int]]]:
    """Per query: sort candidates by (score descending, index ascending) with a Python key."""
    n_img, n_cap = sims.shape
    i2t = [sorted(range(n_cap), key=lambda c: (-sims[i, c], c))[:k] for i in range(n_img)]
    t2i = [sorted(range(n_img), key=lambda i: (-sims[i, c], i))[:k] for c in range(n_cap)]
    return i2t, t2i


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("blocks", [(1024, 16384), (3, 7), (1, 1), (5, 2)])
def test_matches_naive_reference(quantised, blocks):
    rng = np.random.default_rng(3)
    sims = rng.normal(size=(13, 29))
    if quantised:  # many ties, also across block borders and at the K-th place
        sims = np.round(sims * 2) / 2
    top = topk_from_scores(sims, k=10, block_images=blocks[0], block_captions=blocks[1])
    i2t, t2i = _naive(sims, 10)
    assert top.i2t_idx.tolist() == i2t
    assert top.t2i_idx.tolist() == t2i
    want_i2t = np.array([[sims[i, c] for c in row] for i, row in enumerate(i2t)], dtype=np.float32)
    want_t2i = np.array([[sims[i, c] for i in row] for c, row in enumerate(t2i)], dtype=np.float32)
    np.testing.assert_array_equal(top.i2t_score, want_i2t)
    np.testing.assert_array_equal(top.t2i_score, want_t2i)


def test_all_equal_scores_give_index_order_and_small_gallery_caps_k():
    sims = np.zeros((4, 12))
    top = topk_from_scores(sims, k=10, block_images=3, block_captions=5)
    assert top.i2t_idx.tolist() == [list(range(10))] * 4
    assert top.t2i_idx.tolist() == [[0, 1, 2, 3]] * 12  # only 4 images: K = 4 for text -> image


def test_torch_blocks_and_half_precision():
    rng = np.random.default_rng(0)
    sims = np.round(rng.normal(size=(9, 17)), 1).astype(np.float32)
    t = torch.from_numpy(sims).to(torch.bfloat16)
    top = topk_blockwise(lambda i, c: t[i, c], 9, 17, k=5, block_images=4, block_captions=6)
    i2t, t2i = _naive(t.float().numpy(), 5)
    assert top.i2t_idx.tolist() == i2t and top.t2i_idx.tolist() == t2i


def test_nan_and_bad_shapes_raise():
    sims = np.ones((3, 4))
    sims[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        topk_from_scores(sims)
    with pytest.raises(ValueError, match="shape"):
        topk_blockwise(lambda i, c: np.zeros((1, 1)), 3, 4, block_images=2, block_captions=2)


def test_file_round_trip_and_validation(tmp_path):
    sims = np.random.default_rng(1).normal(size=(6, 30))
    top = topk_from_scores(sims)
    f = tmp_path / "topk.npz"
    write_topk(f, top)
    back = read_topk(f, n_images=6, n_captions=30)
    for key in ("i2t_idx", "i2t_score", "t2i_idx", "t2i_score"):
        np.testing.assert_array_equal(getattr(back, key), getattr(top, key))
    with pytest.raises(UserError, match="queries, but the cell has 7"):
        read_topk(f, n_images=7, n_captions=30)
    with pytest.raises(UserError, match="out of range"):
        read_topk(f, n_images=6, n_captions=5)
    bad = TopK(top.i2t_idx, top.i2t_score[:, ::-1].copy(), top.t2i_idx, top.t2i_score)
    write_topk(f, bad)
    with pytest.raises(UserError, match="non-increasing"):
        read_topk(f)
    f.write_bytes(b"")
    with pytest.raises(UserError, match="topk.npz: not a valid top-K file"):
        read_topk(f)
    with pytest.raises(UserError, match="file not found"):
        read_topk(tmp_path / "nope.npz")
