"""HarMA (Huang, ICLRW 2024; seekerhuang/HarMA): hierarchical multimodal adapters in a frozen CLIP.

Every transformer block of both towers gets a gated adapter on its MLP output; the adapters of image
block i and text block i share one mini-adapter in their bottleneck (the paper's "shared mini-adapters").
Loss: contrastive loss with every same-image pair as a positive + a focal-weighted hinge triplet
(weight (1 - exp(-cost))^gamma per violating pair). Backbone frozen; adapters, gates and the temperature
train. Where paper and released code differ, and which we follow: docs/clip_models.md#harma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..contracts import require_above, require_at_least
from ..errors import UserError
from .base import Batch, LossOutput, MethodContext, same_image_mask
from .components.adapters import (
    HarmaAdapter,
    HarmaBlockGate,
    SharedMiniAdapter,
    attach,
    freeze,
    tower_blocks,
)
from .components.clip_tower import build_tower
from .components.contrastive import LogitScale, decay_param_groups, info_nce
from .components.tower_method import AdapterTowerConfig, TowerMethod, report_parameters
from .components.weights import WeightNeed, tower_needs
from .registry import register_method

SHARE_MODES = ("both", "text")


@dataclass
class HarmaConfig(AdapterTowerConfig):
    """Options of the `harma` method."""

    bottleneck: int = 128  # adapter bottleneck width (released code: 128)
    heads: int = 8  # attention heads in the bottleneck (and in the shared mini-adapter at bottleneck/2)
    share: str = "both"  # both: image and text block i share a mini-adapter (paper) | text: only text (code)
    margin: float = 0.2  # triplet margin
    gamma: float = 2.0  # focal exponent of the triplet weights
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def validate(self) -> None:
        self.check_tower()
        require_at_least(self, "model.", {"bottleneck": 2, "heads": 1})
        require_above(self, "model.", ("init_temperature", "max_logit_scale"))
        if self.share not in SHARE_MODES:
            raise UserError(f"bad value for 'model.share': '{self.share}'; choose from: {', '.join(SHARE_MODES)}")
        if self.bottleneck % self.heads or (self.bottleneck // 2) % self.heads:
            raise UserError(f"model.bottleneck={self.bottleneck} and its half must be divisible by "
                            f"model.heads={self.heads}")


def weighted_triplet(img: torch.Tensor, txt: torch.Tensor, image_ids: torch.Tensor | None, margin: float,
                     gamma: float) -> torch.Tensor:
    """Sum over violating negatives of w * cost, w = (1 - exp(-cost))^gamma, both directions, halved.

    cost_ij = [margin + s_ij - s_ii]_+ (image i's caption ranking) and [margin + s_ij - s_jj]_+ (text j's
    image ranking) on cosine scores; rows of the same image are not negatives.
    """
    s = F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T
    d = s.diag()
    n = s.shape[0]
    pos = same_image_mask(image_ids) if image_ids is not None else torch.eye(n, dtype=torch.bool, device=s.device)
    cost_t = (margin + s - d[:, None]).clamp(min=0).masked_fill(pos, 0)
    cost_i = (margin + s - d[None, :]).clamp(min=0).masked_fill(pos, 0)
    weigh = lambda c: (1 - torch.exp(-c)) ** gamma * c
    return (weigh(cost_t).sum() + weigh(cost_i).sum()) / 2


@register_method(
    "harma",
    "HarMA: gated multimodal adapters with shared mini-adapters in a frozen CLIP; contrastive + weighted triplet",
    presets={
        # CPU-sized: the shipped rsbench-tiny open_clip architecture (random init, frozen) at 64 px.
        "small": {"model": "rsbench-tiny", "bottleneck": 32, "heads": 4, "train.epochs": 5,
                  "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-3,
                  "train.weight_decay": 0.04, "train.image_size": 64},
        # Released configs (Retrieval_rsicd_geo.yaml / _rsitmd_geo.yaml): GeoRSCLIP RET-2 ViT-B-32, AdamW
        # lr 4e-6, wd 0.04, batch 214 (per GPU, 2 GPUs), 80 epochs, linear decay with 10% warm-up (we have
        # neither; constant lr). Selection here: best val mR (authors: best test mR).
        "paper": {"zoo": "georsclip-vit-b-32-ret2", "train.epochs": 80, "train.batch_size": 214,
                  "train.optimizer": "adamw", "train.lr": 4e-6, "train.weight_decay": 0.04, "train.image_size": 224},
    },
    display_name="HarMA",
)
class HarmaMethod(TowerMethod):
    """A frozen ClipTower with HarMA adapters attached through forward hooks."""

    config_cls = HarmaConfig
    needs_weights_file = False  # the small preset builds a random rsbench-tiny tower
    frozen_backbone = True

    @classmethod
    def required_weights(cls, config: HarmaConfig) -> list[WeightNeed]:
        return tower_needs(config)

    def __init__(self, config: HarmaConfig, context: MethodContext):
        super().__init__(config, context)
        config.validate()
        self.tower = build_tower(config)
        freeze(self.tower)
        vis, txt = tower_blocks(self.tower.model)
        n_shared = min(len(vis), len(txt))
        self.shared = nn.ModuleList(SharedMiniAdapter(config.bottleneck, config.heads) for _ in range(n_shared))
        self.image_adapters = self._adapt(vis, config.share == "both")
        self.text_adapters = self._adapt(txt, True)
        self.logit_scale = LogitScale(config.init_temperature, config.max_logit_scale, True)
        self.parameter_counts = report_parameters("harma", self)

    def _adapt(self, blocks: list, with_shared: bool) -> nn.ModuleList:
        mods = nn.ModuleList()
        for i, b in enumerate(blocks):
            shared = self.shared[i * len(self.shared) // len(blocks)] if with_shared else None
            gate = HarmaBlockGate(HarmaAdapter(b.width, self.config.bottleneck, self.config.heads, shared))
            attach(b, gate)
            mods.append(gate)
        return mods

    def train(self, mode: bool = True) -> HarmaMethod:
        super().train(mode)
        self.tower.eval()  # the frozen backbone keeps inference behaviour
        return self

    def training_loss(self, batch: Batch) -> LossOutput:
        img, txt, ids = self.context.gather(self.encode_images(batch.images), self.encode_texts(batch.text),
                                            batch.image_ids)
        scale = self.logit_scale()
        contr = info_nce(img, txt, scale, ids, "positive")
        tri = weighted_triplet(img, txt, ids, self.config.margin, self.config.gamma)
        return LossOutput(contr + tri, {"contrastive": contr.detach(), "triplet": tri.detach(),
                                        "logit_scale": scale.detach()})

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return decay_param_groups(self, lr, weight_decay)

    def weight_provenance(self) -> dict[str, Any]:
        return {"tower": self.tower.provenance(), "parameters": dict(self.parameter_counts)}
