"""SCAN (Lee et al., ECCV 2018): stacked cross attention between image regions and words.

Regions: the RS papers feed SCAN a CNN's feature map instead of detector regions; so do we by
default (stage `feature_stage` of a timm backbone, each cell one region), projected to D and
L2-normalised. `region_features=DIR` instead reads precomputed region features, as the original
SCAN does (bottom-up-attention detector features, one `<image stem>.npy` of shape (R, region_dim)
per image, e.g. 36 x 2048): no CNN, a linear layer to D (Xavier-uniform init, zero bias) and L2
normalisation, the authors' precomputed-feature image encoder. Words: embeddings -> (bi-)GRU, per word the mean of both directions, L2-normalised.

Cross attention, with s_rl = cosine of region r and word l:
- t2i (words attend to regions): s' = l2norm over words of LeakyReLU_0.1(s) (the authors'
  "clipped_l2norm"); alpha_rl = softmax over regions of lambda_1 * s'; attended a_l = sum_r alpha_rl v_r;
  R_l = cos(a_l, e_l); pooled over the caption's real words.
- i2t (regions attend to words): the same with the roles swapped (normalise over regions,
  softmax over real words, pool over regions).
- pooling: LogSumExp, (1/lambda_2) log sum exp(lambda_2 R), or the average.
Loss: bidirectional hinge triplet on the hardest in-batch negatives (VSE++ max violation).

Scoring is blockwise over (image, caption) pairs, vectorised within a block: cos(a_l, e_l) needs
a_l . e_l = sum_r alpha_rl s_rl and |a_l|^2 = alpha_l^T G alpha_l with G the region Gram matrix,
so no (pairs x words x D) tensor is built; each block's (ni, nt, R, L) temporaries fit in
`score_chunk_mb`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..contracts import FeatureInput
from ..errors import UserError
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer, same_image_mask
from .components.backbones import create_backbone
from .components.triplet import hinge_triplet
from .components.vocab import Vocabulary, VocabularyState, WordTokenizer
from .components.weights import WeightNeed, backbone_needs
from .registry import register_method

_EPS = 1e-8
# the authors' recommended temperatures per direction (README of kuanghuei/SCAN, Flickr30K rows)
_LAMBDA_SOFTMAX = {"t2i": 9.0, "i2t": 4.0}
_LAMBDA_LSE = {"t2i": 6.0, "i2t": 5.0}


@dataclass
class SCANConfig:
    direction: str = "t2i"  # t2i (words attend to regions) | i2t (regions attend to words)
    pooling: str = "lse"  # lse (LogSumExp) | avg
    lambda_softmax: float = 0.0  # lambda_1, attention temperature; 0 = the authors' value (t2i 9, i2t 4)
    lambda_lse: float = 0.0  # lambda_2, LogSumExp sharpness; 0 = the authors' value (t2i 6, i2t 5)
    backbone: str = "resnet152"  # timm CNN whose feature map gives the regions
    pretrained: bool = True
    backbone_weights: str = ""
    feature_stage: int = 4  # which stage's map becomes the regions (4 = last, 7x7 at 224)
    region_features: str = ""  # folder of precomputed regions, <image stem>.npy (R, region_dim); "" = CNN grid
    region_dim: int = 2048  # feature size of those files (bottom-up attention: 2048)
    embed_dim: int = 1024
    word_dim: int = 300
    bi_gru: bool = True
    margin: float = 0.2
    hardest: bool = True  # max violation, as in the authors' runs
    hardest_after_steps: int = 0  # sum over negatives first (from random init; see VSE++)
    min_word_count: int = 1
    max_words: int = 48
    score_chunk_mb: int = 0  # memory bound of one scoring chunk; 0 = 32 on CPU, 512 on GPU


def clipped_l2norm(s: torch.Tensor, dim: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """LeakyReLU(0.1) then L2 normalisation along `dim`; masked entries are zero and do not count."""
    s = F.leaky_relu(s, 0.1)
    if mask is not None:
        s = s.masked_fill(~mask, 0.0)
    return s / (s.pow(2).sum(dim, keepdim=True).sqrt() + _EPS)


def pool(r: torch.Tensor, mask: torch.Tensor, how: str, lam: float) -> torch.Tensor:
    """Pool relevances R (..., K) over the real entries (mask): LogSumExp or average."""
    if how == "lse":
        return torch.logsumexp((lam * r).masked_fill(~mask, float("-inf")), dim=-1) / lam
    m = mask.to(r.dtype)
    return (r * m).sum(-1) / m.sum(-1).clamp(min=1)


def xattn_block(v: torch.Tensor, e: torch.Tensor, wmask: torch.Tensor, direction: str, pooling: str,
                lam1: float, lam2: float) -> torch.Tensor:
    """Scores of every (image, caption) pair of a block: v (ni, R, D), e (nt, L, D) L2-normalised,
    wmask (nt, L) True on real words -> (ni, nt). Vectorised; temporaries are (ni, nt, R, L)."""
    s = torch.einsum("ird,tld->itrl", v, e)
    m = wmask[None, :, None, :]  # (1, nt, 1, L)
    if direction == "t2i":
        alpha = torch.softmax(lam1 * clipped_l2norm(s, 3, m), dim=2)  # over regions
        num = (alpha * s).sum(2)  # a_l . e_l, (ni, nt, L)
        gram = torch.einsum("ird,isd->irs", v, v)
        sq = torch.einsum("itrl,irs,itsl->itl", alpha, gram, alpha)  # |a_l|^2
        rel = num / (sq.clamp(min=0).sqrt() * e.norm(dim=-1)[None]).clamp(min=_EPS)
        return pool(rel, wmask[None].expand_as(rel), pooling, lam2)
    logits = (lam1 * clipped_l2norm(s, 2)).masked_fill(~m, float("-inf"))
    alpha = torch.softmax(logits, dim=3)  # over real words
    num = (alpha * s).sum(3)  # a_r . v_r, (ni, nt, R)
    gram = torch.einsum("tld,tkd->tlk", e, e)
    sq = torch.einsum("itrl,tlk,itrk->itr", alpha, gram, alpha)
    rel = num / (sq.clamp(min=0).sqrt() * v.norm(dim=-1)[:, None]).clamp(min=_EPS)
    return pool(rel, torch.ones_like(rel, dtype=torch.bool), pooling, lam2)


def chunk_pairs(budget_bytes: int, n_img: int, n_txt: int, regions: int, words: int) -> tuple[int, int]:
    """(images, captions) per scoring chunk so that ~6 float32 (ni, nt, R, L) temporaries fit the budget."""
    pairs = max(1, budget_bytes // (6 * 4 * max(1, regions * words)))
    nt = max(1, min(n_txt, pairs))
    return max(1, min(n_img, pairs // nt)), nt


def blockwise_scores(v: torch.Tensor, e: torch.Tensor, wmask: torch.Tensor, direction: str, pooling: str,
                     lam1: float, lam2: float, chunk: tuple[int, int]) -> torch.Tensor:
    """(Ni, Nt) scores of every pair, xattn_block over chunks of (ni, nt) = `chunk` pairs (bounded memory)."""
    out = v.new_empty(len(v), len(e))
    ni, nt = chunk
    for i0 in range(0, len(v), ni):
        for j0 in range(0, len(e), nt):
            i, j = slice(i0, i0 + ni), slice(j0, j0 + nt)
            out[i, j] = xattn_block(v[i], e[j], wmask[j], direction, pooling, lam1, lam2)
    return out


class RegionEncoder(nn.Module):
    """CNN feature map -> regions (N, h*w, D): each cell of the map projected to D, L2-normalised.
    With precomputed regions (cfg.region_features) there is no CNN: (N, R, region_dim) -> (N, R, D)."""

    def __init__(self, cfg: SCANConfig):
        super().__init__()
        self.cnn: nn.Module | None = None
        if cfg.region_features:
            self.fc = nn.Linear(cfg.region_dim, cfg.embed_dim)
            nn.init.xavier_uniform_(self.fc.weight)  # the authors' init of the precomputed-feature encoder
            nn.init.zeros_(self.fc.bias)
            return
        self.cnn = create_backbone(cfg.backbone, pretrained=cfg.pretrained, weights=cfg.backbone_weights or None,
                                   features_only=True, out_indices=(cfg.feature_stage,))
        self.fc = nn.Linear(self.cnn.feature_info.channels()[-1], cfg.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cnn is None:
            return F.normalize(self.fc(images), dim=-1)
        fmap = self.cnn(images)[-1]
        return F.normalize(self.fc(fmap.flatten(2).transpose(1, 2)), dim=-1)


class WordEncoder(nn.Module):
    """Word embeddings -> GRU; per-word features (N, L, D), L2-normalised, padded steps zero."""

    def __init__(self, vocab_size: int, cfg: SCANConfig):
        super().__init__()
        self.bi = cfg.bi_gru
        self.embed = nn.Embedding(vocab_size, cfg.word_dim, padding_idx=0)
        self.gru = nn.GRU(cfg.word_dim, cfg.embed_dim, batch_first=True, bidirectional=cfg.bi_gru)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.clamp(min=1)
        packed = pack_padded_sequence(self.embed(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])
        if self.bi:
            half = out.shape[-1] // 2
            out = (out[..., :half] + out[..., half:]) / 2
        return F.normalize(out, dim=-1)


@register_method(
    "scan",
    "SCAN (Lee et al. 2018): stacked cross attention over CNN-grid regions and words (direction=t2i|i2t, "
    "pooling=lse|avg), hardest-negative triplet",
    presets={
        "small": {"backbone": "resnet18", "pretrained": False, "feature_stage": 3, "embed_dim": 128,
                  "word_dim": 64, "hardest_after_steps": 150, "train.image_size": 64, "train.epochs": 5,
                  "train.batch_size": 32, "train.lr": 5e-4, "train.augment": "flip"},
        "paper": {"backbone": "resnet152", "pretrained": True, "feature_stage": 4, "embed_dim": 1024,
                  "word_dim": 300, "train.image_size": 224, "train.resize": 256, "train.augment": "crop,flip",
                  "train.epochs": 30, "train.batch_size": 128, "train.optimizer": "adam", "train.lr": 2e-4,
                  "train.lr_step": 15, "train.lr_gamma": 0.1, "train.grad_clip": 2.0},
    },
    display_name="SCAN",
)
class SCAN(VocabularyState, RetrievalMethod):
    config_cls = SCANConfig
    cross_interaction = True

    @classmethod
    def required_weights(cls, config: SCANConfig) -> list[WeightNeed]:
        return [] if config.region_features else backbone_needs(config)  # precomputed regions: no CNN

    def __init__(self, config: SCANConfig, context: MethodContext):
        super().__init__(config, context)
        _check_config(config)
        self.vocab = Vocabulary.build(context.train_captions, min_count=config.min_word_count)
        self.region_encoder = RegionEncoder(config)
        self.word_encoder = WordEncoder(len(self.vocab), config)
        self.lam1 = config.lambda_softmax or _LAMBDA_SOFTMAX[config.direction]
        self.lam2 = config.lambda_lse or _LAMBDA_LSE[config.direction]
        self.chunk_bytes = config.score_chunk_mb * 2**20
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

    def image_backbone(self) -> nn.Module:
        if self.region_encoder.cnn is None:
            raise UserError("scan with region_features has no image backbone (it reads precomputed regions)")
        return self.region_encoder.cnn

    def image_input(self) -> FeatureInput | None:
        """Precomputed regions when region_features is set (the engine checks and loads the files)."""
        c = self.config
        if not c.region_features:
            return None
        return FeatureInput(Path(c.region_features), c.region_dim, "scan region_features")

    def tokenizer(self) -> Tokenizer:
        return WordTokenizer(self.vocab, self.config.max_words)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.region_encoder(images)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, L, D + 1): word features with the real-word mask appended as the last channel, so that
        captions of different lengths travel as one tensor through the runner's blocks."""
        words = self.word_encoder(text["input_ids"], text["lengths"])
        steps = torch.arange(words.shape[1], device=words.device)
        mask = (steps[None] < text["lengths"].to(words.device).clamp(min=1)[:, None]).to(words.dtype)
        return torch.cat([words, mask[..., None]], dim=-1)

    def score(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """(Ni, R, D) x (Nt, L, D+1) -> (Ni, Nt), in chunks of pairs with bounded memory."""
        with torch.autocast(image_feats.device.type, enabled=False):
            v = image_feats.float()
            e, wmask = text_feats[..., :-1].float(), text_feats[..., -1] > 0.5
            chunk = self._chunks(v.shape[0], e.shape[0], v.shape[1], e.shape[1], v.device)
            return blockwise_scores(v, e, wmask, self.config.direction, self.config.pooling, self.lam1, self.lam2,
                                    chunk)

    def _chunks(self, n_img: int, n_txt: int, regions: int, words: int, device: torch.device) -> tuple[int, int]:
        budget = self.chunk_bytes or (32 if device.type == "cpu" else 512) * 2**20
        return chunk_pairs(budget, n_img, n_txt, regions, words)

    def training_loss(self, batch: Batch) -> LossOutput:
        if torch.is_grad_enabled():  # the chunked score writes into a buffer: build the graph in one block
            v, t = self.encode_images(batch.images), self.encode_texts(batch.text)
            with torch.autocast(v.device.type, enabled=False):
                scores = xattn_block(v.float(), t[..., :-1].float(), t[..., -1] > 0.5, self.config.direction,
                                     self.config.pooling, self.lam1, self.lam2)
        else:
            scores = self.score(self.encode_images(batch.images), self.encode_texts(batch.text))
        hardest = self.config.hardest and int(self.train_steps) >= self.config.hardest_after_steps
        if self.training:
            self.train_steps += 1
        loss = hinge_triplet(scores, same_image_mask(batch.image_ids), self.config.margin, hardest)
        return LossOutput(loss, {"triplet": loss.detach(), "hardest": torch.tensor(float(hardest))})



def _check_config(cfg: SCANConfig) -> None:
    for key, allowed in {"direction": ("t2i", "i2t"), "pooling": ("lse", "avg")}.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"scan: bad {key} '{getattr(cfg, key)}'; choose from: {', '.join(allowed)}")
    if cfg.lambda_softmax < 0 or cfg.lambda_lse < 0:
        raise UserError("scan: lambda_softmax and lambda_lse must be >= 0 (0 = the authors' value)")
    if not 1 <= cfg.feature_stage <= 4:
        raise UserError(f"scan: feature_stage must be 1..4, got {cfg.feature_stage}")
    if cfg.region_features and not Path(cfg.region_features).is_dir():
        raise UserError(f"scan: region_features '{cfg.region_features}' is not a folder (one <image stem>.npy "
                        "per image)")
    if cfg.region_dim < 1:
        raise UserError(f"scan: region_dim must be >= 1, got {cfg.region_dim}")
    if cfg.score_chunk_mb < 0:
        raise UserError("scan: score_chunk_mb must be >= 0 (0 = by device)")
