"""Precomputed per-image features as a method's image input (contracts.FeatureInput).

The original SCAN reads bottom-up-attention detector features (one (36, 2048) array per image) instead
of pixels. A method declares that with `image_input()`; the engine then checks the folder once for the
split images (`check_feature_files`: one-line DataError naming a missing or odd file) and builds the
loaders with `feature_loading`: the array of `<image stem>.npy` is the "image", with no resize, no
augmentation and no pixel normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..contracts import FeatureInput, Split
from ..errors import DataError


def feature_file(folder: Path, image: Path) -> Path:
    """Where the features of `image` live: `<folder>/<image stem>.npy`."""
    return Path(folder) / f"{Path(image).stem}.npy"


def _shape_of(path: Path, spec: FeatureInput) -> tuple[int, ...]:
    """The array shape from the .npy header (no data read); DataError when it is not a float array."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({str(e).splitlines()[0][:100] if str(e) else type(e).__name__}) "
                        f"for {spec.option}") from None
    if arr.dtype.kind != "f":
        raise DataError(f"{path}: dtype {arr.dtype}, expected a float array for {spec.option}")
    return tuple(arr.shape)


def check_feature_files(spec: FeatureInput, splits: Iterable[Split]) -> tuple[int, int]:
    """Every image of `splits` has `<stem>.npy` in spec.folder, all of one shape (R, spec.dim); (R, dim).

    Two images with the same stem would share a file: refused too. Reads only the .npy headers.
    """
    folder = Path(spec.folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {spec.option} folder does not exist")
    owner: dict[str, Path] = {}
    first: tuple[Path, tuple[int, ...]] | None = None
    for split in splits:
        for image in split.image_paths:
            stem = Path(image).stem
            if owner.setdefault(stem, Path(image)) != Path(image):
                raise DataError(f"{image}: same file stem as {owner[stem]}, so both would read "
                                f"{feature_file(folder, image)} ({spec.option})")
            path = feature_file(folder, image)
            if not path.is_file():
                raise DataError(f"{path}: missing ({spec.option} needs one <image stem>.npy per image; "
                                f"image {Path(image).name} of the {split.name} split)")
            shape = _shape_of(path, spec)
            if len(shape) != 2 or shape[0] < 1 or shape[1] != spec.dim:
                raise DataError(f"{path}: shape {shape}, expected (regions, {spec.dim}) for {spec.option}")
            if first is None:
                first = (path, shape)
            elif shape != first[1]:
                raise DataError(f"{path}: shape {shape} differs from {first[1]} of {first[0].name}; "
                                f"{spec.option} needs one region count for every image")
    return first[1] if first is not None else (0, spec.dim)  # type: ignore[return-value]


class FeatureLoader:
    """Picklable image loader for the torch datasets: image path -> float32 (R, F) tensor of its features."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def __call__(self, image: Path) -> torch.Tensor:
        return torch.from_numpy(np.load(feature_file(self.folder, image)).astype(np.float32, copy=False))


def unchanged(x: torch.Tensor) -> torch.Tensor:
    """The transform and the batch normaliser of feature input: the features pass as they are."""
    return x


def feature_loading(spec: FeatureInput) -> tuple[Callable, FeatureLoader, Callable]:
    """(transform, image_loader, batch normaliser) for loaders whose "images" are the feature arrays."""
    return unchanged, FeatureLoader(spec.folder), unchanged
