"""Transformers CLIPModel / SiglipModel from a local folder (CLIP-rsicd, Git-RSCLIP...): zero-shot or fine-tuned.

The folder is what `save_pretrained` writes (config.json, weights, tokenizer, preprocessor_config.json);
nothing is downloaded. CLIP models fine-tune with symmetric InfoNCE and their own logit_scale; SigLIP
models with the pairwise sigmoid loss and their own logit_scale and logit_bias (Zhai et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contracts import require_above
from ..errors import UserError
from .base import MethodContext
from .components.clip_tower import HfTower
from .components.contrastive import check_same_image_mode
from .components.tower_method import RET2_FINETUNE, TowerMethod, set_temperature
from .components.weights import WeightNeed, local_path
from .registry import register_method


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
        set_temperature(self.tower, config.learn_temperature)
