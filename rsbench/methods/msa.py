"""MSA: multi-scale alignment ("Transcending Fusion", arXiv 2405.18959), see specs/methods.md.

Training aligns image and text at each of four visual scales separately (MSCMAT branches, see
mscmat.py) besides a global triplet; inference is a plain dual encoder: cosine(g_v, g_t).

Image side: any timm backbone that exposes feature stages. Four levels are taken:
- hierarchical models (ResNet, ConvNeXt, EfficientNet, Swin...): the last feature of each of the
  last four resolutions (strides 4/8/16/32 for ResNet and Swin: their four stages);
- isotropic models (ViT, DeiT...: every block at one stride): the blocks at 1/4, 2/4, 3/4 and
  4/4 of the depth (ViT-B/12: blocks 3, 6, 9, 12), patch tokens only (class/register tokens are
  dropped by timm's features_only), laid out as a map.
Per level: global max-pool for S1..S3, global average-pool for S4 (as the paper). For ViT/Swin
set `backbone_img_size` to the training image size (timm builds them for one size).
The global image embedding: fused = sum_k Linear_k(p_k); h = W1 fused;
g_v = W2 (h * sigmoid(W_a h)).

Text side: a BERT-family encoder through transformers (`text_model`: "minilm" (offline default),
a local folder or a hub name such as "bert-base-uncased"), at most `max_len` = 31 tokens.
g_t = the [CLS] output, L2-normalised (as the authors, before it enters MSCMAT and the triplet);
the MSCMAT keys/values are the other outputs. When the encoder's hidden
size differs from `embed_dim` (the joint size, 768 in the paper; 384 = MiniLM's in the small
preset) one Linear maps every output token to `embed_dim`; otherwise there is no projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..contracts import require_at_least
from ..errors import UserError
from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    LossOutput,
    MethodContext,
    RetrievalMethod,
    Tokenizer,
    same_image_mask,
)
from .components.backbones import create_backbone
from .components.hf_text import DEFAULT_TEXT_MODEL, HFTokenizer, load_text_model
from .components.mscmat import MSCMAT, csmmc_loss, mscma_loss
from .components.triplet import hinge_triplet
from .components.weights import WeightNeed, backbone_needs, text_model_weight
from .registry import register_method

NUM_LEVELS = 4


@dataclass
class MSALossConfig:
    """Loss weights (0 switches a part off: it is not computed at all)."""

    triplet: float = 1.0
    margin: float = 0.5
    triplet_reduction: str = "sum"  # sum | mean over the batch (VSE++/authors: sum)
    mscma: float = 15.0
    mscma_logits: str = "sigmoid"  # sigmoid: the sigmoid outputs fed as logits (authors) | logits
    csmmc: float = 10.0
    tau: float = 2.0


@dataclass
class MSCMATConfig:
    """Where the authors' released code differs from our default (docs/fidelity.md); `paper` sets both."""

    shared_norm: bool = False  # one LayerNorm for the queries and one for the text, shared by the 4 scales
    mask_padding: bool = True  # False: pad captions to max_len and attend to the padding (authors)


@dataclass
class MSAConfig:
    backbone: str = "resnet50"  # any timm model with >= 4 feature levels (CNN, Swin, ViT)
    pretrained: bool = True  # timm ImageNet weights (fails clearly when they cannot be had)
    backbone_weights: str = ""  # local weights file for the backbone (overrides pretrained)
    backbone_partial: bool = False  # accept a backbone_weights file that covers only part of the backbone
    backbone_img_size: int = 0  # img_size passed to timm (ViT/Swin); 0: the model's default
    text_model: str = DEFAULT_TEXT_MODEL  # "minilm" | local folder | hub name (bert-base-uncased)
    text_pretrained: bool = True
    max_len: int = 31  # tokens, [CLS] and [SEP] included
    embed_dim: int = 768  # joint embedding size (= MSCMAT width)
    num_heads: int = 12  # MSCMAT attention heads; must divide embed_dim
    attn_dropout: float = 0.0
    backbone_lr_mult: float = 1.0  # lr multipliers per part (paper: one lr for all; 0: frozen)
    text_lr_mult: float = 1.0
    loss: MSALossConfig = field(default_factory=MSALossConfig)
    mscmat: MSCMATConfig = field(default_factory=MSCMATConfig)

    def validate(self) -> None:
        """Checked at resolution (rsbench.config.schema.check_fields), before any data is loaded."""
        require_at_least(self, "model.", {"embed_dim": 1, "num_heads": 1, "max_len": 2})
        if self.embed_dim % self.num_heads:
            raise UserError(f"model.num_heads={self.num_heads} must divide model.embed_dim={self.embed_dim}")


