"""Naive reference implementations the perf harness measures our code against.

Each one is the textbook way to compute the same quantity, written for clarity, not speed. They
are NOT used by rsbench itself; they exist so that `python -m rsbench.benchmarks.perf` can check
both that our vectorised code gives the same numbers and how much faster it is.

- (item 1's reference, the AMFMN authors' evaluation functions, is in amfmn_refs.py.)
- `ranks_argsort_loop`: per-query stable argsort (item 1b: our tie rule, checked on a matrix with ties).
- `amfmn_score_sharded`: AMFMN cosine with the attended text expanded pair by pair in 128 x 128
  shards (item 2). The per-image / per-text Linear terms are computed once per side (doing the
  Linear per pair would be absurd and nobody writes it that way); every shard then builds the
  (128, 128, D) attended text T'_ij and its cosine with F_v_i, which is the direct definition.
- `mscmat_branch_loop` / `mscmat_loop`: MSCMAT matching matrices by calling the
  nn.MultiheadAttention itself once per image on that image's query repeated B times (item 3).
- `scan_score_sharded`: SCAN test-set scores as the authors' evaluation computes them (item 7):
  kuanghuei/SCAN evaluation.py, shard_xattn_t2i / shard_xattn_i2t (128 x 128 shards of images x
  captions), and inside a shard model.py's xattn_score_t2i / xattn_score_i2t: a Python loop over the
  shard's captions, each caption's real words against all the shard's images at once, with the
  attended vectors built and their cosine taken directly.
- `decode_loader`: the image source that decodes the file every time (item 4).
- `backbone_step`: forward + backward of an image backbone alone (item 5's baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..datasets.images import load_image

_EPS = 1e-8  # the epsilon rsbench.methods.amfmn uses for norms


# ---- item 1b: ranks ----------------------------------------------------------------------------


def ranks_argsort_loop(sims: np.ndarray, cap2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based (i2t, t2i) ranks by argsorting every query's row / column (stable, descending).

    i2t: the best (lowest) position of any of the image's captions in its sorted row.
    t2i: the position of the caption's image in its sorted column.
    """
    s = np.asarray(sims)
    c2i = np.asarray(cap2img, dtype=np.int64)
    n_images, n_captions = s.shape
    i2t = np.empty(n_images, dtype=np.int64)
    for i in range(n_images):
        order = np.argsort(-s[i], kind="stable")
        i2t[i] = int(np.flatnonzero(c2i[order] == i)[0]) + 1
    t2i = np.empty(n_captions, dtype=np.int64)
    for j in range(n_captions):
        order = np.argsort(-s[:, j], kind="stable")
        t2i[j] = int(np.flatnonzero(order == c2i[j])[0]) + 1
    return i2t, t2i


# ---- item 2: AMFMN scoring ----------------------------------------------------------------------


def _attended_shard(attention: nn.Module, v: torch.Tensor, t: torch.Tensor, i: slice, j: slice,
                    side: dict[str, torch.Tensor]) -> torch.Tensor:
    """(ni, nt, D) attended text T'_ij of one shard, by broadcasting per-pair."""
    variant = attention.variant
    if variant == "soft":  # T' = sigmoid(W v_i) * t_j
        return side["gate"][i, None, :] * t[None, j, :]
    if variant == "fusion":  # T' = sigmoid(W1 [v; t]) * (W2 [v; t])
        a = side["a"][i, None, :] + side["b"][None, j, :]
        c = side["c"][i, None, :] + side["d"][None, j, :]
        return torch.sigmoid(a) * c
    # similarity: T' = sigmoid(Wv v_i * Wt t_j) * (Wt t_j), the gate on the projected text (paper eq. 25)
    q = side["q"][None, j, :]
    return torch.sigmoid(side["p"][i, None, :] * q) * q


