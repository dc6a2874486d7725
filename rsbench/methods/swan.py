"""SWAN (Pan et al., ICMR 2023): scene-aware aggregation network (jaychempan/SWAN-pytorch).

Image (ResNet stages; ResNet-50 in the paper):
- VMSF, visual multi-scale fusion: 1x1 convs of stages 2/3/4 to D/D/2D channels, stage 2 halved and
  stage 4 doubled (nearest) to stage 3's grid, concatenated (4D) -> 1x1 conv + BN + ReLU to D ->
  spatial mean -> MLP(D, 2D, D) (dropout 0.2): the global embedding g.
- SFGS, scene fine-grained sensing: the stem output (after max-pool, 64 ch) filtered to 32 ch
  (1x1 conv + BN + ReLU); three branches (1x1/s1 -> 32, 3x3/s3 -> 32, 5x5/s5 -> 64 ch, each BN + ReLU
  + adaptive average pool to 16x16) concatenated as 128 tokens of 256 positions; FC(256 -> D) + ReLU;
  a transformer block (8-head self attention + GELU FFN, post-LN); weighted fusion of the tokens with
  a learned (128, D) matrix W: mean over d of (W^T X)[d] = sum_c mean_d(W[c, d]) X[c] (identical).
- Aggregation: fc2(relu(fc1([sfgs; g]))) -> image embedding.
Text: word embeddings -> bi-GRU (hidden D, mean of directions) -> TCGE: gated self attention (2 heads,
gates sigmoid(fc_g(fc_q(q) * fc_k(k))) on q and k) + BN + dropout as a residual, joint-word 1D convs
(k2/s2 and k3/s3, BN, ReLU) appended as extra tokens, MLP residual; the embedding is the token at
position (length - 1), i.e. the last real word's enhanced state. Score: cosine. Loss: hinge triplet
(margin 0.2), sum over negatives (the authors' default; max violation off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import UserError
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer, same_image_mask
from .components.backbones import create_backbone
from .components.triplet import hinge_triplet
from .components.vocab import Vocabulary, VocabularyState, WordTokenizer
from .components.weights import WeightNeed, backbone_needs
from .registry import register_method


@dataclass
class SWANConfig:
    backbone: str = "resnet50"
    pretrained: bool = True
    backbone_weights: str = ""  # the authors start from a ResNet-50 trained on AID scenes
    finetune_backbone: bool = False  # the authors' default (is_finetune False): the CNN stays frozen
    embed_dim: int = 512
    word_dim: int = 300
    heads: int = 8  # SFGS self-attention heads (8 x 64 in the paper)
    grid: int = 16  # SFGS adaptive-pool grid (16x16 = 256 positions)
    margin: float = 0.2
    hardest: bool = False
    min_word_count: int = 1
    max_words: int = 48


def mlp(d_in: int, d_mid: int, d_out: int, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_mid), nn.ReLU(), nn.Dropout(drop), nn.Linear(d_mid, d_out))


def conv_bn(c_in: int, c_out: int, k: int, stride: int, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=stride, bias=bias), nn.BatchNorm2d(c_out), nn.ReLU()]


class VMSF(nn.Module):
    """Visual multi-scale fusion of stages 2, 3, 4 into one global vector (N, D)."""

    def __init__(self, channels: tuple[int, int, int], dim: int):
        super().__init__()
        self.c2, self.c3 = nn.Conv2d(channels[0], dim, 1), nn.Conv2d(channels[1], dim, 1)
        self.c4 = nn.Conv2d(channels[2], 2 * dim, 1)
        self.fuse = nn.Sequential(*conv_bn(4 * dim, dim, 1, 1))
        self.filter = mlp(dim, 2 * dim, dim, 0.2)

    def forward(self, d2: torch.Tensor, d3: torch.Tensor, d4: torch.Tensor) -> torch.Tensor:
        p3 = self.c3(d3)
        size = p3.shape[-2:]  # nearest x0.5 / x2 in the paper; sized to stage 3 so odd maps work too
        half = F.interpolate(self.c2(d2), size=size, mode="nearest")
        double = F.interpolate(self.c4(d4), size=size, mode="nearest")
        return self.filter(self.fuse(torch.cat([half, p3, double], 1)).mean((2, 3)))


class SFGS(nn.Module):
    """Scene fine-grained sensing: multi-granularity tokens of the shallow map -> attention -> (N, D)."""

    def __init__(self, dim: int, heads: int, grid: int, n_tokens: int = 128):
        super().__init__()
        self.b1 = nn.Sequential(*conv_bn(32, 32, 1, 1), nn.AdaptiveAvgPool2d(grid))
        self.b3 = nn.Sequential(*conv_bn(32, 32, 3, 3), nn.AdaptiveAvgPool2d(grid))
        self.b5 = nn.Sequential(*conv_bn(32, 64, 5, 5), nn.AdaptiveAvgPool2d(grid))
        self.fc = nn.Sequential(nn.Linear(grid * grid, dim), nn.ReLU(), nn.Dropout(0.1))
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(0.1), nn.Dropout(0.1)
        self.fmp_weight = nn.Parameter(torch.randn(1, n_tokens, dim))

    def tokens(self, shallow: torch.Tensor) -> torch.Tensor:
        """(N, 32, h, w) -> (N, 128, D) after the transformer block (before the weighted fusion)."""
        x = torch.cat([b(shallow).flatten(2) for b in (self.b1, self.b3, self.b5)], 1)
        x = self.fc(x)
        x = self.norm1(x + self.drop1(self.attn(x, x, x, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ffn(x)))

    def forward(self, shallow: torch.Tensor) -> torch.Tensor:
        x = self.tokens(shallow)
        w = self.fmp_weight[0].mean(1)  # mean_d (W^T X)[d] = sum_c mean_d W[c, d] X[c]
        return torch.einsum("c,ncd->nd", w, x)


class GatedAttention(nn.Module):
    """TCGE's gated self attention over words (2 heads): q, k gated by sigmoid(fc_g(fc_q(q) * fc_k(k)))."""

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.h, self.dk = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fc_q, self.fc_k = nn.Linear(self.dk, self.dk), nn.Linear(self.dk, self.dk)
        self.fc_g = nn.Linear(self.dk, 2 * self.dk)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        q, k, v = (f(x).view(n, length, self.h, self.dk).transpose(1, 2) for f in (self.q, self.k, self.v))
        gate = torch.sigmoid(self.fc_g(self.fc_q(q) * self.fc_k(k)))
        q, k = q * gate[..., : self.dk], k * gate[..., self.dk:]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(self.dk)
        att = att.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        return (att @ v).transpose(1, 2).reshape(n, length, -1)


