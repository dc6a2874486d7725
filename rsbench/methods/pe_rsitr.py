"""PE-RSITR (Yuan, Zhan, Xiong, TGRS 2023; ZhanYang-nwpu/PE-RSITR): MRS-Adapter + HMMC loss, frozen CLIP.

One MRS-Adapter serves every block of both towers (as in the released code: 0.16M parameters on
ViT-B/32): a modality-specific down-projection, ReLU, dropout, and an up-projection whose last
`shared_dim` outputs come from a projection shared by image and text; its output is added to each
block's MLP output. The HMMC loss = cross-modal InfoNCE + intra-modal InfoNCE of each modality against
a second, dropout-augmented view of itself (the released model returns exactly these four embeddings;
the loss itself is not released: our reading, docs/clip_models.md#pe-rsitr).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..contracts import require_at_least
from ..errors import UserError
from .base import Batch, LossOutput, MethodContext
from .components.adapters import MRSAdapter, attach, freeze, input_dropout, tower_blocks, tower_layers
from .components.clip_tower import build_tower
from .components.contrastive import decay_param_groups, info_nce
from .components.tower_method import AdapterTowerConfig, TowerMethod, report_parameters
from .components.weights import WeightNeed, tower_needs
from .registry import register_method


@dataclass
class PeRsitrConfig(AdapterTowerConfig):
    """Options of the `pe_rsitr` method."""

    bottleneck: int = 64  # released code: 64
    shared_dim: int = 64  # outputs from the image/text-shared up-projection (released code: 64)
    dropout: float = 0.5  # inside the adapter (released code: 0.5)
    aug_dropout: float = 0.2  # dropout on the token states for the augmented view (released code: 0.2)
    intra_weight: float = 1.0  # weight of the two intra-modal terms
    max_logit_scale: float = 100.0

    def validate(self) -> None:
        self.check_tower()
        require_at_least(self, "model.", {"bottleneck": 1, "shared_dim": 1})
        for key in ("dropout", "aug_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"bad value for 'model.{key}': {getattr(self, key)} (must be in [0, 1))")
        if self.intra_weight < 0:
            raise UserError(f"bad value for 'model.intra_weight': {self.intra_weight} (must be >= 0)")


@register_method(
    "pe_rsitr",
    "PE-RSITR: one shared MRS-Adapter in every block of a frozen CLIP; hybrid multi-modal contrastive loss",
    presets={
        "small": {"model": "rsbench-tiny", "bottleneck": 32, "shared_dim": 32, "train.epochs": 5,
                  "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-3,
                  "train.weight_decay": 0.01, "train.image_size": 64},
        # The released code fixes the tower (OpenAI CLIP ViT-B/32) and the adapter; the training
        # settings are not released; these are ours (CLIP adapter-tuning defaults), see the docs.
        "paper": {"zoo": "openai-vit-b-32", "train.epochs": 20, "train.batch_size": 128,
                  "train.optimizer": "adamw", "train.lr": 1e-3, "train.weight_decay": 0.01,
                  "train.image_size": 224},
    },
    display_name="PE-RSITR",
)
class PeRsitrMethod(TowerMethod):
    """A frozen ClipTower with the MRS-Adapter attached through forward hooks."""

    config_cls = PeRsitrConfig
    needs_weights_file = False
    frozen_backbone = True

    @classmethod
    def required_weights(cls, config: PeRsitrConfig) -> list[WeightNeed]:
        return tower_needs(config)

    def __init__(self, config: PeRsitrConfig, context: MethodContext):
        super().__init__(config, context)
        config.validate()
        self.tower = build_tower(config)
        freeze(self.tower)
        vis, txt = tower_blocks(self.tower.model)
        self.adapter = MRSAdapter(vis[0].width, txt[0].width, config.bottleneck, config.shared_dim, config.dropout)
        for modality, blocks in (("image", vis), ("text", txt)):
            for b in blocks:
                attach(b, lambda x, out, m=modality: out + self.adapter(x, m))
        self._augment = False
        for layers in tower_layers(self.tower.model):
            input_dropout(layers[0], config.aug_dropout, lambda: self._augment)
        self.parameter_counts = report_parameters("pe_rsitr", self)

    def train(self, mode: bool = True) -> PeRsitrMethod:
        super().train(mode)
        self.tower.eval()
        return self

    def _views(self, batch: Batch, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self._augment = augment
        try:
            return self.encode_images(batch.images), self.encode_texts(batch.text)
        finally:
            self._augment = False

    def training_loss(self, batch: Batch) -> LossOutput:
        img, txt = self._views(batch, False)
        img2, txt2 = self._views(batch, self.training)
        scale = self._scale().detach()
        g = self.context.gather
        cross = info_nce(img, txt, scale, batch.image_ids, "mask", g)
        intra = info_nce(img, img2, scale, batch.image_ids, "mask", g) + info_nce(txt, txt2, scale, None, "mask", g)
        return LossOutput(cross + self.config.intra_weight * intra, {"cross": cross.detach(), "intra": intra.detach()})

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return decay_param_groups(self, lr, weight_decay)

    def weight_provenance(self) -> dict[str, Any]:
        return {"tower": self.tower.provenance(), "parameters": dict(self.parameter_counts)}


__all__ = ["PeRsitrConfig", "PeRsitrMethod"]