def _side_terms(attention: nn.Module, v: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """The Linear terms that depend on one side only (computed once, not per pair)."""
    if attention.variant == "soft":
        return {"gate": torch.sigmoid(attention.w(v))}
    if attention.variant == "fusion":
        return {"a": attention.w1v(v), "b": attention.w1t(t), "c": attention.w2v(v), "d": attention.w2t(t)}
    return {"p": attention.wv(v), "q": attention.wt(t)}


def amfmn_score_sharded(attention: nn.Module, v: torch.Tensor, t: torch.Tensor, shard: int = 128) -> torch.Tensor:
    """(Ni, Nt) cosine(F_v_i, T'_ij) from the (shard, shard, D) expanded attended text of each shard."""
    v, t = v.float(), t.float()
    side = _side_terms(attention, v, t)
    v_norm = v.norm(dim=1)
    out = torch.empty(len(v), len(t))
    for i0 in range(0, len(v), shard):
        for j0 in range(0, len(t), shard):
            i, j = slice(i0, i0 + shard), slice(j0, j0 + shard)
            tp = _attended_shard(attention, v, t, i, j, side)  # (ni, nt, D)
            num = (v[i, None, :] * tp).sum(-1)
            den = (v_norm[i, None] * tp.norm(dim=-1)).clamp(min=_EPS)
            out[i, j] = num / den
    return out


# ---- item 7: SCAN scoring -------------------------------------------------------------------------


def _scan_caption(v: torch.Tensor, words: torch.Tensor, direction: str, pooling: str, lam1: float,
                  lam2: float) -> torch.Tensor:
    """One caption's real words (L, D) against images v (n, R, D) -> (n,), the direct form of the paper."""
    w = words[None].expand(len(v), -1, -1)  # the caption repeated for every image of the shard
    query, context = (w, v) if direction == "t2i" else (v, w)
    s = torch.bmm(context, query.transpose(1, 2))  # (n, context items, queries)
    s = torch.nn.functional.leaky_relu(s, 0.1)
    s = s / (s.pow(2).sum(2, keepdim=True).sqrt() + _EPS)  # clipped l2norm over the queries
    attn = torch.softmax(lam1 * s.transpose(1, 2), dim=2)  # (n, queries, context items)
    attended = torch.bmm(attn, context)  # (n, queries, D)
    num = (attended * query).sum(2)
    rel = num / (attended.norm(dim=2) * query.norm(dim=2)).clamp(min=_EPS)  # cosine per query
    if pooling == "lse":
        return torch.log(torch.exp(lam2 * rel).sum(1)) / lam2
    return rel.mean(1)


def scan_score_sharded(v: torch.Tensor, e: torch.Tensor, lengths: torch.Tensor, direction: str, pooling: str,
                       lam1: float, lam2: float, shard: int = 128) -> torch.Tensor:
    """(Ni, Nt) SCAN scores: 128 x 128 shards, a loop over each shard's captions (the authors' evaluation)."""
    out = torch.empty(len(v), len(e))
    for i0 in range(0, len(v), shard):
        for j0 in range(0, len(e), shard):
            for j in range(j0, min(j0 + shard, len(e))):
                words = e[j, :int(lengths[j])]
                out[i0:i0 + shard, j] = _scan_caption(v[i0:i0 + shard], words, direction, pooling, lam1, lam2)
    return out


# ---- item 3: MSCMAT ---------------------------------------------------------------------------


def mscmat_branch_loop(branch: nn.Module, pooled: torch.Tensor, tokens: torch.Tensor, pad: torch.Tensor,
                       g_t: torch.Tensor) -> torch.Tensor:
    """(B_i, B_t) logits: for each image, its query repeated B_t times through nn.MultiheadAttention."""
    q = branch.query(pooled)  # (B_i, D)
    qn = branch.ln_q(q)
    kv = branch.ln_kv(tokens)  # (B_t, L, D)
    n_txt = tokens.shape[0]
    rows = []
    for i in range(q.shape[0]):
        query = qn[i:i + 1].repeat(n_txt, 1)[:, None, :]  # (B_t, 1, D): one pair per text
        a, _ = branch.attn(query, kv, kv, key_padding_mask=pad, need_weights=False)
        rows.append(branch.head((a[:, 0] + g_t) * q[i]).squeeze(-1))
    return torch.stack(rows)


def mscmat_loop(mscmat: nn.Module, pooled: list[torch.Tensor], tokens: torch.Tensor, pad: torch.Tensor,
                g_t: torch.Tensor) -> list[torch.Tensor]:
    """Every scale's matrix with `mscmat_branch_loop`."""
    return [mscmat_branch_loop(b, p, tokens, pad, g_t) for b, p in zip(mscmat.branches, pooled, strict=True)]


# ---- item 4: data loading ---------------------------------------------------------------------


def decode_loader() -> Callable[[Path], Image.Image]:
    """The image source without a cache: decode the file on every access (rsbench's own decoder)."""
    return load_image


# ---- item 5: baseline step --------------------------------------------------------------------


def backbone_step(backbone: nn.Module, images: torch.Tensor) -> None:
    """Forward + backward of the image backbone alone (a scalar from every output it returns)."""
    out = backbone(images)
    outs = out if isinstance(out, (list, tuple)) else [out]
    loss = sum(o.float().mean() for o in outs)
    loss.backward()