class TCGE(nn.Module):
    """Text coarse-grained enhancement: gated attention + joint-word convs; returns the last real word."""

    def __init__(self, dim: int):
        super().__init__()
        self.ga, self.bn, self.drop = GatedAttention(dim), nn.BatchNorm1d(dim), nn.Dropout(0.2)
        self.jw2 = nn.Sequential(nn.Conv1d(dim, dim, 2, stride=2), nn.BatchNorm1d(dim), nn.ReLU())
        self.jw3 = nn.Sequential(nn.Conv1d(dim, dim, 3, stride=3), nn.BatchNorm1d(dim), nn.ReLU())
        self.mlp = mlp(dim, 2 * dim, dim, 0.1)

    def forward(self, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n, length, d = words.shape
        mask = torch.arange(length, device=words.device)[None] < lengths[:, None]
        ga = words + self.drop(self.bn(self.ga(words, mask).reshape(n * length, d)).view(n, length, d))
        seq = words.transpose(1, 2)
        if length < 3:  # the joint-word convs need 2 and 3 steps; their tokens never reach the output
            seq = F.pad(seq, (0, 3 - length))
        jw = torch.cat([self.jw2(seq), self.jw3(seq)], 2).transpose(1, 2)
        x = torch.cat([ga, jw], 1)
        x = self.mlp(x) + x
        return F.normalize(x[torch.arange(n, device=x.device), lengths - 1], dim=-1)


class ImageEncoder(nn.Module):
    """ResNet stem + stages -> VMSF global vector and SFGS scene vector -> aggregated embedding."""

    def __init__(self, cfg: SWANConfig):
        super().__init__()
        self.cnn = create_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights or None,
                                   features_only=True, out_indices=(0, 2, 3, 4))
        c0, c2, c3, c4 = self.cnn.feature_info.channels()
        self.cnn.requires_grad_(cfg.finetune_backbone)
        self.shallow = nn.Sequential(*conv_bn(c0, 32, 1, 1))
        self.vmsf = VMSF((c2, c3, c4), cfg.embed_dim)
        self.sfgs = SFGS(cfg.embed_dim, cfg.heads, cfg.grid)
        self.fc1, self.fc2 = nn.Linear(2 * cfg.embed_dim, cfg.embed_dim), nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f0, d2, d3, d4 = self.cnn(images)
        stem = F.max_pool2d(f0, 3, 2, 1)  # the ResNet max-pool: the paper's shallow features
        local = self.sfgs(self.shallow(stem))
        return self.fc2(torch.relu(self.fc1(torch.cat([local, self.vmsf(d2, d3, d4)], 1))))


