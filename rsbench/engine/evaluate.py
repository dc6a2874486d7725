"""Evaluation of one split: encode every image and caption once, score blockwise, rank.

Used for validation (checkpoint selection) and, once, for test. A model whose scores are all tied
or whose selected checkpoint ranks no better than chance is a failed run, not a result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .device import Precision, auto_workers, make_loader, use_channels_last
from ..errors import UserError
from ..io import kill_point

if TYPE_CHECKING:
    from ..config.schema import RunConfig
    from ..contracts import Split
    from ..methods.base import RetrievalMethod


class TrainingCollapsed(UserError):
    """Training ended finite but meaningless (every score tied, or val mR at or below chance)."""


@torch.inference_mode()
def encode_split(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
                 precision: Precision, progress: bool = False, image_cache: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every image and every caption of a split once, in large batches."""
    from tqdm.auto import tqdm

    from ..datasets.torchdata import ImageDataset, ImageNormalizer, build_transform

    method.eval()
    normalize = ImageNormalizer(*method.image_mean_std(), channels_last=use_channels_last(method, cfg.train, device))
    ds = ImageDataset(split, build_transform(cfg.train, train=False), cache=image_cache)
    workers = auto_workers(cfg.train.num_workers, device)
    loader = make_loader(ds, cfg.train.eval_batch_size, False, None, workers, device, 0)
    feats = []
    for images, _ in tqdm(loader, desc=f"encode {split.name} images", disable=not progress, leave=False):
        images = normalize(images.to(device, non_blocking=True))
        with precision.autocast(device):
            feats.append(method.encode_images(images).float())
    img = torch.cat(feats)
    tok = method.tokenizer()
    txt_parts = []
    bs = cfg.train.eval_batch_size
    for i in tqdm(range(0, split.n_captions, bs), desc=f"encode {split.name} captions", disable=not progress,
                  leave=False):
        text = {k: v.to(device, non_blocking=True) for k, v in tok(split.captions[i:i + bs]).items()}
        with precision.autocast(device):
            txt_parts.append(method.encode_texts(text).float())
    return img, torch.cat(txt_parts)


@torch.inference_mode()
def rank_split(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
               precision: Precision, progress: bool = False, image_cache: Any = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-query 1-based ranks for both directions, scoring blockwise (bounded memory)."""
    from ..evaluation.metrics import compute_ranks_blockwise

    img, txt = encode_split(method, split, cfg, device, precision, progress, image_cache)
    spread: list[torch.Tensor] = []  # per block max - min, summed at the end (one host sync per split)

    def score_block(i: slice, j: slice) -> torch.Tensor:
        with precision.autocast(device):
            s = method.score(img[i], txt[j]).float()
        spread.append((s.amax() - s.amin()).detach())
        return s

    block_i = 1024 if not method.cross_interaction else 256
    ranks = compute_ranks_blockwise(score_block, split.n_images, split.n_captions, split.cap2img,
                                    block_images=block_i, block_captions=8192)
    if split.n_images * split.n_captions > 1 and spread and float(torch.stack(spread).max()) == 0.0:
        raise TrainingCollapsed(f"the model gives every image-caption pair of the {split.name} split the same "
                                "score (collapsed: diverging weights or a dead embedding); try a lower train.lr")
    return ranks


def evaluate(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
             precision: Precision, progress: bool = False, image_cache: Any = None
             ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Metrics and ranks of one split; NaN scores and out-of-memory become one-line errors with a fix."""
    from ..evaluation.metrics import metrics_from_ranks

    try:
        i2t, t2i = rank_split(method, split, cfg, device, precision, progress, image_cache)
    except ValueError as e:
        if not str(e).startswith("NaN scores"):
            raise
        raise UserError(f"the model gives NaN scores on the {split.name} split ({e}); non-finite weights or "
                        "an fp16 overflow (try --set train.amp=bf16 or off)") from None
    except torch.OutOfMemoryError:
        bs = cfg.train.eval_batch_size
        raise UserError(f"out of memory on {device} while evaluating the {split.name} split with eval batch "
                        f"size {bs}; try --set train.eval_batch_size={max(1, bs // 2)}") from None
    kill_point(f"eval:{split.name}")  # test-only crash hook
    return metrics_from_ranks(i2t, t2i), i2t, t2i


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
