"""Decode + resize every image once into a memory-mapped uint8 array, reused across runs.

Why: decoding 256-500 px TIFF/JPEG every epoch dominates small-model training on CPU-starved
machines. The cache stores each image resized directly to a square (the field resizes without
keeping aspect) at the train resize resolution, so random crop/flip/rotation still apply per epoch
on top of it, and evaluation resizes from it to image_size.

Files: `$RSBENCH_CACHE/images/<key>_<size>.u8` (raw (N, H, W, 3) uint8, C order) and
`<key>_<size>.json` (header). `key` is the dataset fingerprint for a whole dataset,
`<fingerprint>_<split>` for one split, or a digest of the path list. The data file is written to
a temp file and renamed, then the header is written atomically: the header's presence means the
cache is complete. The header also records the images' sizes and mtimes, so a cache built from
another copy of the image folder is rebuilt rather than silently reused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..contracts import DatasetSplits, Split
from ..errors import UserError
from ..io import atomic_path, cache_root, read_json_object, write_json
from .images import load_image, resize_square

CACHE_VERSION = 1


def train_resize_size(image_size: int, resize: int = 0) -> int:
    """The resize before the random crop: `resize` if set, else round(image_size * 1.09)."""
    return int(resize) if resize and resize > 0 else round(image_size * 1.09)


def _stat_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()


def _items(images: DatasetSplits | Split | Sequence[str | Path], fingerprint: str) -> tuple[str, list[str], list[Path]]:
    """(key, lookup keys, paths) for what is cached."""
    if isinstance(images, DatasetSplits):
        keys, paths = [], []
        for s in (images.train, images.val, images.test):
            keys += s.image_names
            paths += s.image_paths
        return (fingerprint or images.fingerprint), keys, paths
    if isinstance(images, Split):
        if not fingerprint:
            raise ValueError("ImageCache.build(split, ...) needs the dataset fingerprint")
        return f"{fingerprint}_{images.name}", list(images.image_names), list(images.image_paths)
    paths = [Path(p) for p in images]
    keys = [str(p) for p in paths]
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    return (f"{fingerprint}_{digest}" if fingerprint else f"paths_{digest}"), keys, paths


class ImageCache:
    """A read-only (N, S, S, 3) uint8 memmap plus a key -> row map; pickles without its data."""

    def __init__(self, data_path: Path, header: dict[str, Any]):
        self.data_path = Path(data_path)
        self.header = header
        self.size = int(header["size"])
        self.keys: list[str] = list(header["keys"])
        self._row = {k: i for i, k in enumerate(self.keys)}
        self._mm: np.memmap | None = None
        self.reused = False  # True when build() found a complete cache instead of writing one

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mm"] = None  # reopened lazily in each DataLoader worker; never pickle the pixels
        return state

    @property
    def array(self) -> np.ndarray:
        if self._mm is None:
            n = len(self.keys)
            if n == 0:
                return np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
            self._mm = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=(n, self.size, self.size, 3))
        return self._mm

    def row(self, key: str | Path) -> int:
        """Row of an image: by its annotation name (dataset/split caches) or its path (path-list caches)."""
        k = str(key)
        if k in self._row:
            return self._row[k]
        raise KeyError(f"image '{k}' is not in the cache {self.data_path}")

    def rows_for(self, split: Split) -> np.ndarray:
        """Row of each image of `split`, matching by name, else by path."""
        try:
            return np.array([self._row[n] for n in split.image_names], dtype=np.int64)
        except KeyError:
            return np.array([self.row(p) for p in split.image_paths], dtype=np.int64)

    def get_array(self, row: int) -> np.ndarray:
        return np.array(self.array[row])  # copy: detach from the memmap

    def get(self, row: int) -> Image.Image:
        return Image.fromarray(self.get_array(row), mode="RGB")

    # ---- building ----------------------------------------------------------------------------
    @classmethod
    def paths_for(cls, key: str, size: int, cache_root_dir: Path | None = None) -> tuple[Path, Path]:
        folder = Path(cache_root_dir) if cache_root_dir is not None else cache_root() / "images"
        return folder / f"{key}_{size}.u8", folder / f"{key}_{size}.json"

    @classmethod
    def build(
        cls,
        images: DatasetSplits | Split | Sequence[str | Path],
        image_size: int,
        cache_root: Path | None = None,
        fingerprint: str = "",
        *,
        loader: Callable[[Path], Image.Image] = load_image,
        workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ImageCache:
        """Open the cache for these images at `image_size` (the cache resolution), building it if needed.

        `cache_root` is the folder holding the cache files (default `$RSBENCH_CACHE/images`).
        A decode failure raises DataError naming the file; nothing is left behind.
        """
        if not 0 < int(image_size) <= 4096:
            raise UserError(f"bad cache image size {image_size}: expected 1..4096")
        key, keys, paths = _items(images, fingerprint)
        data_path, header_path = cls.paths_for(key, image_size, cache_root)
        header = {
            "version": CACHE_VERSION,
            "size": image_size,
            "n": len(paths),
            "shape": [len(paths), image_size, image_size, 3],
            "dtype": "uint8",
            "key": key,
            "fingerprint": fingerprint or key,
            "stats": _stat_digest(paths),
            "keys": keys,
        }
        on_disk = _reusable(data_path, header_path, header)
        if on_disk is not None:
            cache = cls(data_path, on_disk)
            cache.reused = True
            return cache
        with atomic_path(data_path) as tmp:
            _write_pixels(tmp, paths, image_size, loader, workers, progress)
            header_path.unlink(missing_ok=True)  # an old header must never describe the new data
        write_json(header_path, header)
        return cls(data_path, header)


def _reusable(data_path: Path, header_path: Path, want: dict[str, Any]) -> dict[str, Any] | None:
    """The header of a complete cache of the same images (names, sizes, mtimes) at the same
    resolution, or None (missing, damaged or different: rebuild)."""
    if not (header_path.is_file() and data_path.is_file()):
        return None
    header = read_json_object(header_path)
    size = want["size"]
    if (header is not None and all(header.get(k) == want[k] for k in ("version", "size", "keys", "stats"))
            and data_path.stat().st_size == want["n"] * size * size * 3):
        return header
    return None


def _write_pixels(tmp: Path, paths: Sequence[Path], size: int, loader: Callable[[Path], Image.Image],
                  workers: int | None, progress: Callable[[int, int], None] | None) -> None:
    """Decode and resize every image (in threads) into the raw (N, S, S, 3) uint8 file `tmp`."""
    n = len(paths)
    mm = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(n, 1), size, size, 3))

    def work(i: int, out: np.memmap = mm) -> None:
        out[i] = np.asarray(resize_square(loader(paths[i]), size), dtype=np.uint8)

    done = 0
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as ex:
        for _ in ex.map(work, range(n)):
            done += 1
            if progress is not None:
                progress(done, n)
    mm.flush()
    del mm
    if n == 0:
        os.truncate(tmp, 0)
