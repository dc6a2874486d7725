"""GaLR (Yuan et al., TGRS 2022): global and local information, fused (xiaoyuan1996/GaLR).

Global: AMFMN's image branch (ResNet-18 stages, MVSA salient gate on the pooled last stage),
L2-normalised; imported from rsbench.methods.amfmn, not copied.
Local: up to `n_regions` regions -> DREA (de-noised representation: near-duplicate regions dropped;
enhanced adjacency: feature affinity weighted by the neighbour's saliency) -> a 3-layer GCN
(dim -> dim -> dim/2 -> out, ReLU, A X W) -> flatten -> Linear -> D, L2-normalised.
Regions come from a torchvision Faster R-CNN when `detector_weights=FILE` is given (its box-head
features and scores, frozen, cached per image content in the method's cache dir); without it, from
the grid cells of the CNN's last map (the most activated `n_regions` cells; the run log says so).
MIDF fusion: self attention on each level, the global level guides the local one and vice versa
(MCAN SA / SGA blocks), global' = sigmoid(local) * global, local' = global + local, then a dynamic
softmax weighting of the two. Text: AMFMN's bi-GRU encoder, ReLU (the released code's skip-thought
head ends in Linear + ReLU). Score: cosine (a dual encoder). Loss: hinge triplet, margin 0.2, sum.

MR (multivariate re-ranking) is a post-hoc, transductive step over the WHOLE test similarity matrix
(each score is rebuilt from its column sum and from reverse searches), giving one matrix to rank
images -> captions and another to rank captions -> images. It is `rerank_scores()` here, off by
default (`galr`); with `rerank=mr` (`reranks` is True) the engine builds the whole test matrix and
ranks each direction on its own re-scored matrix (engine.evaluate.rank_split). The method name
`galr_mr` is GaLR with MR on, so the leaderboard shows the two as separate rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contracts import Batch, LossOutput, Tokenizer
from ..errors import UserError
from .amfmn import AMFMNConfig
from .amfmn import ImageEncoder as AMFMNImageEncoder
from .amfmn import TextEncoder as AMFMNTextEncoder
from .base import IMAGENET_MEAN, IMAGENET_STD, MethodContext, RetrievalMethod, same_image_mask
from .components.triplet import hinge_triplet
from .components.vocab import Vocabulary, VocabularyState, WordTokenizer
from .components.weights import WeightNeed, backbone_needs, local_path
from .registry import register_method


@dataclass
class GaLRConfig:
    embed_dim: int = 512
    backbone: str = "resnet18"
    pretrained: bool = True
    backbone_weights: str = ""
    word_dim: int = 300
    hidden_dim: int = 512
    n_regions: int = 20  # the authors' local matrices hold 20 objects
    local_dim: int = 20  # region representation size entering the GCN (20 in the released files)
    gcn_out: int = 20
    dedup_threshold: float = 0.9  # DREA: drop a region this similar (cosine) to a more salient kept one
    detector_weights: str = ""  # torchvision Faster R-CNN state dict; empty = grid regions of the CNN map
    detector_arch: str = "fasterrcnn_resnet50_fpn"
    detector_min_size: int = 800  # torchvision's resize of the detector input
    heads: int = 8
    ff_dim: int = 1024
    fusion_dim: int = 512
    margin: float = 0.2
    hardest: bool = False  # the authors' max_violation 0
    rerank: str = "none"  # none | mr (transductive: the engine re-ranks the whole test matrix)
    mr_k: int = 30  # MR candidates (at least 10, as released)
    mr_wp1: float = 0.3  # MR weight of the saliency term (released script's values)
    mr_wp2: float = 1.1  # MR weight of the reverse-search term
    min_word_count: int = 1
    max_words: int = 48


# ---- MR: multivariate re-ranking (transductive, whole matrix) -------------------------------------

def _mr_rows(sim: np.ndarray, k: int, wp1: float, wp2: float) -> np.ndarray:
    """Re-scored matrix for ranking each row's candidates (rows are the queries)."""
    k = min(max(10, k), sim.shape[1])
    rows = np.arange(sim.shape[0])[:, None]
    cand = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (n, k) top-k columns per row
    col_order = np.argsort(-sim, axis=0, kind="stable")
    rank_in_col = np.empty_like(col_order)
    rank_in_col[col_order, np.arange(sim.shape[1])[None, :]] = np.arange(sim.shape[0])[:, None]
    decay = np.exp(-0.05 * (np.arange(k) + 1))
    out = np.zeros(sim.shape, dtype=np.float64)
    out[rows, cand] = wp1 * sim[rows, cand] / sim.sum(0)[cand] + decay[None, :]
    reverse = np.argsort(rank_in_col[rows, cand], axis=1, kind="stable")  # reverse-search order
    out[rows, cand[rows, reverse]] += wp2 * decay[None, :]
    return out