@register_method(
    "swan",
    "SWAN (Pan et al. 2023): ResNet + multi-scale fusion (VMSF) + scene fine-grained sensing (SFGS), "
    "bi-GRU + coarse-grained enhancement (TCGE), hinge triplet",
    presets={
        "small": {"backbone": "resnet18", "pretrained": False, "finetune_backbone": True, "embed_dim": 128,
                  "word_dim": 64, "heads": 4, "train.image_size": 64, "train.epochs": 5, "train.batch_size": 32,
                  "train.lr": 5e-4, "train.augment": "flip"},
        "paper": {"backbone": "resnet50", "pretrained": True, "finetune_backbone": False, "embed_dim": 512,
                  "word_dim": 300, "train.image_size": 256, "train.resize": 278, "train.augment": "crop,flip,rotate",
                  "train.epochs": 100, "train.batch_size": 100, "train.optimizer": "adam", "train.lr": 2e-4,
                  "train.lr_step": 20, "train.lr_gamma": 0.7, "train.grad_clip": 0.0},
    },
    display_name="SWAN",
)
class SWAN(VocabularyState, RetrievalMethod):
    config_cls = SWANConfig

    @classmethod
    def required_weights(cls, config: SWANConfig) -> list[WeightNeed]:
        return backbone_needs(config)

    def __init__(self, config: SWANConfig, context: MethodContext):
        super().__init__(config, context)
        if config.embed_dim % config.heads or config.embed_dim % 2:
            raise UserError(f"swan: embed_dim ({config.embed_dim}) must be divisible by heads ({config.heads}) and 2")
        self.vocab = Vocabulary.build(context.train_captions, min_count=config.min_word_count)
        self.image_encoder = ImageEncoder(config)
        self.embed = nn.Embedding(len(self.vocab), config.word_dim, padding_idx=0)
        self.gru = nn.GRU(config.word_dim, config.embed_dim, batch_first=True, bidirectional=True)
        self.word_drop = nn.Dropout(0.4)
        self.tcge = TCGE(config.embed_dim)

    def image_backbone(self) -> nn.Module:
        return self.image_encoder.cnn

    def tokenizer(self) -> Tokenizer:
        return WordTokenizer(self.vocab, self.config.max_words)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, lengths = text["input_ids"], text["lengths"].clamp(min=1)
        packed = pack_padded_sequence(self.word_drop(self.embed(ids)), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        d = out.shape[-1] // 2
        return self.tcge((out[..., :d] + out[..., d:]) / 2, lengths.to(ids.device))

    def training_loss(self, batch: Batch) -> LossOutput:
        scores = self.encode_images(batch.images).float() @ self.encode_texts(batch.text).float().T
        loss = hinge_triplet(scores, same_image_mask(batch.image_ids), self.config.margin, self.config.hardest)
        return LossOutput(loss, {"triplet": loss.detach()})
