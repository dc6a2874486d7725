"""Shared pieces of contrastive (CLIP-style) training: symmetric InfoNCE, temperature, decay groups.

Training batches can hold the same image twice (two of its captions drawn into one batch). Two rows
showing the same image are not negatives of each other, so the loss either masks them out of the
softmax denominators (`same_image="mask"`, the default: with no repeats it is exactly CLIP's loss)
or counts every same-image pair as a positive with a uniform soft target (`same_image="positive"`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...contracts import Gather, no_gather
from ...errors import UserError
from ..base import same_image_mask

SAME_IMAGE_MODES = ("mask", "positive")


def check_same_image_mode(mode: str) -> str:
    if mode not in SAME_IMAGE_MODES:
        raise UserError(f"bad value for 'same_image': '{mode}'; choose from: {', '.join(SAME_IMAGE_MODES)}")
    return mode


class LogitScale(nn.Module):
    """Learnable inverse temperature, stored as a log: CLIP's init log(1/0.07), clamped at `max_scale`.

    The clamp is applied to the exponentiated value in the forward pass (no gradient past it), so the
    scale can never exceed `max_scale` whatever the optimiser does.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0, learnable: bool = True):
        super().__init__()
        if init_temperature <= 0:
            raise UserError(f"bad value for 'init_temperature': {init_temperature} (must be > 0)")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)), requires_grad=learnable)
        self.max_scale = float(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.float().exp().clamp(max=self.max_scale)


def info_nce(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    image_ids: torch.Tensor | None = None,
    same_image: str = "mask",
    gather: Gather = no_gather,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of B aligned (image, text) pairs; row i of each is a positive pair.

    Embeddings are L2-normalised here. Loss = (CE(image->text) + CE(text->image)) / 2 on the logits
    scale * img @ txt.T. `image_ids` marks rows showing the same image (see the module doc).
    `gather` concatenates the rows of every process first (with gradients; the method passes its
    MethodContext.gather, the distributed one under DDP), so the negatives span the global batch.
    """
    image_emb, text_emb, image_ids = gather(image_emb, text_emb, image_ids)
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    logits = img @ txt.T * logit_scale
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    same = same_image_mask(image_ids) if image_ids is not None else eye
    if same_image == "mask":
        # Other rows of the same image leave both softmaxes; the diagonal stays the target.
        logits = logits.masked_fill(same & ~eye, float("-inf"))
        target = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    if same_image == "positive":
        soft = same.float() / same.float().sum(dim=1, keepdim=True)  # symmetric mask: same for both sides
        loss_i2t = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        loss_t2i = -(soft * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
        return (loss_i2t + loss_t2i) / 2
    raise UserError(f"bad value for 'same_image': '{same_image}'; choose from: {', '.join(SAME_IMAGE_MODES)}")


def decay_param_groups(
    module: nn.Module, lr: float, weight_decay: float, lr_scales: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups in CLIP's manner: no weight decay on gains, biases and the temperature (ndim < 2).

    `lr_scales` maps a parameter-name prefix (e.g. "text_model.") to a learning-rate multiplier.
    """
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        for prefix, s in (lr_scales or {}).items():
            if name.startswith(prefix):
                scale = s
                break
        decay = p.ndim >= 2 and "logit_scale" not in name and "log_scale" not in name
        groups.setdefault((scale, decay), []).append(p)
    return [
        {"params": ps, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
        for (scale, decay), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]
