"""AMFMN (Yuan et al., TGRS 2021): multiscale visual self-attention + visual-guided text attention.

Image: ResNet stages f1..f4 -> global vector v gated by the MVSA salient mask -> F_v.
Text: word embeddings -> bi-GRU -> mean over real steps -> T (text_encoder=skipthought: the shape of the
authors' released code, one forward GRU's state at the last real word -> ReLU(Linear)). The image re-weights the text
(soft / fusion / similarity variants), so the score needs both sides (cross interaction); it is
computed as a matrix without an images x captions x D tensor (soft: two matrix products; the other
variants: chunks sized to `score_chunk_mb`). Loss: bidirectional hinge triplet with a dynamic margin
from the prior text similarity of the training captions (rsbench.methods.components.prior_similarity).

Input size: MVSA's 16x16 grid is the stage-3 map of a 256 input. For other sizes the stage-3 map is
(H/16)x(W/16); the fused mask is adaptive-average-pooled to `mvsa_grid` x `mvsa_grid` (a no-op at
256, replication for a smaller map) before Linear(grid^2 -> D), so no layer depends on the image
size and no lazy layer is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..contracts import require_at_least
from ..errors import UserError
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer, same_image_mask
from .components.backbones import create_backbone
from .components.prior_similarity import PriorParams, PriorSimilarity, dynamic_margin
from .components.triplet import hinge_triplet
from .components.vocab import Vocabulary, VocabularyState, WordTokenizer
from .components.weights import WeightNeed, backbone_needs
from .registry import register_method

VARIANTS = ("soft", "fusion", "similarity")
_EPS = 1e-8


@dataclass
class AMFMNConfig:
    variant: str = "soft"  # visual-guided text attention: soft | fusion | similarity
    embed_dim: int = 512  # joint space D
    backbone: str = "resnet18"  # timm name; any ResNet-like model with 4 feature stages
    pretrained: bool = False  # timm ImageNet weights (the paper preset turns this on)
    backbone_weights: str = ""  # local weights file for the backbone (overrides pretrained)
    backbone_partial: bool = False  # accept a backbone_weights file that covers only part of the backbone
    mvsa_channels: int = 3  # c in MVSA
    mvsa_grid: int = 16  # mask grid fed to Linear(grid^2 -> D); 16 = stage-3 map of a 256 input
    text_encoder: str = "bigru"  # bigru (the paper) | skipthought (the shape of the authors' released code)
    word_dim: int = 300
    hidden_dim: int = 512  # GRU hidden size (per direction for bigru); skipthought as released: 620 / 2400
    max_words: int = 48
    min_word_count: int = 1  # vocabulary from the training captions
    margin_mode: str = "dynamic"  # dynamic (prior-similarity margin) | fixed (gamma everywhere; with gamma=0.2
    # this is the authors' released code, which accepts the dynamic margin but never reads it)
    gamma: float = 0.2  # maximum margin (authors' config 0.2; paper ablates 0.2-0.8)
    beta: float = 1.0  # margin decay; paper: mR insensitive to it
    negatives: str = "sum"  # sum over in-batch negatives | hardest (max violation)
    score_chunk_mb: int = 0  # memory bound of one fusion/similarity scoring chunk; 0 = 16 on CPU, 256 on GPU

    def validate(self) -> None:
        """Checked at resolution (rsbench.config.schema.check_fields), before any data is loaded."""
        require_at_least(self, "model.", {"word_dim": 1, "hidden_dim": 1, "max_words": 1})
        _check_config(self)


class MVSA(nn.Module):
    """Multiscale visual self-attention: a salient gate in (0, 1)^D from the lower and higher scales."""

    def __init__(self, lower_ch: int, higher_ch: int, embed_dim: int, c: int = 3, grid: int = 16):
        super().__init__()
        self.grid = grid
        self.lower_conv = nn.Conv2d(lower_ch, c, 3, stride=4, padding=0)  # no padding, as the authors
        self.higher_conv = nn.Conv2d(higher_ch, c, 1)
        self.main = nn.Conv2d(2 * c, 1, 1)
        self.attn = nn.Conv2d(2 * c, 1, 1)
        self.fc = nn.Linear(grid * grid, embed_dim)

    def mask(self, lower: torch.Tensor, higher: torch.Tensor) -> torch.Tensor:
        """(B, 1, grid, grid) salient mask before the Linear."""
        short = [max(0, 3 - n) for n in lower.shape[-2:]]
        if any(short):  # images under ~12 px: a map smaller than the kernel, zero-pad it up to 3x3
            lower = F.pad(lower, (0, short[1], 0, short[0]))
        low = self.lower_conv(lower)
        high = self.higher_conv(higher)
        if low.shape[-2:] != high.shape[-2:]:  # odd input sizes: align to the stage-3 map
            low = F.adaptive_avg_pool2d(low, high.shape[-2:])
        x = torch.cat([low, high], 1) + high.mean(1, keepdim=True)
        m = self.main(x) * torch.sigmoid(self.attn(x))
        if m.shape[-2:] != (self.grid, self.grid):
            m = F.adaptive_avg_pool2d(m, self.grid)
        return m

    def forward(self, lower: torch.Tensor, higher: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(self.mask(lower, higher).flatten(1)))


class ImageEncoder(nn.Module):
    """ResNet stages -> lower/higher fusion -> F_v = Linear(mean f4) * MVSA gate."""

    def __init__(self, cfg: AMFMNConfig):
        super().__init__()
        self.backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained,
                                        weights=cfg.backbone_weights or None, partial=cfg.backbone_partial,
                                        features_only=True,
                                        out_indices=(1, 2, 3, 4))
        c1, c2, c3, c4 = self.backbone.feature_info.channels()
        self.mvsa = MVSA(c1 + c2, c3 + c4, cfg.embed_dim, cfg.mvsa_channels, cfg.mvsa_grid)
        self.fc = nn.Linear(c4, cfg.embed_dim)

    @staticmethod
    def _up_cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """concat(a, upsample(b) to a's size): the 2x upsampling, exact for odd sizes too."""
        return torch.cat([a, F.interpolate(b, size=a.shape[-2:], mode="nearest")], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f1, f2, f3, f4 = self.backbone(images)
        gate = self.mvsa(self._up_cat(f1, f2), self._up_cat(f3, f4))
        v = self.fc(f4.mean((2, 3)))
        return v * gate


class TextEncoder(nn.Module):
    """Word embeddings -> bi-GRU; per step the mean of both directions, averaged over real steps."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int, embed_dim: int):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(hidden, embed_dim)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.clamp(min=1)
        packed = pack_padded_sequence(self.embed(input_ids), lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        steps = (out[..., : self.hidden] + out[..., self.hidden:]) / 2  # padded steps are zeros
        sentence = steps.sum(1) / lengths.to(steps.device, steps.dtype).unsqueeze(1)
        return self.fc(sentence)


class SkipThoughtEncoder(nn.Module):
    """The text side of the authors' released code, with random weights: word embeddings -> one
    forward GRU -> its state at the last real word -> ReLU(Linear -> D). Their skip-thought GRU
    (620 -> 2400) is stepped in Python with six Linear layers and runs every caption for the
    longest one's steps; here the input side of all steps is one matrix product, and each step
    multiplies only the captions still running (sorted by length), so the state of a caption stays
    at its last real word. The gate products run in the autocast dtype (bf16 where the CPU has it),
    the state and the gates in float32. Their per-sequence GRU dropout (p = 0.25) is not reproduced.
    The weights live in an nn.GRU (gates r, z, n) for standard names and initialisation."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, embed_dim)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        g, n_hid = self.gru, self.gru.hidden_size
        lengths = lengths.clamp(min=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        steps = lengths[order].tolist()
        x_gates = F.linear(self.embed(input_ids[order, : steps[0]]), g.weight_ih_l0, g.bias_ih_l0).float()
        h = x_gates.new_zeros(len(steps), n_hid)
        running = len(steps)
        for t in range(steps[0]):
            while steps[running - 1] <= t:  # captions that have ended keep their last state
                running -= 1
            xr, xz, xn = x_gates[:running, t].split(n_hid, dim=1)
            hr, hz, hn = F.linear(h[:running], g.weight_hh_l0, g.bias_hh_l0).float().split(n_hid, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            new = torch.lerp(torch.tanh(xn + r * hn), h[:running], z)  # (1 - z) * n + z * h
            h = torch.cat([new, h[running:]]) if running < len(steps) else new
        out = torch.empty_like(h)
        out[order] = h
        return F.relu(self.fc(out))


class TextAttention(nn.Module):
    """Visual-guided text attention T' = f(F_v, T) and the image x text cosine score matrix."""

    def __init__(self, variant: str, dim: int, chunk_mb: int = 0):
        super().__init__()
        self.variant = variant
        # 0 = by device: on CPU small chunks stay in cache and reuse freed memory (6x faster than
        # 256 MB ones at 1093 x 1093, D=512); a GPU wants big chunks to fill its cores
        self.chunk_bytes = max(0, chunk_mb) * 2**20
        if variant == "soft":
            self.w = nn.Linear(dim, dim)
        elif variant == "fusion":  # W [v; t] = W_v v + W_t t: the image half carries the bias
            self.w1v, self.w1t = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False)
            self.w2v, self.w2t = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False)
        else:
            self.wv, self.wt = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def attend(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Direct definition on aligned rows: (N, D), (N, D) -> T' (N, D)."""
        if self.variant == "soft":
            return torch.sigmoid(self.w(v)) * t
        if self.variant == "fusion":
            return torch.sigmoid(self.w1v(v) + self.w1t(t)) * (self.w2v(v) + self.w2t(t))
        tp = self.wt(t)  # the gate multiplies the projected text (paper eq. 25, authors' CrossAttention)
        return torch.sigmoid(self.wv(v) * tp) * tp

    def score(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(Ni, D) x (Nt, D) -> (Ni, Nt) cosine(F_v_i, T'_ij), never an Ni x Nt x D tensor at once."""
        v, t = v.float(), t.float()
        if len(v) == 0 or len(t) == 0:
            return v.new_zeros(len(v), len(t))
        v_norm = v.norm(dim=1).clamp(min=_EPS)
        if self.variant == "soft":
            # cos(v, g*t) = ((v*g) . t) / (|v| sqrt((g*g) . (t*t)))
            g = torch.sigmoid(self.w(v))
            if torch.is_grad_enabled():
                num = (v * g) @ t.T
                den = ((g * g) @ (t * t).T).clamp(min=0).sqrt().clamp(min=_EPS)
                return num / den / v_norm[:, None]
            return self._soft_inplace(v * g, g * g, t, v_norm)
        # fusion / similarity: sigmoid(a_i + b_j) and sigmoid(p_i * q_j) do not factor -> chunks
        if self.variant == "fusion":
            a, b = self.w1v(v), self.w1t(t)
            c, d = self.w2v(v), self.w2t(t)
        else:
            p, q = self.wv(v), self.wt(t)
        ni, nt = self._chunks(len(v), len(t), v.shape[1], v.device)
        rows = []
        for i0 in range(0, len(v), ni):
            cols = []
            for j0 in range(0, len(t), nt):
                i, j = slice(i0, i0 + ni), slice(j0, j0 + nt)
                if self.variant == "fusion":
                    tp = torch.sigmoid(a[i, None] + b[None, j]) * (c[i, None] + d[None, j])
                else:
                    tp = torch.sigmoid(p[i, None] * q[None, j]) * q[None, j]
                num = torch.einsum("id,ijd->ij", v[i], tp)
                cols.append(num / tp.norm(dim=2).clamp(min=_EPS) / v_norm[i, None])
            rows.append(torch.cat(cols, 1))
        return torch.cat(rows, 0)

    @staticmethod
    def _soft_inplace(vg: torch.Tensor, gg: torch.Tensor, t: torch.Tensor, v_norm: torch.Tensor,
                      rows: int = 256) -> torch.Tensor:
        """The soft score without autograd: one (Ni, Nt) output plus a (rows, Nt) denominator.

        Evaluation scores 1093 x 5465 blocks and larger; the differentiable form holds three
        full-size temporaries, this one divides into the output in place, a row block at a time.
        """
        out = vg @ t.T
        tt = (t * t).T
        for i0 in range(0, len(out), rows):
            i = slice(i0, i0 + rows)
            den = gg[i] @ tt
            den.clamp_(min=0).sqrt_().clamp_(min=_EPS).mul_(v_norm[i, None])
            out[i].div_(den)
        return out

    def _chunks(self, n_img: int, n_txt: int, dim: int, device: torch.device) -> tuple[int, int]:
        """Chunk sizes so that ~4 float32 (ni, nt, D) intermediates fit in chunk_bytes."""
        budget = self.chunk_bytes or (16 if device.type == "cpu" else 256) * 2**20
        pairs = max(1, budget // (4 * 4 * dim))
        nt = max(1, min(n_txt, pairs))
        ni = max(1, min(n_img, pairs // nt))
        return ni, nt


@register_method(
    "amfmn",
    "AMFMN (Yuan et al. 2021): ResNet-18 + MVSA gate, bi-GRU, visual-guided text attention, "
    "dynamic-margin triplet; variants soft|fusion|similarity",
    presets={
        "small": {
            "pretrained": False, "embed_dim": 256, "word_dim": 128, "hidden_dim": 256,
            "train.image_size": 64, "train.resize": 72, "train.augment": "crop,flip",
            "train.epochs": 8, "train.batch_size": 32, "train.optimizer": "adam", "train.lr": 5e-4,
            "train.lr_step": 0,
        },
        "paper": {
            "backbone": "resnet18.tv_in1k", "pretrained": True, "embed_dim": 512, "word_dim": 300,
            "hidden_dim": 512, "gamma": 0.2, "margin_mode": "dynamic",
            "train.image_size": 256, "train.resize": 278, "train.augment": "crop,flip,rotate",
            "train.epochs": 150, "train.batch_size": 128, "train.optimizer": "adam", "train.lr": 1e-4,
            "train.lr_step": 20, "train.lr_gamma": 0.7, "train.grad_clip": 0.0,
        },
    },
    display_name=lambda c: f"AMFMN ({ {'similarity': 'sim'}.get(c.variant, c.variant)})",
)
class AMFMN(VocabularyState, RetrievalMethod):
    config_cls = AMFMNConfig
    cross_interaction = True

    @classmethod
    def required_weights(cls, config: AMFMNConfig) -> list[WeightNeed]:
        return backbone_needs(config)

    def __init__(self, config: AMFMNConfig, context: MethodContext):
        super().__init__(config, context)
        _check_config(config)
        self.vocab = Vocabulary.build(context.train_captions, min_count=config.min_word_count)
        self.image_encoder = ImageEncoder(config)
        text_cls = SkipThoughtEncoder if config.text_encoder == "skipthought" else TextEncoder
        self.text_encoder = text_cls(len(self.vocab), config.word_dim, config.hidden_dim, config.embed_dim)
        self.attention = TextAttention(config.variant, config.embed_dim, config.score_chunk_mb)
        self._prior: PriorSimilarity | None = None

    # ---- data side ------------------------------------------------------------------------------
    def image_backbone(self) -> nn.Module:
        return self.image_encoder.backbone

    def tokenizer(self) -> Tokenizer:
        return WordTokenizer(self.vocab, self.config.max_words)

    # ---- model side -----------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_encoder(text["input_ids"], text["lengths"])

    def score(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: cheap next to the encoders, and bf16 scores would tie in ranking
        with torch.autocast(image_feats.device.type, enabled=False):
            return self.attention.score(image_feats.float(), text_feats.float())

    # ---- loss -----------------------------------------------------------------------------------
    @property
    def prior(self) -> PriorSimilarity:
        """Prior text similarity of the training captions (cached on disk, built on first use)."""
        if self._prior is None:
            ctx = self.context
            self._prior = PriorSimilarity.load_or_build(ctx.train_captions, ctx.train_cap2img, ctx.cache_dir,
                                                        PriorParams())
        return self._prior

    def margins(self, batch: Batch) -> torch.Tensor:
        """(B, B) margins in score orientation: [i, j] for image i and caption j."""
        b = len(batch.image_ids)
        cfg = self.config
        if cfg.margin_mode == "fixed":
            return torch.full((b, b), cfg.gamma, device=batch.image_ids.device)
        sim = self.prior.block(batch.image_ids.cpu().numpy(), batch.caption_ids.cpu().numpy())
        return dynamic_margin(torch.from_numpy(np.ascontiguousarray(sim)).to(batch.image_ids.device),
                              cfg.gamma, cfg.beta)

    def training_loss(self, batch: Batch) -> LossOutput:
        scores = self.score(self.encode_images(batch.images), self.encode_texts(batch.text))
        margin = self.margins(batch).to(scores.dtype)
        hardest = self.config.negatives == "hardest"
        loss = hinge_triplet(scores, same_image_mask(batch.image_ids), margin, hardest)
        return LossOutput(loss, {"pos_score": scores.detach().diagonal().mean(),
                                 "margin": margin.detach().mean()})

    # ---- state ----------------------------------------------------------------------------------


def _check_config(cfg: AMFMNConfig) -> None:
    choices = {"variant": VARIANTS, "margin_mode": ("dynamic", "fixed"), "negatives": ("sum", "hardest"),
               "text_encoder": ("bigru", "skipthought")}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"amfmn: bad {key} '{getattr(cfg, key)}'; choose from: {', '.join(allowed)}")
    if cfg.embed_dim < 1 or cfg.mvsa_grid < 1 or cfg.mvsa_channels < 1:
        raise UserError("amfmn: embed_dim, mvsa_grid and mvsa_channels must be positive")
    if cfg.score_chunk_mb < 0:
        raise UserError("amfmn: score_chunk_mb must be >= 0 (0 = by device)")
