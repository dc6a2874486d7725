"""CLIP-style contrastive dual encoder: a timm image tower and a transformers text tower.

The same class of model as RemoteCLIP and GeoRSCLIP (symmetric InfoNCE, learnable temperature), built
here from unimodal towers so it trains in our runner like the other methods. The text embedding is the
MEAN of the token states over real tokens (default) rather than [CLS]: the default MiniLM text model was
trained as a sentence encoder with mean pooling, so mean pooling gives usable sentence vectors from the
first step; `text_pool="cls"` switches to the first token.

Both towers end in a linear projection to `embed_dim`; the score is the cosine of the two embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..contracts import require_above, require_at_least
from ..errors import UserError
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer
from .components.backbones import create_backbone
from .components.contrastive import LogitScale, check_same_image_mode, decay_param_groups, info_nce
from .components.hf_text import DEFAULT_TEXT_MODEL, FrozenTextCache, HFTokenizer, load_text_model
from .components.prompts import PromptTokenizer
from .components.weights import WeightNeed, backbone_needs, text_model_weight
from .registry import register_method

TEXT_POOLS = ("mean", "cls")


@dataclass
class ClipConfig:
    """Options of the `clip` method (set with --set key=value)."""

    backbone: str = "resnet50"  # any timm model name
    pretrained: bool = True  # timm ImageNet weights (downloaded, or from the HF cache)
    backbone_weights: str = ""  # local weights file for the backbone (.safetensors / state dict)
    backbone_partial: bool = False  # accept a backbone_weights file that covers only part of the backbone
    text_model: str = DEFAULT_TEXT_MODEL  # 'minilm' (offline), a local folder or a hub name
    text_pretrained: bool = True  # False: same text architecture, random weights
    text_trainable_layers: int = -1  # -1: fine-tune the whole text model; 0: freeze it; k: only its top k layers
    text_pool: str = "mean"  # mean (over real tokens) | cls
    max_len: int = 32  # text tokens, including [CLS]/[SEP]
    embed_dim: int = 512  # joint embedding size
    init_temperature: float = 0.07  # CLIP's initial temperature (logit scale 1/0.07)
    learn_temperature: bool = True
    max_logit_scale: float = 100.0  # clamp of the logit scale, as in CLIP
    same_image: str = "mask"  # mask | positive: how two batch rows of the same image are treated
    prompt: str = ""  # e.g. "a satellite image of" prepended to every caption ('' = off)
    tower_lr_scale: float = 1.0  # lr multiplier of both towers (the projections and temperature use 1)

    def validate(self) -> None:
        """Checked at resolution (rsbench.config.schema.check_fields), before any data is loaded."""
        require_at_least(self, "model.", {"embed_dim": 1, "max_len": 2})
        require_above(self, "model.", ("init_temperature", "max_logit_scale"))


def _is_transformer(model: nn.Module) -> bool:
    """timm ViT/Swin/DeiT/... carry a patch embedding; CNNs (ResNet, ConvNeXt...) do not."""
    return hasattr(model, "patch_embed")


def _freeze_text(model: nn.Module, trainable_layers: int) -> bool:
    """Freeze all (0) or all but the top k transformer layers of a BERT-family model; True if all frozen."""
    if trainable_layers < 0:
        return False
    model.requires_grad_(False)
    if trainable_layers == 0:
        return True
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError("text_trainable_layers > 0 needs a BERT-style text model (encoder.layer); use -1 or 0")
    for layer in list(layers)[-trainable_layers:]:
        layer.requires_grad_(True)
    return False


@register_method(
    "clip",
    "CLIP-style dual encoder: timm image tower + MiniLM/BERT text tower, symmetric InfoNCE with learnable "
    "temperature",
    presets={
        # CPU-sized: random ResNet-18 on 64 px + the offline MiniLM text model kept frozen (its mean-pooled
        # sentence vectors already separate the captions; skipping its backward makes a step ~3x cheaper).
        "small": {
            "backbone": "resnet18",
            "pretrained": False,
            "text_trainable_layers": 0,
            "embed_dim": 256,
            "train.epochs": 3,  # val mR is near its plateau after 1-2 epochs on the synthetic set
            "train.batch_size": 32,
            "train.optimizer": "adamw",
            "train.lr": 1e-3,
            "train.weight_decay": 0.01,
            "train.image_size": 64,
        },
        # CLIP fine-tuning regime (RemoteCLIP / GeoRSCLIP fine-tune with AdamW, lr ~5e-6..1e-5 on the
        # towers, 224 px; CLIP's weight decay 0.2): here the projections are new, so they get lr 1e-4
        # while the pretrained towers get 1e-5 (tower_lr_scale 0.1); step decay x0.1 at epoch 10 of 20.
        "paper": {
            "backbone": "resnet50",
            "pretrained": True,
            "embed_dim": 512,
            "tower_lr_scale": 0.1,
            "train.epochs": 20,
            "train.batch_size": 128,
            "train.optimizer": "adamw",
            "train.lr": 1e-4,
            "train.weight_decay": 0.2,
            "train.lr_step": 10,
            "train.lr_gamma": 0.1,
            "train.image_size": 224,
        },
    },
    display_name="CLIP",
)
class ClipMethod(RetrievalMethod):
    """Image tower -> Linear, text tower -> pool -> Linear; InfoNCE with a learnable temperature."""

    config_cls = ClipConfig

    @classmethod
    def required_weights(cls, config: ClipConfig) -> list[WeightNeed]:
        return backbone_needs(config) + [text_model_weight(config.text_model, config.text_pretrained)]

    def __init__(self, config: ClipConfig, context: MethodContext):
        super().__init__(config, context)
        check_same_image_mode(config.same_image)
        if config.text_pool not in TEXT_POOLS:
            raise UserError(f"bad value for 'text_pool': '{config.text_pool}'; choose from: {', '.join(TEXT_POOLS)}")
        self.backbone = create_backbone(
            config.backbone, pretrained=config.pretrained, weights=config.backbone_weights or None, num_classes=0,
            partial=config.backbone_partial,
        )
        self.is_cnn = not _is_transformer(self.backbone)  # instance value: channels_last only helps CNNs
        self._hf_tokenizer, self.text_model = load_text_model(config.text_model, pretrained=config.text_pretrained)
        self.image_proj = nn.Linear(self.backbone.num_features, config.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text_model.config.hidden_size, config.embed_dim, bias=False)
        self._text_frozen = _freeze_text(self.text_model, config.text_trainable_layers)
        self._text_cache = FrozenTextCache(len(context.train_captions)) if self._text_frozen else None
        self.logit_scale = LogitScale(config.init_temperature, config.max_logit_scale, config.learn_temperature)

    # ---- data side -------------------------------------------------------------------------
    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        if "mean" in cfg and "std" in cfg:
            return tuple(cfg["mean"]), tuple(cfg["std"])
        return super().image_mean_std()

    def image_backbone(self) -> nn.Module:
        return self.backbone

    def training_text_outputs(self, batch: Batch) -> list[torch.Tensor]:
        """As the step runs the text side: a frozen tower's vectors through the per-caption cache."""
        return [self.training_texts(batch)]

    def tokenizer(self) -> Tokenizer:
        return PromptTokenizer(HFTokenizer(self._hf_tokenizer, max_len=self.config.max_len), self.config.prompt)

    # ---- model side ------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.backbone(images))

    def train(self, mode: bool = True) -> ClipMethod:
        super().train(mode)
        if self._text_frozen:
            self.text_model.eval()  # a frozen tower keeps its inference behaviour (no dropout)
        return self

    def _pooled_text(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """The text tower's sentence vector (before the projection)."""
        mask = text["attention_mask"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._text_frozen):
            states = self.text_model(input_ids=text["input_ids"], attention_mask=mask).last_hidden_state
        if self.config.text_pool == "cls":
            return states[:, 0]
        w = mask.unsqueeze(-1).to(states.dtype)
        return (states * w).sum(1) / w.sum(1).clamp(min=1.0)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_proj(self._pooled_text(text))

    def training_texts(self, batch: Batch) -> torch.Tensor:
        """Text embeddings of a training batch; a frozen tower's vectors come from the per-caption cache."""
        if self._text_cache is None:
            return self.encode_texts(batch.text)
        pooled = self._text_cache.lookup(batch.caption_ids, batch.text, self._pooled_text)
        return self.text_proj(pooled.to(self.text_proj.weight.dtype))

    def training_loss(self, batch: Batch) -> LossOutput:
        scale = self.logit_scale()
        loss = info_nce(
            self.encode_images(batch.images), self.training_texts(batch), scale, batch.image_ids,
            self.config.same_image, self.context.gather,
        )
        return LossOutput(loss, {"logit_scale": scale.detach()})

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        s = self.config.tower_lr_scale
        return decay_param_groups(self, lr, weight_decay, {"backbone.": s, "text_model.": s})
