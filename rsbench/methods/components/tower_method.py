"""The shared base of the methods built on a CLIP tower (hf_clip, zoo, harma, pe_rsitr): the tower-backed
RetrievalMethod, SigLIP's sigmoid loss, and the frozen-tower options of the adapter methods."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Batch, LossOutput, RetrievalMethod, Tokenizer, same_image_mask
from .adapters import count_trainable
from .clip_tower import ClipTower
from .contrastive import decay_param_groups, info_nce
from .zoo_catalogue import find_weights, get_entry

# GeoRSCLIP's RET-2 fine-tuning recipe as its authors gave it (om-ai-lab/RS5M issue #12): AdamW, lr 5e-6,
# weight decay 0.5, batch 600, 7 epochs, 100 warm-up steps, max grad norm 50. rsbench's trainer has no
# warm-up yet (see docs/clip_models.md); the checkpoint is selected on val, not on test.
RET2_FINETUNE: dict[str, Any] = {
    "train.epochs": 7,
    "train.batch_size": 600,
    "train.optimizer": "adamw",
    "train.lr": 5e-6,
    "train.weight_decay": 0.5,
    "train.grad_clip": 50.0,
    "train.warmup_steps": 100,
    "train.image_size": 224,
}


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                 image_ids: torch.Tensor | None) -> torch.Tensor:
    """SigLIP: -1/B * sum_ij log sigmoid(z_ij (scale * cos_ij + bias)), z = +1 for the same image, else -1."""
    logits = F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T * scale + bias
    n = logits.shape[0]
    pos = same_image_mask(image_ids) if image_ids is not None else torch.eye(n, dtype=torch.bool, device=logits.device)
    z = pos.float() * 2 - 1
    return -F.logsigmoid(z * logits).sum() / n


class TowerMethod(RetrievalMethod):
    """A RetrievalMethod around a ClipTower (self.tower), fine-tuned with the tower's own loss."""

    is_cnn = False
    needs_weights_file: ClassVar[bool] = True  # cannot be built without a local folder/file (perf harness skips)
    frozen_backbone: ClassVar[bool] = False  # True: image_backbone() is frozen (adapter methods)

    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.tower.mean_std()

    def image_backbone(self) -> torch.nn.Module:
        return self.tower.model

    def tokenizer(self) -> Tokenizer:
        return self.tower.tokenizer(self.config.prompt)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower.encode_image(images)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.tower.encode_text(text)

    def _scale(self) -> torch.Tensor:
        return self.tower.logit_scale().float().exp().clamp(max=self.config.max_logit_scale).reshape(())

    def training_loss(self, batch: Batch) -> LossOutput:
        img, txt = self.encode_images(batch.images), self.encode_texts(batch.text)
        scale = self._scale()
        bias = getattr(self.tower.model, "logit_bias", None)
        if getattr(self.tower, "kind", "clip") == "siglip" and bias is not None:
            img, txt, ids = self.context.gather(img, txt, batch.image_ids)
            return LossOutput(sigmoid_loss(img, txt, scale, bias.float().reshape(()), ids),
                              {"logit_scale": scale.detach()})
        loss = info_nce(img, txt, scale, batch.image_ids, self.config.same_image, self.context.gather)
        return LossOutput(loss, {"logit_scale": scale.detach()})

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return decay_param_groups(self, lr, weight_decay)

    def weight_provenance(self) -> dict[str, Any]:
        return {"tower": self.tower.provenance()}


@dataclass
class AdapterTowerConfig:
    """Which frozen CLIP tower the adapters go into (first set wins: zoo, hf_folder, open_clip fields)."""

    zoo: str = ""  # a zoo entry (see `bench models`), with weights_dir
    weights_dir: str = ""
    hf_folder: str = ""  # a transformers CLIP/SigLIP folder
    model: str = ""  # open_clip architecture ('' = ViT-B-32)
    model_config: str = ""  # open_clip JSON architecture file
    checkpoint: str = ""  # open_clip weights file
    pretrained: str = ""  # open_clip pretrained tag (needs internet)
    force_image_size: int = 0
    prompt: str = ""

    def check_tower(self) -> None:
        """A zoo tower's file must exist at resolution, before any data is loaded."""
        if self.zoo:
            find_weights(get_entry(self.zoo), self.weights_dir)


def report_parameters(name: str, method: nn.Module) -> dict[str, int]:
    """Trainable vs total parameters, printed once (the papers' headline efficiency number)."""
    counts = {"trainable": count_trainable(method), "total": sum(p.numel() for p in method.parameters())}
    print(f"{name}: {counts['trainable']:,} trainable of {counts['total']:,} parameters", file=sys.stderr)
    return counts


def set_temperature(tower: ClipTower, learn: bool) -> None:
    """Train the logit scale (and SigLIP's logit bias) or keep them as loaded."""
    tower.logit_scale().requires_grad_(learn)
    bias = getattr(tower.model, "logit_bias", None)
    if isinstance(bias, torch.nn.Parameter):
        bias.requires_grad_(learn)
