"""In-memory view of a retrieval dataset: per split, image files, captions and caption->image index."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
            from .errors import UserError

            raise UserError(f"unknown split '{name}'; choose from: train, val, test")
        return getattr(self, name)
