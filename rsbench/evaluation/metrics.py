"""Ranks and recall metrics from an image x caption score matrix (see docs/DESIGN.md, protocol.md).

Ranks are 1-based. Ties are broken as a stable sort of descending scores would: among equal
scores the lower index ranks first. A rank is counted, never sorted for: for each query,
rank = 1 + #(scores strictly higher) + #(equal scores at a lower index). That is vectorised and
lets the same count run block by block, so a 50,000 x 250,000 gallery never has to fit in memory.
On CPU a block is counted for both directions in one sweep over cache-sized row chunks with `>`
and `<` alone; only a block where something equals a query's threshold (a tie, or NaN) is counted
again with the tie rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .metric_names import (  # noqa: F401  THE metric list lives there, torch-free (for `bench status`)
    LEADERBOARD_METRICS,
    METRIC_DIRECTION,
    METRIC_HEADERS,
    METRIC_KEYS,
    METRICS,
    RECALL_KS,
    SUMMARY_METRIC,
    TABLE_METRICS,
    TESTED_METRICS,
    MetricSpec,
    metric_sign,
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
    c2i = _check_cap2img(cap2img, n_images, n_captions)
    cols = np.arange(n_captions)
    if isinstance(s, torch.Tensor):  # the positives are at hand: no first pass over the blocks
        positives = s[torch.from_numpy(c2i).to(s.device), torch.from_numpy(cols).to(s.device)]
    else:
        positives = _as_tensor(np.asarray(s[c2i, cols]))
    return compute_ranks_blockwise(score_block, n_images, n_captions, c2i, positives=positives)


def _block_index_pairs(c2i: np.ndarray, block_images: int, block_captions: int) -> list[tuple[int, int]]:
    """(image block, caption block) pairs that contain at least one positive pair."""
    pairs = np.stack([c2i // block_images, np.arange(c2i.shape[0]) // block_captions], axis=1)
    return [(int(a), int(b)) for a, b in np.unique(pairs, axis=0)]


def _nan_in(b: torch.Tensor) -> bool:
    """True if the block holds a NaN. max() propagates NaN, costs one read and cannot overflow."""
    if not b.is_floating_point() or b.numel() == 0:
        return False
    if b.device.type == "cpu" and b.dtype in (torch.float32, torch.float64):
        return bool(np.isnan(b.numpy().max()))
    return bool(torch.isnan(b).any())


def _row_counts(m: np.ndarray) -> np.ndarray:
    """Per-row count of True in a C-contiguous bool matrix whose width is a multiple of 8.

    The bytes are summed eight at a time as uint64 words (each byte lane holds a partial count, at
    most 255 words per group so no lane overflows), then the lanes are added: about twice as fast as
    a uint8 -> uint16 sum, which numpy runs through a casting buffer.
    """
    w = m.view(np.uint64)
    groups = np.add.reduceat(w, np.arange(0, w.shape[1], 255), axis=1) if w.shape[1] > 255 else w.sum(1, keepdims=True)
    return groups.view(np.uint8).sum(axis=1, dtype=np.uint32)


class _Counter:
    """Counts, per query of one block, the candidates ranked above the query's positive.

    rank - 1 = #(candidates scoring strictly higher) + #(equal scores at a lower index), with the
    query's own positive excluded by index. On CPU the block is counted with numpy into a reused
    bool buffer: a uint8 sum along one axis and a whole-block count_nonzero are several times
    faster than torch's bool reductions, and the tie rule runs only when a block holds a tie
    other than the queries' own positives (float scores rarely tie). Other devices use torch.
    """

    CHUNK_BYTES = 2**19  # rows of a block compared at once: they stay in cache for the four passes

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=bool)
        self._words = np.zeros((0, 0), dtype=bool)

    def _bool_buffer(self, shape: tuple[int, int]) -> np.ndarray:
        n = shape[0] * shape[1]
        if self._buf.size < n:
            self._buf = np.empty(n, dtype=bool)
        return self._buf[:n].reshape(shape)

    def count_both(self, b: torch.Tensor, col_thr: torch.Tensor, col_own: torch.Tensor, row_thr: torch.Tensor,
                   row_own: torch.Tensor, i0: int, c0: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Both directions of a CPU block without ties: (per-column counts, per-row counts), else None.

        Columns are the t2i queries (candidates: the block's images from i0, thresholds col_thr), rows
        the i2t queries (candidates: its captions from c0, thresholds row_thr). Rows are visited in
        chunks that stay in cache; each chunk is compared with both thresholds by `>` (summed per
        query) and `<` (counted). What is neither is equal to its threshold or NaN: when that is only
        the queries' own positives, no tie and no NaN can change a count. Otherwise None, and the
        caller checks for NaN and counts with the tie rule (`count`).
        """
        if b.device.type != "cpu" or not b.is_floating_point():
            return None
        if b.dtype in (torch.float16, torch.bfloat16):  # exact in float32: same order, same ties
            b, col_thr, row_thr = b.float(), col_thr.float(), row_thr.float()
        a = b.numpy()
        ct, rt = col_thr.to(b.dtype).numpy(), row_thr.to(b.dtype).numpy()
        n_rows, n_cols = a.shape
        step = max(1, min(n_rows, 255, self.CHUNK_BYTES // max(1, a.itemsize * n_cols)))
        width = -(-n_cols // 8) * 8  # whole 8-byte words per row; the padding stays False
        if self._words.shape[1] != width or self._words.shape[0] < step:
            self._words = np.zeros((step, width), dtype=bool)
        self._words[:, n_cols:] = False  # a narrower block may reuse the buffer
        col_above = np.zeros(width, dtype=np.int64)
        row_above = np.empty(n_rows, dtype=np.int64)
        below = 0
        for r0 in range(0, n_rows, step):
            c, r_thr = a[r0:r0 + step], rt[r0:r0 + step, None]
            full = self._words[:len(c)]
            m = full[:, :n_cols]
            np.greater(c, r_thr, out=m)
            row_above[r0:r0 + len(c)] = _row_counts(full)
            below += np.count_nonzero(np.less(c, r_thr, out=m))
            np.greater(c, ct, out=m)
            col_above += full.view(np.uint64).sum(axis=0).view(np.uint8)  # one byte per column, <= 255 rows
            below += np.count_nonzero(np.less(c, ct, out=m))
        col_above = col_above[:n_cols]
        equal_or_nan = 2 * a.size - below - int(col_above.sum()) - int(row_above.sum())
        expected = 0  # the queries' own positives, equal to their thresholds; excluded by index
        for above, own, thr, start, axis in ((col_above, col_own, ct, i0, 0), (row_above, row_own, rt, c0, 1)):
            local = own.numpy() - start
            mine = np.flatnonzero((local >= 0) & (local < a.shape[axis]))
            own_vals = a[local[mine], mine] if axis == 0 else a[mine, local[mine]]
            above[mine] -= own_vals > thr[mine]  # a scorer may not repeat itself exactly
            expected += np.count_nonzero(own_vals == thr[mine])
        return (col_above, row_above) if equal_or_nan == expected else None

    def count(self, b: torch.Tensor, thr: torch.Tensor, own: torch.Tensor, axis: int, start: int) -> np.ndarray:
        """Per-query counts (int64 numpy) for queries along the axis other than `axis`.

        b: (rows, cols) block; candidates run along `axis` and start at global index `start`.
        thr: each query's positive score; own: global index of each query's own positive.
        """
        if b.device.type == "cpu":
            return self._count_numpy(b, thr, own.cpu().numpy(), axis, start)
        return self._count_torch(b, thr.to(b.device), own.to(b.device), axis, start)

    def _count_numpy(self, b: torch.Tensor, thr: torch.Tensor, own: np.ndarray, axis: int, start: int) -> np.ndarray:
        if b.dtype in (torch.float16, torch.bfloat16):  # exact in float32: same order, same ties
            b, thr = b.float(), thr.float()
        a = b.numpy()
        t = thr.to(b.dtype).numpy()
        t = t[None, :] if axis == 0 else t[:, None]
        n_cand = a.shape[axis]
        acc = np.uint16 if n_cand < 2**16 else np.uint32
        buf = self._bool_buffer(a.shape)

        # queries whose own positive lies in this block: its index along the candidate axis
        local = own - start
        mine = np.flatnonzero((local >= 0) & (local < n_cand))
        own_vals = a[local[mine], mine] if axis == 0 else a[mine, local[mine]]
        own_thr = t[0, mine] if axis == 0 else t[mine, 0]

        np.greater(a, t, out=buf)
        above = buf.view(np.uint8).sum(axis=axis, dtype=acc).astype(np.int64)
        above[mine] -= own_vals > own_thr  # own excluded by index (a scorer may not repeat itself)

        np.equal(a, t, out=buf)
        n_ties = np.count_nonzero(buf) - np.count_nonzero(own_vals == own_thr)
        if n_ties == 0:
            return above
        if n_ties <= buf.size // 64:  # a few ties: visit them
            cand, query = np.divmod(np.flatnonzero(buf), a.shape[1])
            if axis == 1:
                cand, query = query, cand
            keep = cand < local[query]
            above += np.bincount(query[keep], minlength=above.size)
        else:  # many ties (quantised scores): one more masked pass
            idx = np.arange(n_cand)
            lower = idx[:, None] < local[None, :] if axis == 0 else idx[None, :] < local[:, None]
            np.logical_and(buf, lower, out=buf)
            above += buf.view(np.uint8).sum(axis=axis, dtype=acc)
        return above

    @staticmethod
    def _count_torch(b: torch.Tensor, thr: torch.Tensor, own: torch.Tensor, axis: int, start: int) -> np.ndarray:
        idx = torch.arange(start, start + b.shape[axis], device=b.device)
        if axis == 0:
            idx, thr, own = idx[:, None], thr[None, :], own[None, :]
        else:
            idx, thr, own = idx[None, :], thr[:, None], own[:, None]
        thr = thr.to(b.dtype)
        above = ((b > thr) & (idx != own)) | ((b == thr) & (idx < own))
        return above.sum(axis).cpu().numpy().astype(np.int64)


def compute_ranks_blockwise(
    score_block: ScoreBlock,
    n_images: int,
    n_captions: int,
    cap2img: Any,
    block_images: int = 1024,
    block_captions: int = 16384,
    device: str | torch.device | None = None,
    positives: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Same ranks as `compute_ranks`, holding at most one (block_images x block_captions) block.

    score_block(img_slice, cap_slice) returns the scores of those images x captions as a tensor.
    Pass 1 computes only the blocks holding positive pairs and keeps each caption's positive
    score (skipped when `positives`, each caption's score with its own image, is given); pass 2
    computes every block once and counts, per query, the candidates that beat the positive.
    Both passes use the same tiling, so a deterministic scorer gives the same values in both; a
    query's own positive is excluded by index, never by value. Counting runs on `device`
    (default: wherever score_block returns its tensor). NaN scores raise ValueError.
    """
    if block_images < 1 or block_captions < 1:
        raise ValueError("block sizes must be >= 1")
    c2i = _check_cap2img(cap2img, n_images, n_captions)
    dev = torch.device(device) if device is not None else None

    def block(ib: int, cb: int, check_nan: bool = True) -> tuple[torch.Tensor, int, int]:
        i0, c0 = ib * block_images, cb * block_captions
        i1, c1 = min(i0 + block_images, n_images), min(c0 + block_captions, n_captions)
        b = score_block(slice(i0, i1), slice(c0, c1))
        if not isinstance(b, torch.Tensor):
            b = _as_tensor(b)
        if tuple(b.shape) != (i1 - i0, c1 - c0):
            raise ValueError(f"score_block returned shape {tuple(b.shape)}, expected {(i1 - i0, c1 - c0)}")
        if dev is not None:
            b = b.to(dev)
        if check_nan and _nan_in(b):
            raise ValueError(f"NaN scores in block images {i0}:{i1} x captions {c0}:{c1}")
        return b, i0, c0

    # ---- pass 1: the positive score of every caption (its own image) --------------------------
    if positives is not None:
        pos = positives.detach().cpu()
        if tuple(pos.shape) != (n_captions,):
            raise ValueError(f"positives has shape {tuple(pos.shape)}, expected ({n_captions},)")
    else:
        pos = _positives(block, c2i, n_captions, block_images, block_captions)

    best_cap = _best_captions(pos, c2i, n_images)
    best_score = pos[torch.from_numpy(best_cap)]

    # ---- pass 2: count the candidates ranked above each query's positive ------------------------
    i2t_above = np.zeros(n_images, dtype=np.int64)
    t2i_above = np.zeros(n_captions, dtype=np.int64)
    c2i_t = torch.from_numpy(c2i)
    best_cap_t = torch.from_numpy(best_cap)
    counter = _Counter()
    for ib in range(-(-n_images // block_images)):
        for cb in range(-(-n_captions // block_captions)):
            b, i0, c0 = block(ib, cb, check_nan=False)
            i1, c1 = i0 + b.shape[0], c0 + b.shape[1]
            fast = counter.count_both(b, pos[c0:c1], c2i_t[c0:c1], best_score[i0:i1], best_cap_t[i0:i1], i0, c0)
            if fast is not None:  # no tie and no NaN in this block
                t2i_above[c0:c1] += fast[0]
                i2t_above[i0:i1] += fast[1]
                continue
            if _nan_in(b):
                raise ValueError(f"NaN scores in block images {i0}:{i1} x captions {c0}:{c1}")
            # text -> image: candidates are the block's images (axis 0), queries its captions
            t2i_above[c0:c1] += counter.count(b, pos[c0:c1], c2i_t[c0:c1], axis=0, start=i0)
            # image -> text: candidates are the block's captions (axis 1), queries its images
            i2t_above[i0:i1] += counter.count(b, best_score[i0:i1], best_cap_t[i0:i1], axis=1, start=c0)
            del b
    return i2t_above + 1, t2i_above + 1


def _best_captions(pos: torch.Tensor, c2i: np.ndarray, n_images: int) -> np.ndarray:
    """Each image's best caption: the highest positive score, the lowest caption index among ties.

    Two scatter passes (max, then min index among the captions reaching it) instead of a sort.
    NaN positives are left to pass 2, which raises on them.
    """
    p = pos.double().numpy()
    best = np.full(n_images, -np.inf)
    np.maximum.at(best, c2i, p)
    reach = np.flatnonzero(p == best[c2i])
    best_cap = np.full(n_images, c2i.shape[0], dtype=np.int64)
    np.minimum.at(best_cap, c2i[reach], reach)
    missing = best_cap == c2i.shape[0]  # a NaN positive: any own caption will do, pass 2 raises
    if missing.any():
        first = np.full(n_images, c2i.shape[0], dtype=np.int64)
        np.minimum.at(first, c2i, np.arange(c2i.shape[0]))
        best_cap[missing] = first[missing]
    return best_cap


def _positives(block: Callable[[int, int], tuple[torch.Tensor, int, int]], c2i: np.ndarray, n_captions: int,
               block_images: int, block_captions: int) -> torch.Tensor:
    """Each caption's score with its own image, computing only the blocks that hold positives."""
    parts: list[tuple[np.ndarray, torch.Tensor]] = []
    for ib, cb in _block_index_pairs(c2i, block_images, block_captions):
        b, i0, c0 = block(ib, cb)
        caps = np.arange(c0, min(c0 + block_captions, n_captions))
        caps = caps[c2i[caps] // block_images == ib]
        rows = torch.from_numpy(c2i[caps] - i0).to(b.device)
        cols = torch.from_numpy(caps - c0).to(b.device)
        parts.append((caps, b[rows, cols].cpu()))
    pos = torch.empty(n_captions, dtype=parts[0][1].dtype)
    for caps, vals in parts:
        pos[torch.from_numpy(caps)] = vals
    return pos


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
        # the field's convention (VSE++, AMFMN, MSA): floor(median of 0-based ranks) + 1, an integer
        out[f"{direction}_medr"] = float(np.floor(np.median(r - 1)) + 1)
        out[f"{direction}_meanr"] = float(np.mean(r))
    ks = np.arange(1, max_k + 1)
    out["recall_curve"] = {
        "k": ks.tolist(),
        "i2t": _recall_curve(i2t, ks),
        "t2i": _recall_curve(t2i, ks),
    }
    return out


def chance_curve(cap2img: Any, ks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Expected R@K (percent) of a random scorer for each K in `ks`, exactly: (i2t, t2i) arrays.

    i2t: an image with c captions among N is missed at K only if all K top captions are others:
    P(hit) = 1 - C(N-c, K) / C(N, K). t2i: P(hit) = min(K, n_images) / n_images.
    The figures draw it as the floor of the recall curves.
    """
    c2i = np.asarray(cap2img, dtype=np.int64)
    n_captions = int(c2i.shape[0])
    n_images = int(c2i.max()) + 1 if n_captions else 0
    c2i = _check_cap2img(c2i, n_images, n_captions)
    c = np.bincount(c2i, minlength=n_images).astype(np.float64)
    kk = np.asarray(ks, dtype=np.int64).reshape(-1)
    # miss[t] = P(the t top captions are all others), accumulated factor by factor up to the largest K
    top = int(min(kk.max(initial=0), n_captions))
    miss = np.ones((top + 1, n_images))
    for t in range(top):
        miss[t + 1] = miss[t] * np.clip(n_captions - c - t, 0, None) / (n_captions - t)
    i2t = 100.0 * np.mean(1.0 - miss[np.minimum(kk, n_captions)], axis=1)
    t2i = 100.0 * np.minimum(kk, n_images) / n_images
    return i2t, t2i


def chance_metrics(cap2img: Any) -> dict[str, float]:
    """Expected R@K and mR (percent) of a random scorer (chance_curve at K = 1, 5, 10); a floor to
    read results against. Keys: chance_i2t_r1 ... chance_t2i_r10, chance_mR."""
    i2t, t2i = chance_curve(cap2img, RECALL_KS)
    out: dict[str, float] = {}
    for q, curve in (("i2t", i2t), ("t2i", t2i)):
        for k, v in zip(RECALL_KS, curve):
            out[f"chance_{q}_r{k}"] = float(v)
    out["chance_mR"] = float(np.mean(list(out.values())))
    return out


def evaluate_scores(sims: Any, cap2img: Any, max_k: int = 100) -> dict[str, Any]:
    """Metrics of a full score matrix: compute_ranks then metrics_from_ranks."""
    i2t, t2i = compute_ranks(sims, cap2img)
    return metrics_from_ranks(i2t, t2i, max_k=max_k)


def format_metrics(m: dict[str, Any]) -> str:
    """A short human summary of one cell's metrics (summary metric and chance, then one line per direction)."""
    lines = [f"{SUMMARY_METRIC} {m[SUMMARY_METRIC]:.2f}  (chance {m['chance_' + SUMMARY_METRIC]:.2f})"]
    for q in ("i2t", "t2i"):
        recalls = "  ".join(f"R@{k} {m[f'{q}_r{k}']:.2f}" for k in RECALL_KS)
        lines.append(f"{q}  {recalls}  medr {m[f'{q}_medr']:g}  meanr {m[f'{q}_meanr']:.1f}")
    return "\n".join(lines)
