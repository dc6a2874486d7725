"""torch Datasets, transforms, collate and batch normalisation for training and evaluation.

Transforms follow the field's code (AMFMN/GaLR/SWAN: Resize((278, 278)) -> RandomRotation((0, 90))
-> RandomCrop(256) for training, Resize((256, 256)) for evaluation): images are resized directly to
a square (aspect not kept). Rotation uses the field's choice, a uniform angle in [0, 90] degrees
(corners filled with black), applied before the crop so the crop trims most of the fill.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..contracts import Batch, Split, Tokenizer
from .cache import ImageCache, train_resize_size
from .images import load_image

ImageLoader = Callable[[Path], Image.Image]


def build_transform(image_size: int, resize: int = 0, augments: Collection[str] = (),
                    train: bool = False) -> v2.Compose:
    """PIL RGB image -> uint8 tensor (3, S, S), S = image_size.

    eval: Resize((S, S)). train: Resize((R, R)) with R = resize or round(S * 1.09), then
    RandomRotation((0, 90)) if 'rotate' in augments, RandomCrop(S) if 'crop' (else Resize((S, S))),
    RandomHorizontalFlip if 'flip'. `augments` comes validated from the config
    (config.schema.parse_augment). Images stay uint8 through the DataLoader (a quarter of the
    bytes to collate, pin and copy); `ImageNormalizer` converts a whole batch on the device.
    """
    s = int(image_size)
    ops: list[torch.nn.Module] = []  # geometric ops run on the PIL image (Pillow's resize, = the cache's)
    if not train:
        ops.append(v2.Resize((s, s), antialias=True))
    else:
        if "crop" in augments:
            r = train_resize_size(s, resize)
            ops.append(v2.Resize((r, r), antialias=True))
            if "rotate" in augments:
                ops.append(v2.RandomRotation(degrees=(0.0, 90.0)))
            ops.append(v2.RandomCrop(s))
        else:
            ops.append(v2.Resize((s, s), antialias=True))
            if "rotate" in augments:
                ops.append(v2.RandomRotation(degrees=(0.0, 90.0)))
        if "flip" in augments:
            ops.append(v2.RandomHorizontalFlip())
    ops.append(v2.PILToTensor())
    return v2.Compose(ops)


class ImageNormalizer:
    """uint8 (B, 3, H, W) -> float32 (x / 255 - mean) / std, in one fused multiply-add.

    Call it after the copy to the device: the copy moves uint8, and a GPU normalises a batch in
    microseconds where a CPU worker spends milliseconds per image. Built once per loop: the
    scale and shift reach each device once, not with every batch.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._shift, self._scale = -m / s, 1.0 / (255.0 * s)
        self._format = torch.channels_last if channels_last else torch.contiguous_format
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"ImageNormalizer expects uint8 images, got {images.dtype}")
        if images.device not in self._on:
            self._on[images.device] = (self._shift.to(images.device), self._scale.to(images.device))
        shift, scale = self._on[images.device]
        return torch.addcmul(shift, images.to(torch.float32, memory_format=self._format), scale)


class _ImageSource:
    """Reads image i of a split from the files or, when given, from an ImageCache."""

    def __init__(self, split: Split, image_loader: ImageLoader | None, cache: ImageCache | None):
        self.paths = list(split.image_paths)
        self.loader = image_loader or load_image
        cache = cache if cache is not None else split.image_cache  # attached by the runner (train.image_cache)
        self.cache = cache
        self.rows = cache.rows_for(split) if cache is not None else None

    def __call__(self, i: int) -> Image.Image:
        if self.cache is not None and self.rows is not None:
            return self.cache.get(int(self.rows[i]))
        return self.loader(self.paths[i])


class PairDataset(Dataset):
    """Training pairs: items (image tensor, caption str, image_id, caption_id).

    sampling='caption': one item per caption (every caption once per epoch).
    sampling='image': one item per image (with captions), its caption drawn from (seed, epoch);
    call `set_epoch(epoch)` before each epoch (with persistent DataLoader workers the workers hold
    a copy of the dataset, so recreate the iterator or avoid persistent workers).
    """

    def __init__(self, split: Split, transform: Callable, sampling: str = "caption", seed: int = 0,
                 image_loader: ImageLoader | None = None, cache: ImageCache | None = None):
        if sampling not in ("caption", "image"):  # the user-facing check is TrainConfig.validate
            raise ValueError(f"PairDataset: sampling must be 'caption' or 'image', got {sampling!r}")
        self.split = split
        self.transform = transform
        self.sampling = sampling
        self.seed = int(seed)
        self.source = _ImageSource(split, image_loader, cache)
        order = np.argsort(split.cap2img, kind="stable")
        counts = np.bincount(split.cap2img, minlength=split.n_images) if split.n_captions else \
            np.zeros(split.n_images, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if split.n_images else np.zeros(0, dtype=np.int64)
        self._caps_sorted = order.astype(np.int64)
        self._starts = starts.astype(np.int64)
        self._counts = counts.astype(np.int64)
        self._images_with_caps = np.flatnonzero(counts > 0).astype(np.int64)
        self.epoch = 0
        self._chosen = self._choose(0) if sampling == "image" else None

    def _choose(self, epoch: int) -> np.ndarray:
        """Caption id for each image with captions, drawn deterministically from (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        imgs = self._images_with_caps
        offs = (rng.random(len(imgs)) * self._counts[imgs]).astype(np.int64)
        return self._caps_sorted[self._starts[imgs] + offs]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.sampling == "image":
            self._chosen = self._choose(self.epoch)

    def __len__(self) -> int:
        return self.split.n_captions if self.sampling == "caption" else len(self._images_with_caps)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, str, int, int]:
        if self.sampling == "caption":
            cap = int(idx)
            img = int(self.split.cap2img[cap])
        else:
            assert self._chosen is not None
            img = int(self._images_with_caps[idx])
            cap = int(self._chosen[idx])
        return self.transform(self.source(img)), self.split.captions[cap], img, cap


class ImageDataset(Dataset):
    """Evaluation images of a split, in split order: items (image tensor, index)."""

    def __init__(self, split: Split, transform: Callable, image_loader: ImageLoader | None = None,
                 cache: ImageCache | None = None):
        self.split = split
        self.transform = transform
        self.source = _ImageSource(split, image_loader, cache)

    def __len__(self) -> int:
        return self.split.n_images

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.source(int(idx))), int(idx)


class PairCollate:
    """Picklable collate: list of PairDataset items -> Batch (tokenizer runs in the worker)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[torch.Tensor, str, int, int]]) -> Batch:
        images, caps, img_ids, cap_ids = zip(*items)
        return Batch(
            images=torch.stack(list(images)),
            text=self.tokenizer(list(caps)),
            image_ids=torch.tensor(img_ids, dtype=torch.int64),
            caption_ids=torch.tensor(cap_ids, dtype=torch.int64),
        )


def make_collate(tokenizer: Tokenizer) -> PairCollate:
    return PairCollate(tokenizer)
