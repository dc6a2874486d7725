"""The one interface every retrieval method implements.

Dual encoders (VSE++, CLIP, MSA at inference) score by a product of embeddings; cross-interaction
methods (AMFMN) override `score` because it needs both sides. The runner only talks to this API.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contracts import Batch, FeatureInput, Gather, LossOutput, Tokenizer, no_gather
from ..errors import UserError

if TYPE_CHECKING:
    from .components.weights import WeightNeed

# Batch, LossOutput, Tokenizer live in rsbench.contracts; re-exported here for the methods and their users.
__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Batch", "LossOutput", "MethodContext", "RetrievalMethod",
           "Tokenizer", "same_image_mask"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class MethodContext:
    """What a method may learn from the training split before training (vocabulary, caches).

    Only training data is here: nothing from val or test may shape the model.
    """

    train_captions: list[str]
    train_cap2img: np.ndarray  # image index (within train) of each training caption
    cache_dir: Path  # per-dataset cache folder (e.g. prior text similarity)
    dataset_fingerprint: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # How contrastive losses gather rows over processes: the engine passes the distributed gather
    # (engine.distributed.loss_gather()) under DDP; single-process runs keep the identity.
    gather: Gather = no_gather


class RetrievalMethod(nn.Module, ABC):
    """Base class. Subclasses set `config_cls` and implement the encoders and the loss."""

    config_cls: ClassVar[type]
    cross_interaction: ClassVar[bool] = False  # True when score() needs both sides jointly
    is_cnn: ClassVar[bool] = True  # channels_last helps on GPU

    def __init__(self, config: Any, context: MethodContext):
        super().__init__()
        self.config = config
        self.context = context

    @classmethod
    def required_weights(cls, config: Any) -> list[WeightNeed]:
        """Every pretrained weight building this method with `config` would load (timm tags, hub models,
        local files; see components/weights.py), declared without building anything, so that a run can
        check a whole grid before any cell starts. Default: none."""
        return []

    # ---- data side -------------------------------------------------------------------------
    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return IMAGENET_MEAN, IMAGENET_STD

    def image_input(self) -> FeatureInput | None:
        """None: the loaders give pixels. A FeatureInput: they give each image's precomputed features
        (one `<image stem>.npy` per image, checked by the engine) and encode_images receives those."""
        return None

    @abstractmethod
    def tokenizer(self) -> Tokenizer:
        """A picklable callable: list of captions -> dict of tensors (runs in DataLoader workers)."""

    # ---- model side ------------------------------------------------------------------------
    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> image features (N, ...), the input of score()."""

    @abstractmethod
    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenizer output -> text features (N, ...), the input of score()."""

    def score(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """(Ni, ...) x (Nt, ...) -> (Ni, Nt) similarity. Default: cosine of embeddings."""
        return F.normalize(image_feats.float(), dim=-1) @ F.normalize(text_feats.float(), dim=-1).T

    @abstractmethod
    def training_loss(self, batch: Batch) -> LossOutput:
        """The method's own loss on a training batch."""

    # ---- what the perf harness measures (benchmarks/items_training.py; no private attribute names there)
    def image_backbone(self) -> nn.Module:
        """The image trunk (a timm model) inside encode_images: timed alone as a training step's reference."""
        raise UserError(f"{type(self).__name__} does not name its image backbone (image_backbone()): "
                        "the perf harness cannot time its training step against it")

    def training_text_outputs(self, batch: Batch) -> list[torch.Tensor]:
        """The text encoder's outputs as training_loss computes them (default: encode_texts of the batch)."""
        return [self.encode_texts(batch.text)]

    # ---- optimisation / state ------------------------------------------------------------------
    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Parameter groups for the optimiser (override for per-part learning rates)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr,
                 "weight_decay": weight_decay}]

    def weight_provenance(self) -> dict[str, Any]:
        """Where each backbone's weights came from (timm tag or file, key counts), for run.json."""
        return {name or "model": dict(m.rsbench_weights) for name, m in self.named_modules()
                if isinstance(getattr(m, "rsbench_weights", None), dict)}

    def extra_state_json(self) -> dict[str, Any]:
        """JSON-able state saved beside the weights (vocabulary...), never pickled."""
        return {}

    def load_extra_state_json(self, state: dict[str, Any]) -> None:
        pass


def same_image_mask(image_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: True where rows i and j show the same image (positives, not negatives)."""
    return image_ids[:, None] == image_ids[None, :]
