"""MSCMAT (multi-scale cross-modal alignment transformer) and the three MSA losses.

One branch per visual scale k scores every image x text pair of a batch:

    q_k    = Linear_k(p_k)                                   (one query token per image)
    a_k    = MHA_k(query=LN(q_k), key=value=LN(text tokens)) (padding masked, [CLS] excluded)
             (shared_norm: one LN pair for all scales, as the authors; mask_padding=False: unmasked)
    m_k    = sigmoid(Linear_k((a_k + g_t) * q_k))            -> a B_img x B_txt matrix M_k

Why the batched form: the query is a single token, so attention for all B x B pairs is a set of
per-head dot products q_i . k_{j,l}, a masked softmax over l and a weighted sum of values. The
head that follows is linear in a_ij, so it can be pushed inside the weighted sum:

    w . ((W_o a_ij + b_o + g_j) * q_i) = sum_{h,l} attn_ijhl (v_jlh . u_ih) + (w * q_i) . (b_o + g_j)
    with u_i = W_o^T (w * q_i)

which costs O(B*B*L*d) and never materialises a (B, B, d) tensor nor repeated copies of the text.
Of size B x B x H x L only the scores (masked in place), their softmax and v . u exist; the sum
over h and l is one batched dot product. The time is in the key/value projection GEMMs.
The parameters are those of an ordinary nn.MultiheadAttention (in_proj, out_proj), so the result
equals calling it pair by pair (tests/test_msa.py checks this against a naive loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MSCMATBranch(nn.Module):
    """Cross-attention branch of one scale: pooled image vector (B_i, C) x text (B_t, L, D) -> (B_i, B_t)."""

    def __init__(self, in_channels: int, embed_dim: int, num_heads: int, dropout: float = 0.0,
                 own_norms: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        self.query = nn.Linear(in_channels, embed_dim)
        # own_norms=False: the caller (MSCMAT with shared_norm) passes one LayerNorm pair shared by all scales
        self.ln_q = nn.LayerNorm(embed_dim) if own_norms else None
        self.ln_kv = nn.LayerNorm(embed_dim) if own_norms else None
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.head = nn.Linear(embed_dim, 1)

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor, pad: torch.Tensor,
                g_t: torch.Tensor, norms: tuple[nn.Module, nn.Module] | None = None) -> torch.Tensor:
        """Pre-sigmoid matching logits for every (image i, text j) pair.

        pooled: (B_i, C) the scale's pooled image vector; tokens: (B_t, L, D) text tokens without
        [CLS]; pad: (B_t, L) bool, True at padding; g_t: (B_t, D) global text embeddings;
        norms: the shared (LN for the query, LN for the text) pair, when the branch has none of its own.
        """
        ln_q, ln_kv = norms if norms is not None else (self.ln_q, self.ln_kv)
        q = self.query(pooled)  # (B_i, D)
        n_i, (n_t, length, d) = q.shape[0], tokens.shape
        heads = self.attn.num_heads
        dh = d // heads
        # one split of in_proj (its backward writes the weight's gradient once, not three zero-padded
        # full-size slices) and one GEMM for keys and values together
        w_q, w_kv = self.attn.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = self.attn.in_proj_bias.split([d, 2 * d])
        qh = F.linear(ln_q(q), w_q, b_q).view(n_i, heads, dh).transpose(0, 1) * dh**-0.5  # (H, B_i, dh)
        kv = F.linear(ln_kv(tokens), w_kv, b_kv).view(n_t * length, 2, heads, dh).permute(1, 2, 3, 0)
        k, v = kv[0], kv[1]  # (H, dh, B_t * L)

        wq = self.head.weight[0] * q  # (B_i, D): w * q_i
        u = (wq @ self.attn.out_proj.weight).view(n_i, heads, dh).transpose(0, 1)  # W_o^T (w * q_i), (H, B_i, dh)
        # (H, B_i, B_t, L), L innermost: the softmax and the pair sums run over contiguous rows
        scores = torch.bmm(qh, k).view(heads, n_i, n_t, length)
        if bool(pad.any()):  # in place on the fresh product (bmm's backward does not need its output)
            scores.masked_fill_(pad[None, None], float("-inf"))
        attn = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        if self.training and self.attn.dropout > 0:
            attn = F.dropout(attn, self.attn.dropout, True)
        vu = torch.bmm(u, v).view(heads, n_i, n_t, length)  # v_jlh . u_ih
        # sum over h and l of attn * vu as one batched dot product: no product tensor of that size
        through_attn = torch.bmm(attn.view(-1, 1, length), vu.view(-1, length, 1)).view(heads, n_i, n_t).sum(0)
        direct = wq @ (g_t + self.attn.out_proj.bias).T  # (B_i, B_t)
        return through_attn + direct + self.head.bias


class MSCMAT(nn.Module):
    """One branch per scale; returns the list of pre-sigmoid B_i x B_t logit matrices, shallow to deep.

    shared_norm: one LayerNorm for the image queries and one for the text tokens, shared by all
    scales (the authors' Multi_img_crossatt); default: one pair per branch.
    """

    def __init__(self, channels: list[int], embed_dim: int, num_heads: int, dropout: float = 0.0,
                 shared_norm: bool = False):
        super().__init__()
        self.branches = nn.ModuleList(MSCMATBranch(c, embed_dim, num_heads, dropout, own_norms=not shared_norm)
                                      for c in channels)
        self.ln_q = nn.LayerNorm(embed_dim) if shared_norm else None
        self.ln_kv = nn.LayerNorm(embed_dim) if shared_norm else None

    def forward(self, pooled: list[torch.Tensor], tokens: torch.Tensor, pad: torch.Tensor,
                g_t: torch.Tensor) -> list[torch.Tensor]:
        norms = (self.ln_q, self.ln_kv) if self.ln_q is not None else None
        return [b(p, tokens, pad, g_t, norms) for b, p in zip(self.branches, pooled, strict=True)]


# ---- losses ----------------------------------------------------------------------------------


def mscma_loss(logits: list[torch.Tensor], same: torch.Tensor) -> torch.Tensor:
    """Sum over scales of the row-wise cross-entropy (image i -> its text i) of each matrix.

    Another text of the same image in the batch is a positive too: it is dropped from the
    softmax of that row (neither pushed down as a negative nor made a second target), so without
    duplicates this is exactly the plain cross-entropy with diagonal labels.
    """
    b = same.shape[0]
    target = torch.arange(b, device=same.device)
    other_pos = same & ~torch.eye(b, dtype=torch.bool, device=same.device)
    return sum(F.cross_entropy(m.float().masked_fill(other_pos, float("-inf")), target) for m in logits)


def csmmc_loss(matrices: list[torch.Tensor], tau: float = 2.0) -> torch.Tensor:
    """Cross-scale consistency: sum over the shallower scales k of KL(P_k || P_deep).

    P = softmax over images (column-wise, one distribution per text) at temperature tau; P_deep
    comes from the detached deepest matrix, so the gradient flows only through P_k, the first
    argument of the KL (the authors' retrieval.py element_neig_rank_loss: F.kl_div(P_deep.log(), P_k)).
    Each KL is the mean of P_k (log P_k - log P_deep) over all B x B entries (torch's
    reduction='mean', the authors' choice, not 'batchmean').
    """
    log_deep = (matrices[-1].detach().float() / tau).log_softmax(dim=0)
    total = matrices[0].new_zeros((), dtype=torch.float32)
    for m in matrices[:-1]:
        log_p = (m.float() / tau).log_softmax(dim=0)
        total = total + (log_p.exp() * (log_p - log_deep)).mean()
    return total
