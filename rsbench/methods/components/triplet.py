"""Bidirectional hinge triplet loss over in-batch negatives (VSE++ style), with same-image masking.

`scores[i, j]` = similarity of image i and caption j of the batch (diagonal = positive pairs).
`margin` is a float or a (B, B) tensor (AMFMN's dynamic margin per pair).
"""

from __future__ import annotations

import torch


def hinge_triplet(scores: torch.Tensor, same: torch.Tensor, margin: float | torch.Tensor = 0.2,
                  hardest: bool = True, reduction: str = "sum") -> torch.Tensor:
    """Sum over both directions of [m - s(I,T) + s(I,T')]+ and [m - s(I,T) + s(I',T)]+ over the negatives
    (or only the hardest one, VSE++'s max violation). `same` (B, B) bool marks positive pairs, diagonal
    included (never negatives). reduction: "sum" over the batch (VSE++) or "mean" (divided by B)."""
    pos = scores.diagonal()
    cost_t = (margin + scores - pos[:, None]).clamp(min=0)  # image i vs wrong caption j
    cost_i = (margin + scores - pos[None, :]).clamp(min=0)  # caption j vs wrong image i
    cost_t = cost_t.masked_fill(same, 0)
    cost_i = cost_i.masked_fill(same, 0)
    if hardest:
        loss = cost_t.max(dim=1).values.sum() + cost_i.max(dim=0).values.sum()
    else:
        loss = cost_t.sum() + cost_i.sum()
    return loss / scores.shape[0] if reduction == "mean" else loss
