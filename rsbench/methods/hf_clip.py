"""Transformers CLIPModel / SiglipModel from a local folder (CLIP-rsicd, Git-RSCLIP...): zero-shot or fine-tuned.

The folder is what `save_pretrained` writes (config.json, weights, tokenizer, preprocessor_config.json);
nothing is downloaded. CLIP models fine-tune with symmetric InfoNCE and their own logit_scale; SigLIP
models with the pairwise sigmoid loss and their own logit_scale and logit_bias (Zhai et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..contracts import require_above
from ..errors import UserError
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer, same_image_mask
from .components.clip_tower import ClipTower, HfTower
from .components.contrastive import check_same_image_mode, decay_param_groups, info_nce
from .components.weights import WeightNeed, local_path
from .registry import register_method

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


@dataclass
class HfClipConfig:
    """Options of the `hf_clip` method (set with --set key=value)."""

    folder: str = ""  # a transformers CLIP or SigLIP folder (save_pretrained layout)
    prompt: str = ""  # e.g. "a satellite image of" prepended to every caption ('' = off)
    same_image: str = "mask"  # mask | positive: how two batch rows of the same image are treated
    learn_temperature: bool = True  # fine-tune logit_scale (and SigLIP's logit_bias)
    max_logit_scale: float = 100.0  # clamp of the logit scale, as in CLIP

    def validate(self) -> None:
        """Checked at resolution, before any data is loaded."""
        require_above(self, "model.", ("max_logit_scale",))


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


def _set_temperature(tower: ClipTower, learn: bool) -> None:
    tower.logit_scale().requires_grad_(learn)
    bias = getattr(tower.model, "logit_bias", None)
    if isinstance(bias, torch.nn.Parameter):
        bias.requires_grad_(learn)


@register_method(
    "hf_clip",
    "A transformers CLIP/SigLIP folder (CLIP-rsicd, Git-RSCLIP): zero-shot with --epochs 0, or full fine-tuning",
    presets={
        "small": {"train.epochs": 2, "train.batch_size": 32, "train.optimizer": "adamw", "train.lr": 1e-5,
                  "train.weight_decay": 0.2},
        "paper": dict(RET2_FINETUNE),
        "ret2": dict(RET2_FINETUNE),
    },
    display_name="CLIP (HF)",
)
class HfClipMethod(TowerMethod):
    """Image and text towers of a transformers CLIP/SigLIP model, all weights trainable."""

    config_cls = HfClipConfig

    @classmethod
    def required_weights(cls, config: HfClipConfig) -> list[WeightNeed]:
        return [local_path(config.folder, "folder")] if config.folder else []

    def __init__(self, config: HfClipConfig, context: MethodContext):
        super().__init__(config, context)
        check_same_image_mode(config.same_image)
        if not config.folder:
            raise UserError("hf_clip needs folder=PATH (a transformers CLIP/SigLIP folder), e.g. --set folder=DIR")
        self.tower = HfTower(config.folder)
        _set_temperature(self.tower, config.learn_temperature)