# ---- image side --------------------------------------------------------------------------------


def _feature_info(name: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """The backbone's feature levels, read from a weightless (meta-device) instance when possible."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001  (some constructors need real tensors: build on CPU, clear errors)
        model = create_backbone(name, pretrained=False, **kwargs)
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(f"backbone '{name}' exposes no feature levels (timm feature_info); "
                        "choose a CNN, ViT or Swin model")
    return [dict(d) for d in info]


def pick_levels(info: list[dict[str, Any]]) -> list[int]:
    """Indices (into feature_info) of the four levels S1..S4; see the module docstring."""
    n = len(info)
    reductions = [d["reduction"] for d in info]
    last_of_stride = [i for i in range(n) if i == n - 1 or reductions[i + 1] != reductions[i]]
    if len(last_of_stride) >= NUM_LEVELS:
        return last_of_stride[-NUM_LEVELS:]
    if n < NUM_LEVELS:
        raise UserError(f"backbone has {n} feature levels; MSA needs at least {NUM_LEVELS}")
    return [math.ceil(n * k / NUM_LEVELS) - 1 for k in range(1, NUM_LEVELS + 1)]


class ImageTower(nn.Module):
    """timm features -> four pooled level vectors (max-pool S1..S3, average-pool S4)."""

    def __init__(self, name: str, pretrained: bool = False, weights: str = "", img_size: int = 0,
                 partial: bool = False, **timm_kwargs: Any):
        super().__init__()
        kwargs = dict(timm_kwargs)
        if img_size:
            kwargs["img_size"] = img_size
        self.levels = pick_levels(_feature_info(name, kwargs))
        self.body = create_backbone(name, pretrained=pretrained, weights=weights or None, partial=partial,
                                    features_only=True, out_indices=tuple(self.levels), **kwargs)
        self.channels: list[int] = list(self.body.feature_info.channels())
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self.nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"  # Swin gives NHWC maps
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean_std = (tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
        self.is_cnn = not (self.nhwc or len(set(self.body.feature_info.reduction())) == 1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(images)
        dims = (1, 2) if self.nhwc else (2, 3)
        pooled = [f.amax(dim=dims) for f in feats[:-1]]
        return pooled + [feats[-1].mean(dim=dims)]


class GatedFusion(nn.Module):
    """Global image embedding from the four pooled vectors: W2 (h * sigmoid(W_a h)), h = W1 sum_k P_k p_k."""

    def __init__(self, channels: list[int], dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(c, dim) for c in channels)
        self.w1 = nn.Linear(dim, dim)
        self.wa = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def forward(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        fused = sum(p(x) for p, x in zip(self.proj, pooled, strict=True))
        h = self.w1(fused)
        return self.w2(h * torch.sigmoid(self.wa(h)))


# ---- text side ---------------------------------------------------------------------------------


class TextTower(nn.Module):
    """BERT-family encoder -> (g_t = L2-normalised [CLS], the other tokens, their padding mask), at embed_dim."""

    def __init__(self, name: str, pretrained: bool, embed_dim: int):
        super().__init__()
        self.hf_tokenizer, self.model = load_text_model(name, pretrained)
        hidden = int(self.model.config.hidden_size)
        self.proj: nn.Module = nn.Linear(hidden, embed_dim) if hidden != embed_dim else nn.Identity()

    def forward(self, text: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = text["attention_mask"]
        out = self.model(input_ids=text["input_ids"], attention_mask=mask).last_hidden_state
        h = self.proj(out)
        return F.normalize(h[:, 0], dim=-1), h[:, 1:], mask[:, 1:] == 0


def trim_padding(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without its trailing columns that are padding in every row (attention_mask 0)."""
    mask = text["attention_mask"]
    used = mask.any(dim=0).nonzero()
    n = int(used.max()) + 1 if used.numel() else mask.shape[1]
    return text if n == mask.shape[1] else {k: v[:, :n] for k, v in text.items()}


class FixedLengthTokenizer(HFTokenizer):
    """Pads every caption to max_len tokens (the authors' padding="max_length"), not to the longest."""

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        texts = [f"{self.prefix}{c}" for c in captions]
        enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# ---- the method --------------------------------------------------------------------------------


@register_method(
    "msa",
    "Multi-scale alignment (MSCMAT per-scale cross-attention + cross-scale KL), dual encoder at test",
    presets={
        "small": {
            "backbone": "resnet18", "pretrained": False, "text_model": "minilm", "text_pretrained": True,
            "embed_dim": 384, "num_heads": 12, "text_lr_mult": 0.1,
            "train.image_size": 64, "train.augment": "flip", "train.sampling": "image",
            "train.optimizer": "adamw", "train.lr": 5e-4, "train.weight_decay": 1e-4,
            "train.batch_size": 32, "train.epochs": 20,
        },
        "paper": {
            "backbone": "resnet50.tv_in1k", "pretrained": True, "text_model": "bert-base-uncased",
            "mscmat.shared_norm": True, "mscmat.mask_padding": False,
            "text_pretrained": True, "embed_dim": 768, "num_heads": 12, "backbone_lr_mult": 1.0,
            "text_lr_mult": 1.0, "train.image_size": 224, "train.optimizer": "adamw", "train.lr": 1e-5,
            "train.weight_decay": 0.1, "train.batch_size": 32, "train.epochs": 60, "train.grad_clip": 0.0,
        },
    },
    display_name="MSA",
)
class MSA(RetrievalMethod):
    """MSA: global triplet + per-scale MSCMA cross-entropy + cross-scale CSMMC KL; cosine at test."""

    config_cls = MSAConfig

    @classmethod
    def required_weights(cls, config: MSAConfig) -> list[WeightNeed]:
        return backbone_needs(config) + [text_model_weight(config.text_model, config.text_pretrained)]

    def __init__(self, config: MSAConfig, context: MethodContext):
        super().__init__(config, context)
        c, lc = config, config.loss
        if c.embed_dim <= 0 or c.num_heads <= 0 or c.embed_dim % c.num_heads:
            raise UserError(f"msa: num_heads={c.num_heads} must divide embed_dim={c.embed_dim}")
        if lc.mscma_logits not in ("sigmoid", "logits"):
            raise UserError(f"msa: loss.mscma_logits must be 'sigmoid' or 'logits', not '{lc.mscma_logits}'")
        if lc.triplet_reduction not in ("sum", "mean"):
            raise UserError(f"msa: loss.triplet_reduction must be 'sum' or 'mean', "
                            f"not '{lc.triplet_reduction}'")
        if c.max_len < 3:
            raise UserError(f"msa: max_len={c.max_len} leaves no word token")
        self.image = ImageTower(c.backbone, c.pretrained, c.backbone_weights, c.backbone_img_size,
                                c.backbone_partial)
        self.is_cnn = self.image.is_cnn
        self.fusion = GatedFusion(self.image.channels, c.embed_dim)
        self.text = TextTower(c.text_model, c.text_pretrained, c.embed_dim)
        self.mscmat = MSCMAT(self.image.channels, c.embed_dim, c.num_heads, c.attn_dropout,
                             shared_norm=c.mscmat.shared_norm)
        for part, mult in ((self.image, c.backbone_lr_mult), (self.text.model, c.text_lr_mult)):
            if mult == 0:  # frozen: no gradient at all (and none in the clipping norm)
                part.requires_grad_(False)

    # ---- data side ---------------------------------------------------------------------------
    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.image.mean_std

    def image_backbone(self) -> nn.Module:
        return self.image.body

    def training_text_outputs(self, batch: Batch) -> list[torch.Tensor]:
        """g_t and every token state: the tokens feed the MSCMAT, so the step backpropagates through all."""
        g_t, tokens, _ = self.text(batch.text)
        return [g_t, tokens]

    def tokenizer(self) -> Tokenizer:
        if not self.config.mscmat.mask_padding:  # the authors pad every caption to max_len tokens
            return FixedLengthTokenizer(self.text.hf_tokenizer, max_len=self.config.max_len)
        return HFTokenizer(self.text.hf_tokenizer, max_len=self.config.max_len)

    def _text(self, text: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """g_t, tokens and the MSCMAT padding mask (all False when mask_padding is off)."""
        g_t, tokens, pad = self.text(text)
        return g_t, tokens, pad if self.config.mscmat.mask_padding else torch.zeros_like(pad)

    # ---- encoders ----------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.fusion(self.image(images))

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """g_t only: the padding past the batch's longest caption is cut first (the [CLS] output does not see
        masked padding, so the values are the same; the `paper` tokenizer pads every caption to 31 tokens)."""
        return self.text(trim_padding(text))[0]

    def match_logits(self, pooled: list[torch.Tensor], text: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-scale pre-sigmoid B_i x B_t matching logits (training-only cross-attention)."""
        g_t, tokens, pad = self._text(text)
        return self.mscmat(pooled, tokens, pad, g_t)

    # ---- loss --------------------------------------------------------------------------------
    def training_loss(self, batch: Batch) -> LossOutput:
        """Weighted sum of the enabled parts; logs hold each weighted part and the total.

        Rows showing the same image (batch.image_ids) are positives: the triplet never takes them
        as negatives and MSCMA drops them from each row's softmax (see mscmat.mscma_loss); CSMMC
        matches whole distributions, so it needs no masking.
        """
        lc = self.config.loss
        pooled = self.image(batch.images)
        g_v = self.fusion(pooled)
        g_t, tokens, pad = self._text(batch.text)
        same = same_image_mask(batch.image_ids)
        parts: dict[str, torch.Tensor] = {}
        if lc.triplet:
            sim = F.normalize(g_v.float(), dim=-1) @ F.normalize(g_t.float(), dim=-1).T
            parts["triplet"] = lc.triplet * hinge_triplet(sim, same, lc.margin, True, lc.triplet_reduction)
        if lc.mscma or lc.csmmc:
            logits = self.mscmat(pooled, tokens, pad, g_t)
            probs = [torch.sigmoid(z.float()) for z in logits]  # the matrices M_k
            if lc.mscma:
                ce_in = probs if lc.mscma_logits == "sigmoid" else logits
                parts["mscma"] = lc.mscma * mscma_loss(ce_in, same)
            if lc.csmmc:
                parts["csmmc"] = lc.csmmc * csmmc_loss(probs, lc.tau)
        if not parts:
            raise UserError("msa: every loss weight is 0 (loss.triplet, loss.mscma, loss.csmmc)")
        loss = sum(parts.values())
        logs = {k: v.detach() for k, v in parts.items()}
        logs["loss"] = loss.detach()
        return LossOutput(loss=loss, logs=logs)

    # ---- optimisation ------------------------------------------------------------------------
    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone, text encoder and the new heads, each with its lr multiplier."""
        backbone = list(self.image.parameters())
        text_enc = list(self.text.model.parameters())
        taken = {id(p) for p in backbone + text_enc}
        rest = [p for p in self.parameters() if id(p) not in taken]
        groups = [(backbone, self.config.backbone_lr_mult), (text_enc, self.config.text_lr_mult), (rest, 1.0)]
        return [{"params": [p for p in ps if p.requires_grad], "lr": lr * mult, "weight_decay": weight_decay}
                for ps, mult in groups if mult > 0 and any(p.requires_grad for p in ps)]
