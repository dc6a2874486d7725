"""Ranks and recall metrics from an image x caption score matrix (see docs/DESIGN.md, protocol.md).

Ranks are 1-based. Ties are broken as a stable sort of descending scores would: among equal
scores the lower index ranks first. A rank is counted, never sorted for: for each query,
rank = 1 + #(scores strictly higher) + #(equal scores at a lower index). That is vectorised and
lets the same count run block by block, so a 50,000 x 250,000 gallery never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

RECALL_KS = (1, 5, 10)
METRIC_KEYS = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "mR",
    "i2t_medr",
    "i2t_meanr",
    "t2i_medr",
    "t2i_meanr",
)

ScoreBlock = Callable[[slice, slice], torch.Tensor]


def _check_cap2img(cap2img: Any, n_images: int, n_captions: int) -> np.ndarray:
    """Validate cap2img: one in-range image index per caption, and every image has a caption."""
    c2i = np.asarray(cap2img.cpu() if isinstance(cap2img, torch.Tensor) else cap2img)
    if c2i.ndim != 1 or c2i.shape[0] != n_captions:
        raise ValueError(f"cap2img has shape {c2i.shape}, expected ({n_captions},)")
    if n_images < 1 or n_captions < 1:
        raise ValueError(f"empty gallery ({n_images} images x {n_captions} captions)")
    if not np.issubdtype(c2i.dtype, np.integer):
        raise ValueError(f"cap2img must be integer, got {c2i.dtype}")
    c2i = c2i.astype(np.int64)
    if c2i.min() < 0 or c2i.max() >= n_images:
        raise ValueError(f"cap2img values must lie in [0, {n_images})")
    counts = np.bincount(c2i, minlength=n_images)
    if (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0])
        raise ValueError(f"image {missing} has no caption; image->text rank is undefined")
    return c2i


def _as_tensor(sims: Any) -> torch.Tensor:
    if isinstance(sims, torch.Tensor):
        return sims
    arr = np.asarray(sims)
    if not arr.flags.writeable:  # torch warns on read-only buffers; a view is all we need
        arr = arr.copy()
    return torch.from_numpy(arr)


def compute_ranks(sims: Any, cap2img: Any) -> tuple[np.ndarray, np.ndarray]:
    """1-based (i2t_rank (n_images,), t2i_rank (n_captions,)) int64 from a full score matrix.

    sims: (n_images, n_captions) numpy array (memory-mapped is fine) or torch tensor (any device);
    higher = more similar. Counting runs block by block, so temporary memory stays bounded.
    i2t: an image's rank is the best rank of any of its own captions among all captions.
    t2i: a caption's rank is the rank of its own image among all images.
    """
    if isinstance(sims, torch.Tensor):
        s = sims

        def score_block(i: slice, c: slice) -> torch.Tensor:
            return s[i, c]
    else:
        # numpy (also read-only or memory-mapped): only one block at a time is copied into torch
        s = sims if isinstance(sims, np.ndarray) else np.asarray(sims)

        def score_block(i: slice, c: slice) -> torch.Tensor:
            return torch.from_numpy(np.array(s[i, c]))

    if s.ndim != 2:
        raise ValueError(f"score matrix must be 2-D, got shape {tuple(s.shape)}")
    n_images, n_captions = s.shape
    return compute_ranks_blockwise(score_block, n_images, n_captions, cap2img)


def _block_index_pairs(c2i: np.ndarray, block_images: int, block_captions: int) -> list[tuple[int, int]]:
    """(image block, caption block) pairs that contain at least one positive pair."""
    pairs = np.stack([c2i // block_images, np.arange(c2i.shape[0]) // block_captions], axis=1)
    return [(int(a), int(b)) for a, b in np.unique(pairs, axis=0)]


def compute_ranks_blockwise(
    score_block: ScoreBlock,
    n_images: int,
    n_captions: int,
    cap2img: Any,
    block_images: int = 1024,
    block_captions: int = 16384,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Same ranks as `compute_ranks`, holding at most one (block_images x block_captions) block.

    score_block(img_slice, cap_slice) returns the scores of those images x captions as a tensor.
    Pass 1 computes only the blocks holding positive pairs and keeps each caption's positive
    score; pass 2 computes every block once and counts, per query, the candidates that beat
    the positive. Both passes use the same tiling, so a deterministic scorer gives the same
    values in both; a query's own positive is excluded by index, never by value. Counting runs
    on `device` (default: wherever score_block returns its tensor). NaN scores raise ValueError.
    """
    if block_images < 1 or block_captions < 1:
        raise ValueError("block sizes must be >= 1")
    c2i = _check_cap2img(cap2img, n_images, n_captions)
    dev = torch.device(device) if device is not None else None

    def block(ib: int, cb: int) -> tuple[torch.Tensor, int, int]:
        i0, c0 = ib * block_images, cb * block_captions
        i1, c1 = min(i0 + block_images, n_images), min(c0 + block_captions, n_captions)
        b = score_block(slice(i0, i1), slice(c0, c1))
        if not isinstance(b, torch.Tensor):
            b = _as_tensor(b)
        if tuple(b.shape) != (i1 - i0, c1 - c0):
            raise ValueError(f"score_block returned shape {tuple(b.shape)}, expected {(i1 - i0, c1 - c0)}")
        if dev is not None:
            b = b.to(dev)
        if b.is_floating_point() and bool(torch.isnan(b).any()):
            raise ValueError(f"NaN scores in block images {i0}:{i1} x captions {c0}:{c1}")
        return b, i0, c0

    # ---- pass 1: the positive score of every caption (its own image) --------------------------
    pos_parts: list[tuple[np.ndarray, torch.Tensor]] = []
    dtype: torch.dtype | None = None
    for ib, cb in _block_index_pairs(c2i, block_images, block_captions):
        b, i0, c0 = block(ib, cb)
        dtype = b.dtype
        caps = np.arange(c0, min(c0 + block_captions, n_captions))
        caps = caps[c2i[caps] // block_images == ib]
        rows = torch.from_numpy(c2i[caps] - i0).to(b.device)
        cols = torch.from_numpy(caps - c0).to(b.device)
        pos_parts.append((caps, b[rows, cols].cpu()))
    assert dtype is not None
    pos = torch.empty(n_captions, dtype=dtype)
    for caps, vals in pos_parts:
        pos[torch.from_numpy(caps)] = vals

    # best positive per image: highest score, lowest caption index among ties
    order = torch.argsort(-pos.double(), stable=True).numpy()
    order = order[np.argsort(c2i[order], kind="stable")]
    first = np.ones(n_captions, dtype=bool)
    first[1:] = c2i[order][1:] != c2i[order][:-1]
    best_cap = np.empty(n_images, dtype=np.int64)
    best_cap[c2i[order[first]]] = order[first]
    best_score = pos[torch.from_numpy(best_cap)]

    # ---- pass 2: count the candidates ranked above each query's positive ------------------------
    i2t_above = np.zeros(n_images, dtype=np.int64)
    t2i_above = np.zeros(n_captions, dtype=np.int64)
    n_ib = -(-n_images // block_images)
    n_cb = -(-n_captions // block_captions)
    c2i_t = torch.from_numpy(c2i)
    best_cap_t = torch.from_numpy(best_cap)
    for ib in range(n_ib):
        for cb in range(n_cb):
            b, i0, c0 = block(ib, cb)
            d = b.device
            i1, c1 = i0 + b.shape[0], c0 + b.shape[1]
            img_idx = torch.arange(i0, i1, device=d)[:, None]
            cap_idx = torch.arange(c0, c1, device=d)[None, :]

            # text -> image: candidates are images (rows), query caption j's positive is pos[j]
            p = pos[c0:c1].to(d)[None, :]
            g = c2i_t[c0:c1].to(d)[None, :]
            above = ((b > p) & (img_idx != g)) | ((b == p) & (img_idx < g))
            t2i_above[c0:c1] += above.sum(0).cpu().numpy()

            # image -> text: candidates are captions (columns), the query's best positive
            q = best_score[i0:i1].to(d)[:, None]
            qc = best_cap_t[i0:i1].to(d)[:, None]
            above = ((b > q) & (cap_idx != qc)) | ((b == q) & (cap_idx < qc))
            i2t_above[i0:i1] += above.sum(1).cpu().numpy()
            del b, above

    return i2t_above + 1, t2i_above + 1


def _recall(ranks: np.ndarray, k: int) -> float:
    return float(100.0 * np.mean(ranks <= k))


def _recall_curve(ranks: np.ndarray, ks: np.ndarray) -> list[float]:
    hits = np.searchsorted(np.sort(ranks), ks, side="right")
    return (100.0 * (hits / ranks.size)).tolist()


def metrics_from_ranks(i2t_rank: Any, t2i_rank: Any, max_k: int = 100) -> dict[str, Any]:
    """R@1/5/10 both ways (percent), mR, median/mean rank, and the recall curve for K = 1..max_k."""
    i2t = np.asarray(i2t_rank, dtype=np.int64)
    t2i = np.asarray(t2i_rank, dtype=np.int64)
    if i2t.ndim != 1 or t2i.ndim != 1 or i2t.size == 0 or t2i.size == 0:
        raise ValueError("rank arrays must be non-empty and 1-D")
    if i2t.min() < 1 or t2i.min() < 1:
        raise ValueError("ranks are 1-based; got a rank < 1")
    if max_k < 1:
        raise ValueError("max_k must be >= 1")
    out: dict[str, Any] = {}
    for direction, r in (("i2t", i2t), ("t2i", t2i)):
        for k in RECALL_KS:
            out[f"{direction}_r{k}"] = _recall(r, k)
    out["mR"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS]))
    for direction, r in (("i2t", i2t), ("t2i", t2i)):
        out[f"{direction}_medr"] = float(np.median(r))
        out[f"{direction}_meanr"] = float(np.mean(r))
    ks = np.arange(1, max_k + 1)
    out["recall_curve"] = {
        "k": ks.tolist(),
        "i2t": _recall_curve(i2t, ks),
        "t2i": _recall_curve(t2i, ks),
    }
    return out


def chance_metrics(cap2img: Any) -> dict[str, float]:
    """Expected R@K and mR (percent) of a random scorer, exactly; a floor to read results against.

    i2t: an image with c captions among N is missed at K only if all K top captions are others:
    P(hit) = 1 - C(N-c, K) / C(N, K). t2i: P(hit) = min(K, n_images) / n_images.
    Keys: chance_i2t_r1 ... chance_t2i_r10, chance_mR.
    """
    c2i = np.asarray(cap2img, dtype=np.int64)
    n_captions = int(c2i.shape[0])
    n_images = int(c2i.max()) + 1 if n_captions else 0
    c2i = _check_cap2img(c2i, n_images, n_captions)
    c = np.bincount(c2i, minlength=n_images).astype(np.float64)
    out: dict[str, float] = {}
    for k in RECALL_KS:
        miss = np.ones(n_images)
        for t in range(min(k, n_captions)):
            miss *= np.clip(n_captions - c - t, 0, None) / (n_captions - t)
        out[f"chance_i2t_r{k}"] = float(100.0 * np.mean(1.0 - miss))
    for k in RECALL_KS:
        out[f"chance_t2i_r{k}"] = float(100.0 * min(k, n_images) / n_images)
    out["chance_mR"] = float(np.mean(list(out.values())))
    return out


def evaluate_scores(sims: Any, cap2img: Any, max_k: int = 100) -> dict[str, Any]:
    """Metrics of a full score matrix: compute_ranks then metrics_from_ranks."""
    i2t, t2i = compute_ranks(sims, cap2img)
    return metrics_from_ranks(i2t, t2i, max_k=max_k)
