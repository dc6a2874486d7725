"""Perf items on ranking and scoring kernels: 1 (ranks + metrics vs the authors' evaluation functions),
6 (blockwise ranks at scale, peak memory in a child process) and 7 (SCAN test-set scoring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import amfmn_refs
from . import references as ref
from .harness import GIB, MIB, Row, fmt_mib, fmt_seconds, measure_peak, run_child, side_by_side, verdict
from .workspace import Workspace

# ---- item 1: ranks + metrics ----------------------------------------------------------------------


def item_metrics(ws: Workspace) -> list[Row]:
    """1: vs the authors' evaluation functions (tie-free scores); 1b: our stable-tie rewrite (float32 ties)."""
    ni, nt = ws.sizes.metrics
    c2i = np.repeat(np.arange(ni), -(-nt // ni))[:nt]
    distinct = np.random.default_rng(0).permutation(ni * nt).reshape(ni, nt).astype(np.float32)  # exact, no ties
    sims = torch.rand(ni, nt, generator=torch.Generator().manual_seed(0))  # float32: ties do occur
    return [_metrics_row(ws, "1", torch.from_numpy(distinct), c2i, authors=True),
            _metrics_row(ws, "1b", sims, c2i, authors=False)]


def _metrics_row(ws: Workspace, item: str, sims: torch.Tensor, c2i: np.ndarray, authors: bool) -> Row:
    from ..evaluation.metrics import compute_ranks, metrics_from_ranks

    arr = sims.numpy()
    keys = [f"{d}_{m}" for d in ("i2t", "t2i") for m in ("r1", "r5", "r10", "medr", "meanr")]

    def ours() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        i2t, t2i = compute_ranks(sims, c2i)
        return i2t, t2i, metrics_from_ranks(i2t, t2i)

    def reference() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if authors:
            return amfmn_refs.ranks_authors_procedure(arr, c2i)
        i2t, t2i = ref.ranks_argsort_loop(arr, c2i)
        return i2t, t2i, metrics_from_ranks(i2t, t2i)

    t_o, t_r, a, b = side_by_side(ours, reference, ws.sizes.repeats, ws.sizes.budget_s)
    equal = bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                 and all(abs(float(a[2][k]) - float(b[2][k])) <= 1e-9 for k in keys))
    ratio = t_r.median / t_o.median
    ni, nt = arr.shape
    if authors:
        what = (f"ranks+metrics {ni} x {nt} vs the authors' evaluation (AMFMN utils.py acc_i2t2/acc_t2i2: "
                "per-query argsort of the row; no ties; amfmn_refs.py)")
        target, ok_ratio = ">= 30x, equal", ratio >= 30
    else:
        what = f"ranks+metrics {ni} x {nt} vs our per-query stable argsort (float32, ties)"
        target, ok_ratio = ">= 50x, equal", ratio >= 50
    return Row(item, what, str(t_o), str(t_r), f"{ratio:.1f}x", check=f"ranks+metrics equal: {equal}", target=target,
               result=verdict(ok_ratio, equal), ok=equal)


# ---- item 6: blockwise ranks at scale ---------------------------------------------------------------


def child_scale(task: dict[str, Any]) -> dict[str, Any]:
    """Blockwise ranks of random L2-normalised embeddings; peak RSS, time and a spot check."""
    from ..evaluation.metrics import compute_ranks_blockwise, metrics_from_ranks

    ni, nt, dim = task["shape"]
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(ni, dim, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(nt, dim, generator=g), dim=1)
    c2i = np.repeat(np.arange(ni), -(-nt // ni))[:nt]
    bi, bc = 1024, 16384  # compute_ranks_blockwise's defaults, named so the spot check uses the same tiles

    def score_block(i: slice, c: slice) -> torch.Tensor:
        return img[i] @ txt[c].T

    result: dict[str, Any] = {}

    def run() -> None:
        i2t, t2i = compute_ranks_blockwise(score_block, ni, nt, c2i, block_images=bi, block_captions=bc)
        result.update(i2t=i2t, t2i=t2i, mR=metrics_from_ranks(i2t, t2i)["mR"])

    out = measure_peak(run)
    out["spot_equal"], out["spot_n"] = _scale_spot_check(score_block, ni, nt, c2i, bi, bc, result)
    out["mR"] = result["mR"]
    return out


def _scale_spot_check(score_block: Callable[[slice, slice], torch.Tensor], ni: int, nt: int, c2i: np.ndarray,
                      bi: int, bc: int, result: dict[str, Any], k: int = 16) -> tuple[bool, int]:
    """Ranks of k images and k captions by a full stable argsort of scores from the same tiles."""
    rng = np.random.default_rng(0)
    ib, cb = int(rng.integers(-(-ni // bi))), int(rng.integers(-(-nt // bc)))
    i0, c0 = ib * bi, cb * bc
    rows = np.sort(rng.choice(np.arange(i0, min(i0 + bi, ni)), size=min(k, min(i0 + bi, ni) - i0), replace=False))
    cols = np.sort(rng.choice(np.arange(c0, min(c0 + bc, nt)), size=min(k, min(c0 + bc, nt) - c0), replace=False))
    row_scores = torch.cat([score_block(slice(i0, min(i0 + bi, ni)), slice(c, min(c + bc, nt)))[rows - i0]
                            for c in range(0, nt, bc)], dim=1)
    col_scores = torch.cat([score_block(slice(i, min(i + bi, ni)), slice(c0, min(c0 + bc, nt)))[:, cols - c0]
                            for i in range(0, ni, bi)], dim=0)
    ok = True
    for r, i in enumerate(rows):
        order = np.argsort(-row_scores[r].numpy(), kind="stable")
        ok &= int(np.flatnonzero(c2i[order] == i)[0]) + 1 == int(result["i2t"][i])
    for r, j in enumerate(cols):
        order = np.argsort(-col_scores[:, r].numpy(), kind="stable")
        ok &= int(np.flatnonzero(order == c2i[j])[0]) + 1 == int(result["t2i"][j])
    return bool(ok), len(rows) + len(cols)


def item_scale(ws: Workspace) -> list[Row]:
    ni, nt, dim = ws.sizes.scale
    out = run_child({"task": "scale", "shape": [ni, nt, dim]})
    name = f"blockwise ranks {ni:,} x {nt:,}, {dim}-d"
    if "error" in out:
        return [Row("6", name, "error", memory=out["error"], target="peak <= 2 GiB", result="FAIL", ok=False)]
    hwm = out["hwm"]
    ok = bool(out["spot_equal"])
    within = hwm is not None and hwm <= 2 * GIB
    return [Row("6", name, fmt_seconds(out["seconds"]),
                memory=f"peak RSS {fmt_mib(hwm)} (+{fmt_mib(out['peak_delta'])} over inputs)",
                check=f"spot check {out['spot_n']} queries = full argsort: {ok}", target="peak RSS <= 2 GiB",
                result=verdict(within, ok), ok=ok)]


# ---- item 7: SCAN scoring -------------------------------------------------------------------------


def scan_inputs(ni: int, nt: int, regions: int, words: int, dim: int) -> dict[str, torch.Tensor]:
    """Seeded unit regions and words; caption lengths 3..words, padded words zero (as SCAN encodes them)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(7)
    v = F.normalize(torch.randn(ni, regions, dim, generator=g), dim=-1)
    lengths = torch.randint(3, words + 1, (nt,), generator=g)
    wmask = torch.arange(words)[None] < lengths[:, None]
    e = F.normalize(torch.randn(nt, words, dim, generator=g), dim=-1) * wmask[..., None]
    return {"v": v, "e": e, "wmask": wmask, "lengths": lengths}


def item_scan(ws: Workspace) -> list[Row]:
    from ..methods.scan import _LAMBDA_LSE, _LAMBDA_SOFTMAX, blockwise_scores, chunk_pairs

    ni, nt, regions, words, dim = ws.sizes.scan
    x = scan_inputs(ni, nt, regions, words, dim)
    chunk = chunk_pairs(32 * MIB, ni, nt, regions, words)  # the method's CPU default (score_chunk_mb=0)
    rows = []
    for direction in ("t2i", "i2t"):
        lam = (_LAMBDA_SOFTMAX[direction], _LAMBDA_LSE[direction])

        @torch.no_grad()
        def ours(direction: str = direction, lam: tuple[float, float] = lam) -> torch.Tensor:
            return blockwise_scores(x["v"], x["e"], x["wmask"], direction, "lse", *lam, chunk)

        @torch.no_grad()
        def reference(direction: str = direction, lam: tuple[float, float] = lam) -> torch.Tensor:
            return ref.scan_score_sharded(x["v"], x["e"], x["lengths"], direction, "lse", *lam, shard=128)

        t_o, t_r, a, b = side_by_side(ours, reference, ws.sizes.repeats, ws.sizes.budget_s)
        diff = float((a - b).abs().max())
        close, ratio = diff < 1e-4, t_r.median / t_o.median
        first = direction == "t2i"
        rows.append(Row(
            "7" if first else "7+", f"SCAN score {direction} LSE, {ni} x {nt}, R={regions}, L<={words}, D={dim}",
            str(t_o), str(t_r), f"{ratio:.1f}x", check=f"max abs diff {diff:.1e} < 1e-4: {close}",
            target="faster, < 1e-4", result=verdict(ratio > 1, close), ok=close))
    ws.notes.append(f"Item 7: ours scores chunks of {chunk[0]} x {chunk[1]} pairs (the 32 MiB CPU budget); the "
                    "reference mirrors kuanghuei/SCAN evaluation.py shard_xattn_t2i/_i2t with model.py "
                    "xattn_score_t2i/_i2t (128 x 128 shards, a loop over captions).")
    return rows
