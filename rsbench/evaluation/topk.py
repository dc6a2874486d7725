"""Per-query top-K retrieved indices and scores, kept in the cell so figures never need the model.

Same tie rule as the ranks (rsbench.evaluation.metrics): among equal scores the lower index comes
first, i.e. the order of a stable sort of descending scores. The score matrix is visited block by
block and each query keeps a running top-K, so a 50,000 x 250,000 gallery never has to fit in
memory: per block, a partition finds each row's K-th best score in linear time and only the
candidates at or above it are sorted. Both directions come from the same pass over the blocks.

File layout (``topk.npz`` beside ranks.npz): ``i2t_idx`` (n_images, K) int64 caption indices,
``i2t_score`` (n_images, K) float32, ``t2i_idx`` (n_captions, K) int64 image indices, ``t2i_score``
(n_captions, K) float32; row q is query q's best K, best first. K is min(10, gallery size).
Scores are stored as float32 (display only; ranks.npz stays the exact record).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

TOPK = 10
TOPK_FILE = "topk.npz"
_KEYS = ("i2t_idx", "i2t_score", "t2i_idx", "t2i_score")


@dataclass
class TopK:
    """Best K candidates per query in both directions (see the module docstring for shapes)."""

    i2t_idx: np.ndarray
    i2t_score: np.ndarray
    t2i_idx: np.ndarray
    t2i_score: np.ndarray

    @property
    def n_images(self) -> int:
        return int(self.i2t_idx.shape[0])

    @property
    def n_captions(self) -> int:
        return int(self.t2i_idx.shape[0])


def _block_topk(a: np.ndarray, k: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k (index, score) of each row of `a` (candidates along axis 1, global index start + col).

    Linear-time partition finds each row's k-th best score; only rows where ties straddle it need
    a full stable sort, the others sort just their k survivors.
    """
    n_rows, n_cols = a.shape
    k = min(k, n_cols)
    if k == n_cols:
        order = np.argsort(-a, axis=1, kind="stable")
        return order + start, np.take_along_axis(a, order, axis=1)
    part = np.argpartition(-a, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(a, part, axis=1).min(axis=1)
    clean = np.count_nonzero(a >= kth[:, None], axis=1) == k  # no tie straddles the k-th place
    idx = np.empty((n_rows, k), dtype=np.int64)
    if clean.any():
        p = part[clean]
        v = np.take_along_axis(a[clean], p, axis=1)
        o = np.lexsort((p, -v), axis=1)
        idx[clean] = np.take_along_axis(p, o, axis=1)
    if not clean.all():
        idx[~clean] = np.argsort(-a[~clean], axis=1, kind="stable")[:, :k]
    return idx + start, np.take_along_axis(a, idx, axis=1)


def _merge(best: tuple[np.ndarray, np.ndarray] | None, new: tuple[np.ndarray, np.ndarray],
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge two per-row candidate lists into the best k by (score desc, index asc)."""
    if best is None:
        return new
    idx = np.concatenate([best[0], new[0]], axis=1)
    val = np.concatenate([best[1], new[1]], axis=1)
    o = np.lexsort((idx, -val), axis=1)[:, :k]
    return np.take_along_axis(idx, o, axis=1), np.take_along_axis(val, o, axis=1)


def _as_numpy(b: Any) -> np.ndarray:
    """A score block as a float numpy array (torch tensors on any device are copied to the CPU)."""
    if hasattr(b, "detach"):
        b = b.detach()
        if not b.is_floating_point() or b.dtype.itemsize < 4:
            b = b.float()  # fp16/bf16 are exact in float32: same order, same ties
        b = b.cpu().numpy()
    a = np.asarray(b)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    elif a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    return a


def topk_blockwise(score_block: Callable[[slice, slice], Any], n_images: int, n_captions: int,
                   k: int = TOPK, block_images: int = 1024, block_captions: int = 16384) -> TopK:
    """Top-k of every query in both directions, holding one (block_images x block_captions) block.

    score_block(img_slice, cap_slice) returns those scores (numpy array or torch tensor), as for
    metrics.compute_ranks_blockwise. NaN scores raise ValueError.
    """
    if k < 1 or block_images < 1 or block_captions < 1:
        raise ValueError("k and block sizes must be >= 1")
    if n_images < 1 or n_captions < 1:
        raise ValueError(f"empty gallery ({n_images} images x {n_captions} captions)")
    i2t: list[tuple[np.ndarray, np.ndarray] | None] = [None] * -(-n_images // block_images)
    t2i: list[tuple[np.ndarray, np.ndarray] | None] = [None] * -(-n_captions // block_captions)
    k_i2t, k_t2i = min(k, n_captions), min(k, n_images)
    for ib in range(len(i2t)):
        i0, i1 = ib * block_images, min((ib + 1) * block_images, n_images)
        for cb in range(len(t2i)):
            c0, c1 = cb * block_captions, min((cb + 1) * block_captions, n_captions)
            a = _as_numpy(score_block(slice(i0, i1), slice(c0, c1)))
            if a.shape != (i1 - i0, c1 - c0):
                raise ValueError(f"score_block returned shape {a.shape}, expected {(i1 - i0, c1 - c0)}")
            if np.isnan(a).any():
                raise ValueError(f"NaN scores in block images {i0}:{i1} x captions {c0}:{c1}")
            i2t[ib] = _merge(i2t[ib], _block_topk(a, k_i2t, c0), k_i2t)
            t2i[cb] = _merge(t2i[cb], _block_topk(a.T, k_t2i, i0), k_t2i)
    return TopK(
        i2t_idx=np.concatenate([b[0] for b in i2t]), i2t_score=np.concatenate([b[1] for b in i2t]).astype(np.float32),
        t2i_idx=np.concatenate([b[0] for b in t2i]), t2i_score=np.concatenate([b[1] for b in t2i]).astype(np.float32),
    )  # fmt: skip


def topk_from_scores(sims: Any, k: int = TOPK, block_images: int = 1024, block_captions: int = 16384) -> TopK:
    """Top-k of a full (n_images, n_captions) score matrix (numpy, memory-mapped, or torch)."""
    if len(sims.shape) != 2:
        raise ValueError(f"score matrix must be 2-D, got shape {tuple(sims.shape)}")
    n_images, n_captions = (int(n) for n in sims.shape)
    return topk_blockwise(lambda i, c: sims[i, c], n_images, n_captions, k, block_images, block_captions)


def write_topk(path: str | Path, top: TopK) -> None:
    """Write topk.npz atomically (through rsbench.io)."""
    from ..io import write_with

    arrays = {key: getattr(top, key) for key in _KEYS}
    write_with(Path(path), lambda f: np.savez(f, **arrays))


def _check_part(f: Path, arr: dict[str, np.ndarray], side: str, n_queries: int | None,
                n_candidates: int | None) -> None:
    """Shape, range and order checks of one direction; UserError naming the file otherwise."""
    idx, score = arr[f"{side}_idx"], arr[f"{side}_score"]
    if idx.ndim != 2 or score.shape != idx.shape or idx.shape[1] < 1:
        raise UserError(f"{f}: {side} arrays have shapes {idx.shape} and {score.shape}, expected equal (n, K)")
    if n_queries is not None and idx.shape[0] != n_queries:
        raise UserError(f"{f}: {idx.shape[0]} {side} queries, but the cell has {n_queries}")
    if idx.min() < 0 or (n_candidates is not None and idx.max() >= n_candidates):
        raise UserError(f"{f}: {side}_idx out of range [0, {n_candidates})")
    if not np.isfinite(score).all() or (np.diff(score, axis=1) > 0).any():
        raise UserError(f"{f}: {side}_score is not finite and non-increasing per query")


def read_topk(path: str | Path, n_images: int | None = None, n_captions: int | None = None) -> TopK:
    """Read and validate topk.npz (against the cell's gallery size when given); UserError otherwise."""
    f = Path(path)
    if not f.is_file():
        raise UserError(f"{f}: file not found")
    try:
        with np.load(f, allow_pickle=False) as z:
            arr = {key: np.asarray(z[key]) for key in _KEYS}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{f}: not a valid top-K file ({type(e).__name__}: {e})") from None
    for key in _KEYS:
        want = np.integer if key.endswith("_idx") else np.floating
        if not np.issubdtype(arr[key].dtype, want):
            raise UserError(f"{f}: {key} has dtype {arr[key].dtype}")
    _check_part(f, arr, "i2t", n_images, n_captions)
    _check_part(f, arr, "t2i", n_captions, n_images)
    return TopK(**{k: (v.astype(np.int64) if k.endswith("_idx") else v.astype(np.float32)) for k, v in arr.items()})
