"""Any open_clip model and checkpoint: RemoteCLIP, GeoRSCLIP, OpenAI/LAION CLIP, or a custom architecture.

Zero-shot evaluation (`--epochs 0`) and contrastive fine-tuning with the model's own logit_scale. The
model's own preprocessing mean/std and tokenizer are used, so scores match the checkpoint's training.

Building the model, loading weights and the tokenizer are in components/openclip_tower.py (weights are
read without unpickling arbitrary objects; a bad file is a UserError naming it). See docs/openclip.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..contracts import require_above
from ..errors import UserError
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer
from .components.contrastive import check_same_image_mode, decay_param_groups, info_nce
from .components.openclip_tower import OpenClipTokenizer, build_openclip_model
from .components.prompts import PromptTokenizer
from .components.weights import WeightNeed, tower_needs
from .registry import register_method


@dataclass
class OpenClipConfig:
    """Options of the `openclip` method (set with --set key=value)."""

    model: str = ""  # open_clip architecture (ViT-B-32, RN50, ViT-L-14...); '' = ViT-B-32, or model_config's
    checkpoint: str = ""  # local weights file (.pt/.pth/.bin state dict or .safetensors)
    pretrained: str = ""  # an open_clip pretrained tag (e.g. 'openai', 'laion2b_s34b_b79k'); needs internet
    model_config: str = ""  # JSON architecture file (its stem names it) or a folder of them
    strict: bool = True  # refuse a checkpoint with missing/unexpected/mis-shaped keys
    force_image_size: int = 0  # build the vision tower for this input size (0: the architecture's own)
    prompt: str = ""  # e.g. "a satellite image of" prepended to every caption ('' = off)
    same_image: str = "mask"  # mask | positive: how two batch rows of the same image are treated
    learn_temperature: bool = True  # fine-tune the model's logit_scale
    max_logit_scale: float = 100.0  # clamp of the logit scale, as in CLIP

    def validate(self) -> None:
        """Checked at resolution (rsbench.config.schema.check_fields), before any data is loaded."""
        require_above(self, "model.", ("max_logit_scale",))


# ---- the method ----------------------------------------------------------------------------------------

def _visual_is_cnn(visual: nn.Module) -> bool:
    """ModifiedResNet and timm CNN towers are CNNs; open_clip/timm ViTs are not (channels_last helps CNNs)."""
    if hasattr(visual, "class_embedding"):  # open_clip VisionTransformer
        return False
    trunk = getattr(visual, "trunk", None)
    return not hasattr(trunk, "patch_embed")


@register_method(
    "openclip",
    "Any open_clip model/checkpoint (RemoteCLIP, GeoRSCLIP, CLIP): zero-shot with --epochs 0, or "
    "contrastive fine-tuning",
    presets={
        # CPU-sized: the shipped rsbench-tiny architecture from random init, 64 px.
        "small": {
            "model": "rsbench-tiny",
            "train.epochs": 5,  # val mR ~55-62 from epoch 2 on the synthetic set (chance ~12)
            "train.batch_size": 32,
            "train.optimizer": "adamw",
            "train.lr": 5e-4,
            "train.weight_decay": 0.05,
            "train.image_size": 64,
        },
        # Fine-tuning a RemoteCLIP/GeoRSCLIP/CLIP ViT-B-32 checkpoint at 224 px with AdamW, lr 5e-6 (the
        # GeoRSCLIP authors' RSICD/RSITMD fine-tuning lr, om-ai-lab/RS5M issue #12: lr 5e-6, wd 0.5,
        # batch 600, 7 epochs) and CLIP's weight decay 0.2, batch 128 to fit one GPU, 10 epochs with
        # the checkpoint selected on val; the image size must match the architecture (336 for *-336).
        "paper": {
            "model": "ViT-B-32",
            "train.epochs": 10,
            "train.batch_size": 128,
            "train.optimizer": "adamw",
            "train.lr": 5e-6,
            "train.weight_decay": 0.2,
            "train.grad_clip": 50.0,
            "train.image_size": 224,
        },
    },
    display_name="OpenCLIP",
)
class OpenClipMethod(RetrievalMethod):
    """An open_clip CLIP/CustomTextCLIP as a dual encoder; fine-tuned with symmetric InfoNCE."""

    config_cls = OpenClipConfig

    @classmethod
    def required_weights(cls, config: OpenClipConfig) -> list[WeightNeed]:
        return tower_needs(config)

    def __init__(self, config: OpenClipConfig, context: MethodContext):
        super().__init__(config, context)
        check_same_image_mode(config.same_image)
        self.model, self.arch = build_openclip_model(config)
        self.model.logit_scale.requires_grad_(config.learn_temperature)
        self.is_cnn = _visual_is_cnn(self.model.visual)

    def _expected_size(self) -> tuple[int, int] | None:
        size = getattr(self.model.visual, "image_size", None)
        if size is None:
            return None
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    # ---- data side -------------------------------------------------------------------------
    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        import open_clip

        pp = open_clip.get_model_preprocess_cfg(self.model)
        return tuple(float(x) for x in pp["mean"]), tuple(float(x) for x in pp["std"])

    def image_backbone(self) -> nn.Module:
        return self.model.visual

    def tokenizer(self) -> Tokenizer:
        import open_clip

        ctx = int(getattr(self.model, "context_length", 0) or 77)
        inner = OpenClipTokenizer(open_clip.get_tokenizer(self.arch, context_length=ctx), ctx)
        return PromptTokenizer(inner, self.config.prompt)

    # ---- model side ------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        want = self._expected_size()
        if want is not None and tuple(images.shape[-2:]) != want:
            raise UserError(f"open_clip model '{self.arch}' takes {want[0]}x{want[1]} images, got "
                            f"{images.shape[-2]}x{images.shape[-1]}; set train.image_size={want[0]} "
                            f"(or force_image_size={images.shape[-1]})")
        return self.model.encode_image(images)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(text["input_ids"])

    def training_loss(self, batch: Batch) -> LossOutput:
        scale = self.model.logit_scale.float().exp().clamp(max=self.config.max_logit_scale).reshape(())
        loss = info_nce(self.encode_images(batch.images), self.encode_texts(batch.text), scale,
                        batch.image_ids, self.config.same_image, self.context.gather)
        return LossOutput(loss, {"logit_scale": scale.detach()})

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return decay_param_groups(self, lr, weight_decay)
