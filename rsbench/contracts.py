"""The shared contracts: what datasets/ hands to the engine and methods/ receive, in one small module.

Both datasets/ and methods/ import these types and never each other: a Split (per split, image files,
captions and caption->image index), a training Batch, a method's LossOutput, the Tokenizer a method
gives the DataLoader, the Gather a contrastive loss uses for global-batch negatives, and the field
checks every config's validate() uses. No torch import at module load (the types only name tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class Problem:
    """One finding about a dataset copy: the file it is about and what is wrong (one line)."""

    file: str
    message: str

    @property
    def line(self) -> str:
        return f"{self.file}: {self.message}" if self.file else self.message


@dataclass
class Split:
    """One split. Captions are grouped by image in `cap2img` (not necessarily 5 per image)."""

    name: str  # train | val | test
    image_paths: list[Path]  # absolute paths, verified to lie inside the image folder
    image_names: list[str]  # file names as written in the annotation
    captions: list[str]  # raw caption text, in the dataset's order
    cap2img: np.ndarray  # int64 (n_captions,), index into image_paths
    image_classes: list[str] = field(default_factory=list)  # scene class per image ('' if unknown)
    # Optional decoded-image cache (rsbench.datasets.cache.ImageCache) the torch datasets read from
    # instead of the files; attached by the runner when train.image_cache is on.
    image_cache: Any = field(default=None, repr=False, compare=False)

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def captions_of(self, image_index: int) -> list[int]:
        return np.flatnonzero(self.cap2img == image_index).tolist()


@dataclass
class DatasetSplits:
    """A loaded dataset: train/val/test splits plus what is needed to reproduce them."""

    name: str
    train: Split
    val: Split
    test: Split
    image_dir: Path
    ann_file: Path | None
    fingerprint: str  # sha256 over the annotation bytes and the split assignment
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. how a val split was carved
    # Findings of the split rules (rsbench.datasets.assembly.split_findings): errors make load_dataset
    # refuse the data (unless strict=False, as `bench data check` loads it); warnings are printed.
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split '{name}'; choose from: train, val, test")
        return getattr(self, name)


# ---- methods' side ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureInput:
    """A method's declaration that it reads precomputed per-image features instead of pixels.

    One `<image stem>.npy` of shape (R, dim) per image in `folder` (e.g. SCAN's detector regions);
    the engine checks the files (datasets.features) and hands the loaders the arrays as the images.
    `option` names the setting in messages (e.g. "scan region_features").
    """

    folder: Path
    dim: int
    option: str


# A picklable callable (it runs in DataLoader workers): list of captions -> dict of tensors.
Tokenizer = Callable[[list[str]], "dict[str, torch.Tensor]"]

# How a loss turns per-process rows into global-batch rows: concatenate each tensor (None passes
# through) over the processes of a distributed training step, keeping gradients. Passed explicitly
# (MethodContext.gather), like open_clip's gather_with_grad, never read from a global flag.
Gather = Callable[..., "tuple[torch.Tensor | None, ...]"]


def no_gather(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The single-process Gather: every tensor unchanged (the local batch is the global batch)."""
    return tensors


@dataclass
class Batch:
    """A training batch: B (image, caption) pairs.

    image_ids: index of each image in the split (two rows with the same id are the same image,
    which a loss must not treat as a negative). caption_ids: index of each caption in the split.
    """

    images: torch.Tensor
    text: dict[str, torch.Tensor]
    image_ids: torch.Tensor
    caption_ids: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            images=self.images.to(device, non_blocking=non_blocking),
            text={k: v.to(device, non_blocking=non_blocking) for k, v in self.text.items()},
            image_ids=self.image_ids.to(device, non_blocking=non_blocking),
            caption_ids=self.caption_ids.to(device, non_blocking=non_blocking),
        )


@dataclass
class LossOutput:
    loss: torch.Tensor
    # Scalar tensors, detached: reading one (.item(), float()) waits for the GPU, so the runner
    # sums them on the device and reads them once per epoch.
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


# ---- config checks (used by config/ and by every method config's validate()) -----------------------

def require_at_least(obj: Any, prefix: str, minimum: dict[str, float]) -> None:
    """Each named field must be >= its minimum (one-line UserError naming the dotted key; nan fails)."""
    for key, low in minimum.items():
        value = getattr(obj, key)
        if not value >= low:
            raise UserError(f"{prefix}{key} must be >= {low:g}, got {value!r}")


def require_above(obj: Any, prefix: str, keys: tuple[str, ...], low: float = 0.0) -> None:
    """Each named field must be strictly greater than `low` (a temperature, a learning rate)."""
    for key in keys:
        value = getattr(obj, key)
        if not value > low:
            raise UserError(f"{prefix}{key} must be > {low:g}, got {value!r}")
