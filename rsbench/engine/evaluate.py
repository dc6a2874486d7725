"""Evaluation of one split: encode every image and caption once, score blockwise, rank.

Used for validation (checkpoint selection) and, once, for test. A model whose scores are all tied
or whose selected checkpoint ranks no better than chance is a failed run, not a result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError
from ..io import kill_point
from .device import Precision, auto_workers, make_loader, use_channels_last
from .progress import Bar

if TYPE_CHECKING:
    from ..config.schema import RunConfig
    from ..contracts import Split
    from ..evaluation.topk import TopK
    from ..methods.base import RetrievalMethod


class TrainingCollapsed(UserError):
    """Training ended finite but meaningless (every score tied, or val mR at or below chance)."""


@torch.inference_mode()
def encode_split(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
                 precision: Precision, progress: bool = False, image_cache: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every image and every caption of a split once, in large batches."""
    from ..datasets.torchdata import ImageDataset, ImageNormalizer, build_transform

    method.eval()
    normalize = ImageNormalizer(*method.image_mean_std(), channels_last=use_channels_last(method, cfg.train, device))
    t = cfg.train
    transform, read = build_transform(t.image_size, t.resize, t.augments, train=False), None
    if (features := method.image_input()) is not None:  # precomputed features instead of pixels
        from ..datasets.features import feature_loading

        transform, read, normalize = feature_loading(features)
    ds = ImageDataset(split, transform, image_loader=read, cache=image_cache)
    workers = auto_workers(cfg.train.num_workers, device)
    loader = make_loader(ds, cfg.train.eval_batch_size, False, None, workers, device, 0)
    feats = []
    for images, _ in Bar(loader, f"encode {split.name} images", progress):
        images = normalize(images.to(device, non_blocking=True))
        with precision.autocast(device):
            feats.append(method.encode_images(images).float())
    return torch.cat(feats), encode_captions(method, split, cfg, device, precision, progress)


def length_order(captions: list[str]) -> np.ndarray:
    """Caption indices shortest first (stable), so each batch pads to about its own length: RSITMD's test
    captions padded to a batch's longest carry 2.05x their real tokens in index order, 1.12x sorted."""
    from ..text import words

    return np.argsort(np.array([len(words(c)) for c in captions], dtype=np.int64), kind="stable")


def encode_captions(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
                    precision: Precision, progress: bool = False) -> torch.Tensor:
    """Encode every caption once in batches of similar length (sort, encode, unsort): same embeddings."""
    tok, bs = method.tokenizer(), cfg.train.eval_batch_size
    order = length_order(list(split.captions))
    parts = []
    for i in Bar(range(0, split.n_captions, bs), f"encode {split.name} captions", progress):
        batch = tok([split.captions[j] for j in order[i:i + bs]])
        text = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with precision.autocast(device):
            parts.append(method.encode_texts(text).float())
    txt = torch.cat(parts)
    out = torch.empty_like(txt)
    out[torch.as_tensor(order, device=txt.device)] = txt
    return out


@dataclass
class SplitEvaluation:
    """What evaluating one split gives: its metrics, per-query ranks and (test only) the top-K lists."""

    metrics: dict[str, Any]
    i2t: np.ndarray
    t2i: np.ndarray
    topk: TopK | None = None

    def __iter__(self) -> Iterator[Any]:
        """Unpacks as (metrics, i2t, t2i), the triple evaluate returned before the top-K lists existed."""
        return iter((self.metrics, self.i2t, self.t2i))


@torch.inference_mode()
def rank_split(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
               precision: Precision, progress: bool = False, image_cache: Any = None, topk: bool = False
               ) -> tuple[np.ndarray, np.ndarray, TopK | None]:
    """Per-query 1-based ranks for both directions (and the top-K lists when `topk`), scoring blockwise.

    Memory stays bounded (one block of scores at a time), except for a method that re-ranks
    transductively (`method.reranks`, e.g. GaLR with rerank=mr): its `rerank_scores` needs the whole
    matrix and returns one matrix per direction, each ranked on its own.
    """
    from ..evaluation.metrics import compute_ranks_blockwise
    from ..evaluation.topk import topk_blockwise

    img, txt = encode_split(method, split, cfg, device, precision, progress, image_cache)
    spread: list[torch.Tensor] = []  # per block max - min, summed at the end (one host sync per split)

    def score_block(i: slice, j: slice) -> torch.Tensor:
        # float32 scores whatever precision the encoders ran in: bf16 keeps 8 mantissa bits, so scores
        # would tie by the hundred and the tie rule, not the model, would order them
        with torch.autocast(device.type, enabled=False):
            s = method.score(img[i].float(), txt[j].float()).float()
        spread.append((s.amax() - s.amin()).detach())
        return s

    block_i, block_c = (1024 if not method.cross_interaction else 256), 8192
    if getattr(method, "reranks", False):
        i2t, t2i, top = _rank_reranked(method, score_block, split, block_i, block_c, topk)
    else:
        i2t, t2i = compute_ranks_blockwise(score_block, split.n_images, split.n_captions, split.cap2img,
                                           block_images=block_i, block_captions=block_c)
        top = topk_blockwise(score_block, split.n_images, split.n_captions, block_images=block_i,
                             block_captions=block_c) if topk else None
    if split.n_images * split.n_captions > 1 and spread and float(torch.stack(spread).max()) == 0.0:
        raise TrainingCollapsed(f"the model gives every image-caption pair of the {split.name} split the same "
                                "score (collapsed: diverging weights or a dead embedding); try a lower train.lr")
    return i2t, t2i, top