def multivariate_rerank(sim: np.ndarray, k: int = 30, wp1: float = 0.3, wp2: float = 1.1
                        ) -> tuple[np.ndarray, np.ndarray]:
    """GaLR's MR on a full (images, captions) matrix -> (scores to rank captions per image,
    scores to rank images per caption). Entries outside a query's top-k candidates become 0."""
    sim = np.asarray(sim, dtype=np.float64)
    return _mr_rows(sim, k, wp1, wp2), _mr_rows(sim.T, k, wp1, wp2).T


# ---- local branch: regions, DREA, GCN ------------------------------------------------------------

def drea(feats: torch.Tensor, saliency: torch.Tensor, valid: torch.Tensor, threshold: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, R, F) regions, (N, R) saliency in [0, 1], (N, R) valid -> kept regions (most salient first,
    zero-padded) and the row-normalised enhanced adjacency (N, R, R). Loops over R, never over images."""
    r = feats.shape[1]
    order = saliency.masked_fill(~valid, -1.0).argsort(dim=1, descending=True, stable=True)
    feats = feats.gather(1, order[..., None].expand_as(feats))
    saliency, valid = saliency.gather(1, order), valid.gather(1, order)
    unit = F.normalize(feats, dim=-1)
    cos = unit @ unit.transpose(1, 2)
    keep = valid.clone()
    for j in range(1, r):  # j is dropped if a kept, more salient region is a near duplicate
        dup = (cos[:, j, :j] > threshold) & keep[:, :j]
        keep[:, j] &= ~dup.any(1)
    # compact: kept regions first, in saliency order
    order2 = (~keep).to(torch.int8).argsort(dim=1, stable=True)
    feats = feats.gather(1, order2[..., None].expand_as(feats)) * keep.gather(1, order2)[..., None]
    sal = saliency.gather(1, order2) * keep.gather(1, order2)
    kept = keep.gather(1, order2)
    unit = F.normalize(feats, dim=-1)
    adj = (unit @ unit.transpose(1, 2)).clamp(min=0) * (1 + sal)[:, None, :]
    eye = torch.eye(r, device=feats.device, dtype=torch.bool)[None]
    adj = torch.where(eye & kept[:, :, None], torch.ones_like(adj) * (1 + sal)[:, :, None], adj)
    adj = adj * (kept[:, :, None] & kept[:, None, :])
    return feats, adj / adj.sum(-1, keepdim=True).clamp(min=1e-8)


class GCN(nn.Module):
    """Three graph convolutions X <- ReLU(A X W) (dim -> dim -> dim/2 -> out), flatten, Linear -> D."""

    def __init__(self, dim: int, out: int, regions: int, embed_dim: int):
        super().__init__()
        self.w = nn.ModuleList([nn.Linear(dim, dim, bias=False), nn.Linear(dim, max(1, dim // 2), bias=False),
                                nn.Linear(max(1, dim // 2), out, bias=False)])
        self.out = nn.Linear(out * regions, embed_dim)

    def forward(self, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for w in self.w:
            x = F.relu(w(adj @ x))
        return F.normalize(self.out(x.flatten(1)), dim=-1)


# ---- MIDF fusion -----------------------------------------------------------------------------------

class Block(nn.Module):
    """MCAN block: attention (self, or guided by `y`) + residual LayerNorm, then FFN + residual LayerNorm."""

    def __init__(self, dim: int, heads: int, ff: int, guided: bool):
        super().__init__()
        self.self_att = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
        self.guide = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True) if guided else None
        self.ffn = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(0.1), nn.Linear(ff, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3 if guided else 2)])
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norms[0](x + self.drop(self.self_att(x, x, x, need_weights=False)[0]))
        if self.guide is not None:
            x = self.norms[1](x + self.drop(self.guide(x, y, y, need_weights=False)[0]))
        return self.norms[-1](x + self.drop(self.ffn(x)))


class MIDF(nn.Module):
    """Multi-level information dynamic fusion of the global and local vectors (N, D) -> (N, D)."""

    def __init__(self, dim: int, heads: int, ff: int, fusion_dim: int):
        super().__init__()
        self.g2g, self.l2l = Block(dim, heads, ff, False), Block(dim, heads, ff, False)
        self.g2l, self.l2g = Block(dim, heads, ff, True), Block(dim, heads, ff, True)
        self.weights = nn.Sequential(nn.Linear(dim, fusion_dim), nn.Sigmoid(), nn.Dropout(0.2),
                                     nn.Linear(fusion_dim, 2))

    def forward(self, g: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        g, loc = self.g2g(g[:, None]), self.l2l(loc[:, None])
        loc = self.g2l(loc, g)  # local correction, guided by the global level
        g = self.l2g(g, loc)  # global supplement, guided by the corrected local level
        g, loc = g[:, 0], loc[:, 0]
        g, loc = torch.sigmoid(loc) * g, g + loc
        w = torch.softmax(self.weights(g + loc), dim=-1)
        return w[:, :1] * g + w[:, 1:] * loc


# ---- regions: detector (cached) or grid -------------------------------------------------------------

class DetectorRegions(nn.Module):
    """Frozen torchvision Faster R-CNN: box-head features and scores of the top regions, cached per image."""

    def __init__(self, cfg: GaLRConfig, cache_dir: Path | None):
        super().__init__()
        from torchvision.models import detection

        from .components.backbones import load_state_dict_file

        sd = load_state_dict_file(cfg.detector_weights)
        key = "roi_heads.box_predictor.cls_score.weight"
        if key not in sd or not hasattr(detection, cfg.detector_arch):
            raise UserError(f"{cfg.detector_weights}: not a torchvision Faster R-CNN state dict for "
                            f"detector_arch '{cfg.detector_arch}' (no {key})")
        det = getattr(detection, cfg.detector_arch)(weights=None, weights_backbone=None, num_classes=sd[key].shape[0],
                                                    min_size=cfg.detector_min_size, max_size=max(1333, cfg.detector_min_size))
        missing, _unexpected = det.load_state_dict(sd, strict=False)
        if missing:
            raise UserError(f"{cfg.detector_weights}: {len(missing)} detector tensors missing (e.g. {missing[0]}); "
                            f"wrong detector_arch '{cfg.detector_arch}'?")
        self.det = [det.eval().requires_grad_(False)]  # a list: not a submodule, so not in our state dict
        self.n = cfg.n_regions
        self.feat_dim = det.roi_heads.box_head.fc7.out_features if hasattr(det.roi_heads.box_head, "fc7") else 1024
        digest = hashlib.sha1(Path(cfg.detector_weights).expanduser().read_bytes()).hexdigest()[:16]
        self.cache = Path(cache_dir) / "galr_regions" / f"{cfg.detector_arch}-{digest}-{cfg.detector_min_size}" \
            if cache_dir else None

    @torch.no_grad()
    def detect(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One [0, 1] image (3, H, W) -> box features (k, F) and scores (k,), k <= n_regions."""
        det = self.det[0].to(image.device)
        il, _ = det.transform([image])
        feats = det.backbone(il.tensors)
        proposals, _ = det.rpn(il, feats)
        dets, _ = det.roi_heads(feats, proposals, il.image_sizes)
        boxes, scores = dets[0]["boxes"][: self.n], dets[0]["scores"][: self.n]
        rep = det.roi_heads.box_head(det.roi_heads.box_roi_pool(feats, [boxes], il.image_sizes))
        return rep.float().cpu().numpy(), scores.float().cpu().numpy()

    def forward(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [0, 1] -> feats (N, R, F), saliency (N, R), valid (N, R)."""
        from .. import io as rio

        n = len(images01)
        feats = torch.zeros(n, self.n, self.feat_dim)
        sal, valid = torch.zeros(n, self.n), torch.zeros(n, self.n, dtype=torch.bool)
        for i, img in enumerate(images01):
            q = (img * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            path = self.cache / f"{hashlib.sha1(q.tobytes()).hexdigest()}.npz" if self.cache else None
            if path is not None and path.is_file():
                with np.load(path) as z:
                    rep, scores = z["feats"], z["scores"]
            else:
                rep, scores = self.detect(torch.from_numpy(q).to(images01.device).float() / 255)
                if path is not None:
                    rio.write_with(path, lambda f, r=rep, s=scores: np.savez(f, feats=r, scores=s))
            k = len(scores)
            feats[i, :k], sal[i, :k], valid[i, :k] = torch.from_numpy(rep), torch.from_numpy(scores), True
        dev = images01.device
        return feats.to(dev), sal.to(dev), valid.to(dev)


def grid_regions(fmap: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CNN map (N, C, h, w) -> the n most activated cells (by L2 norm) as regions, saliency = norm / max."""
    cells = fmap.flatten(2).transpose(1, 2)  # (N, h*w, C)
    norm = cells.norm(dim=-1)
    k = min(n, cells.shape[1])
    top = norm.topk(k, dim=1).indices
    feats = cells.gather(1, top[..., None].expand(-1, -1, cells.shape[-1]))
    sal = norm.gather(1, top) / norm.max(1, keepdim=True).values.clamp(min=1e-8)
    if k < n:
        pad = n - k
        feats, sal = F.pad(feats, (0, 0, 0, pad)), F.pad(sal, (0, pad))
    valid = torch.arange(n, device=fmap.device)[None].expand(len(fmap), -1) < k
    return feats, sal, valid


_PRESETS = {
    "small": {"pretrained": False, "embed_dim": 128, "word_dim": 64, "hidden_dim": 128, "heads": 4,
              "ff_dim": 256, "fusion_dim": 128, "n_regions": 8, "train.image_size": 64, "train.epochs": 5,
              "train.batch_size": 32, "train.lr": 5e-4, "train.augment": "flip"},
    "paper": {"pretrained": True, "embed_dim": 512, "word_dim": 300, "hidden_dim": 512,
              "train.image_size": 256, "train.resize": 278, "train.augment": "crop,rotate",
              "train.epochs": 20, "train.batch_size": 100, "train.optimizer": "adam", "train.lr": 2e-4,
              "train.lr_step": 20, "train.lr_gamma": 0.7, "train.grad_clip": 0.0},
}


@register_method(
    "galr_mr",
    "GaLR with its MR re-ranking (rerank=mr): the whole test matrix is re-scored, one matrix per direction "
    "(transductive; a separate leaderboard row from galr)",
    presets={name: {**keys, "rerank": "mr"} for name, keys in _PRESETS.items()},
    display_name="GaLR (with rerank)",
)
@register_method(
    "galr",
    "GaLR (Yuan et al. 2022): AMFMN global branch + DREA/GCN local branch (detector regions, or CNN grid "
    "cells without detector weights), MIDF fusion, bi-GRU; without MR re-ranking (galr_mr has it)",
    presets=_PRESETS,
    display_name="GaLR",
)
class GaLR(VocabularyState, RetrievalMethod):
    config_cls = GaLRConfig

    @classmethod
    def required_weights(cls, config: GaLRConfig) -> list[WeightNeed]:
        detector = [local_path(config.detector_weights, "detector_weights")] if config.detector_weights else []
        return backbone_needs(config) + detector

    def __init__(self, config: GaLRConfig, context: MethodContext):
        super().__init__(config, context)
        _check_config(config)
        c = config
        self.vocab = Vocabulary.build(context.train_captions, min_count=c.min_word_count)
        self.global_encoder = AMFMNImageEncoder(AMFMNConfig(embed_dim=c.embed_dim, backbone=c.backbone,
                                                            pretrained=c.pretrained, backbone_weights=c.backbone_weights))
        self.detector = DetectorRegions(c, context.cache_dir) if c.detector_weights else None
        feat_dim = self.detector.feat_dim if self.detector else self.global_encoder.backbone.feature_info.channels()[-1]
        self.region_proj = nn.Linear(feat_dim, c.local_dim)
        self.gcn = GCN(c.local_dim, c.gcn_out, c.n_regions, c.embed_dim)
        self.fusion = MIDF(c.embed_dim, c.heads, c.ff_dim, c.fusion_dim)
        self.text_encoder = AMFMNTextEncoder(len(self.vocab), c.word_dim, c.hidden_dim, c.embed_dim)
        self.region_source = "detector" if self.detector else "grid cells of the CNN's last map (no detector_weights)"

    def image_backbone(self) -> nn.Module:
        return self.global_encoder.backbone

    def tokenizer(self) -> Tokenizer:
        return WordTokenizer(self.vocab, self.config.max_words)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        enc = self.global_encoder
        f1, f2, f3, f4 = enc.backbone(images)
        g = F.normalize(enc.fc(f4.mean((2, 3))) * enc.mvsa(enc._up_cat(f1, f2), enc._up_cat(f3, f4)), dim=-1)
        if self.detector is not None:
            mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
            std = images.new_tensor(IMAGENET_STD)[:, None, None]
            feats, sal, valid = self.detector((images.float() * std + mean).clamp(0, 1))
        else:
            feats, sal, valid = grid_regions(f4, self.config.n_regions)
        x, adj = drea(self.region_proj(feats.to(g.dtype)), sal.to(g.dtype), valid, self.config.dedup_threshold)
        return F.normalize(self.fusion(g, self.gcn(adj, x)), dim=-1)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(F.relu(self.text_encoder(text["input_ids"], text["lengths"])), dim=-1)

    @property
    def reranks(self) -> bool:
        """True when evaluation must hand the whole score matrix to rerank_scores (rerank=mr)."""
        return self.config.rerank == "mr"

    def rerank_scores(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """MR on the full test matrix: (matrix to rank captions per image, matrix to rank images per caption)."""
        c = self.config
        return multivariate_rerank(scores, c.mr_k, c.mr_wp1, c.mr_wp2)

    def training_loss(self, batch: Batch) -> LossOutput:
        scores = self.encode_images(batch.images).float() @ self.encode_texts(batch.text).float().T
        loss = hinge_triplet(scores, same_image_mask(batch.image_ids), self.config.margin, self.config.hardest)
        return LossOutput(loss, {"triplet": loss.detach()})

    def extra_state_json(self) -> dict[str, Any]:
        return {**super().extra_state_json(), "region_source": self.region_source}


def _check_config(cfg: GaLRConfig) -> None:
    if cfg.rerank not in ("none", "mr"):
        raise UserError(f"galr: bad rerank '{cfg.rerank}'; choose from: none, mr")
    if cfg.n_regions < 1 or cfg.local_dim < 2 or cfg.gcn_out < 1:
        raise UserError("galr: n_regions, gcn_out must be >= 1 and local_dim >= 2")
    if cfg.embed_dim % cfg.heads:
        raise UserError(f"galr: embed_dim ({cfg.embed_dim}) must be divisible by heads ({cfg.heads})")