def _rank_reranked(method: RetrievalMethod, score_block: Any, split: Split, block_i: int, block_c: int,
                   topk: bool) -> tuple[np.ndarray, np.ndarray, TopK | None]:
    """Ranks (and top-K) from a transductive re-ranking: the full matrix, then one matrix per direction."""
    from ..evaluation.metrics import compute_ranks
    from ..evaluation.topk import TopK, topk_from_scores

    full = np.empty((split.n_images, split.n_captions), dtype=np.float32)
    for i0 in range(0, split.n_images, block_i):
        for c0 in range(0, split.n_captions, block_c):
            i, c = slice(i0, i0 + block_i), slice(c0, c0 + block_c)
            full[i, c] = score_block(i, c).cpu().numpy()
    if np.isnan(full).any():
        raise ValueError("NaN scores before re-ranking")
    by_image, by_caption = method.rerank_scores(full)  # (rank captions per image, rank images per caption)
    i2t = compute_ranks(by_image, split.cap2img)[0]
    t2i = compute_ranks(by_caption, split.cap2img)[1]
    if not topk:
        return i2t, t2i, None
    a, b = topk_from_scores(by_image), topk_from_scores(by_caption)
    return i2t, t2i, TopK(a.i2t_idx, a.i2t_score, b.t2i_idx, b.t2i_score)


def evaluate(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
             precision: Precision, progress: bool = False, image_cache: Any = None, topk: bool = False
             ) -> SplitEvaluation:
    """Metrics, ranks and (with `topk`, for the test split) the top-K lists of one split; NaN scores and
    out-of-memory become one-line errors with a fix."""
    from ..evaluation.metrics import metrics_from_ranks

    try:
        i2t, t2i, top = rank_split(method, split, cfg, device, precision, progress, image_cache, topk)
    except ValueError as e:
        if not str(e).startswith("NaN scores"):
            raise
        raise UserError(f"the model gives NaN scores on the {split.name} split ({e}); non-finite weights or "
                        "an fp16 overflow (try --precision bf16 or fp32)") from None
    except torch.OutOfMemoryError:
        bs = cfg.train.eval_batch_size
        raise UserError(f"out of memory on {device} while evaluating the {split.name} split with eval batch "
                        f"size {bs}; try --set train.eval_batch_size={max(1, bs // 2)}") from None
    kill_point(f"eval:{split.name}")  # test-only crash hook
    return SplitEvaluation(metrics_from_ranks(i2t, t2i), i2t, t2i, top)


# Below this many val images, a weak but real model lands under chance by noise alone (6 images:
# chance mR is 61, and 2 epochs of a tiny test model give 56), so only tied scores count there.
COLLAPSE_MIN_VAL_IMAGES = 20


def check_not_collapsed(val: dict[str, Any] | None, val_split: Split, lr: float) -> None:
    """TrainingCollapsed when the selected checkpoint's val mR is at or below chance: a trained model
    that ranks no better than a random one is a failed run, not a result (e.g. a finite divergence)."""
    from ..evaluation.metrics import chance_metrics

    mr = (val or {}).get("mR")
    if not isinstance(mr, (int, float)) or val_split.n_images < COLLAPSE_MIN_VAL_IMAGES:
        return
    chance = float(chance_metrics(np.asarray(val_split.cap2img))["chance_mR"])
    if mr <= chance:
        raise TrainingCollapsed(f"training collapsed: the selected checkpoint's val mR {mr:.2f} is at or below "
                                f"chance ({chance:.2f}); try a lower train.lr (now {lr:g}) or more epochs")


def subset_split(split: Split, keep: np.ndarray) -> Split:
    """The split without the images where `keep` is False and without their captions (renumbered)."""
    from dataclasses import replace

    c2i = np.asarray(split.cap2img, dtype=np.int64)
    caps = np.flatnonzero(keep[c2i])
    idx = np.flatnonzero(keep)
    classes = [split.image_classes[i] for i in idx] if split.image_classes else []
    return replace(split, image_paths=[split.image_paths[i] for i in idx],
                   image_names=[split.image_names[i] for i in idx], captions=[split.captions[c] for c in caps],
                   cap2img=(np.cumsum(keep) - 1)[c2i[caps]].astype(np.int64), image_classes=classes)


def evaluate_excluded(method: RetrievalMethod, split: Split, leaked: set[str], ranks: tuple[np.ndarray, np.ndarray],
                      cfg: RunConfig, device: torch.device, precision: Precision, progress: bool = False,
                      image_cache: Any = None) -> dict[str, Any]:
    """eval.exclude: the split's metrics without the leaked images and their captions (written beside the
    standard ones). Scores are per pair, so ranking the smaller split gives the sub-matrix's ranks; a
    transductive re-ranker (galr rerank=mr) re-ranks within the smaller set. `ranks`: the full split's,
    reused when no image of this split leaked."""
    from ..evaluation.exclusion import keep_mask
    from ..evaluation.metrics import chance_metrics, metrics_from_ranks

    keep = keep_mask(split.image_names, leaked)
    dropped = [n for n, k in zip(split.image_names, keep.tolist()) if not k]
    info = {"excluded_images": dropped, "n_excluded": len(dropped)}
    if not keep.any():
        return {**info, "n_images": 0, "n_captions": 0, "note": f"every {split.name} image is excluded"}
    sub = subset_split(split, keep) if dropped else split
    i2t, t2i = ranks
    if dropped:
        i2t, t2i, _ = rank_split(method, sub, cfg, device, precision, progress, image_cache)
    out = metrics_from_ranks(i2t, t2i)
    out["chance_mR"] = float(chance_metrics(sub.cap2img)["chance_mR"])
    return {**out, **info, "split": split.name, "n_images": sub.n_images, "n_captions": sub.n_captions}
