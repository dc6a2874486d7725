"""Perceptual image hashes for the near-duplicate audit, cached per image, computed in parallel.

Why a perceptual hash (imagehash's pHash: DCT of a 32x32 grey thumbnail, 64 bits): a copy of an
image re-encoded (JPEG quality), converted (TIFF -> JPEG/PNG) or slightly resized keeps nearly the
same low-frequency DCT signs, so its hash differs in a few bits, while unrelated images differ in
about half of them. Images are decoded with our own loader (16-bit / 4-band TIFFs as in training).

Cache: one JSON per image folder under $RSBENCH_CACHE/imagehash/, mapping each image name to
[file size, mtime_ns, hash]; an entry is reused only while size and mtime are unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..io import cache_root, read_json_object, write_json

HASH_VERSION = "phash8-v1"


def phash_file(path: str | Path) -> str:
    """64-bit pHash of one image file as 16 hex digits (DataError naming the file if it cannot be read)."""
    import imagehash

    from .images import load_image

    return str(imagehash.phash(load_image(path), hash_size=8))


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _cache_file(image_dir: Path) -> Path:
    key = hashlib.sha256(f"{HASH_VERSION}\0{image_dir.resolve()}".encode()).hexdigest()[:24]
    return cache_root() / "imagehash" / f"{key}.json"


def hash_images(image_dir: Path, names: Sequence[str], paths: Sequence[Path], workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[str]:
    """pHash of each image (same order as `paths`), from the cache where the file is unchanged.

    New hashes are computed in `workers` processes and the cache is rewritten atomically once.
    """
    cache_path = _cache_file(image_dir)
    cached = (read_json_object(cache_path) or {}).get("images", {})
    stats = [_stat(p) for p in paths]
    out: list[str | None] = []
    todo: list[int] = []
    for i, (n, st) in enumerate(zip(names, stats)):
        hit = cached.get(n)
        if hit is not None and st is not None and [hit[0], hit[1]] == list(st):
            out.append(hit[2])
        else:
            out.append(None)
            todo.append(i)
    if todo:
        n_workers = max(1, workers or (os.cpu_count() or 1))
        todo_paths = [paths[i] for i in todo]
        if n_workers == 1 or len(todo) < 16:
            results = map(phash_file, todo_paths)
            _collect(results, todo, out, progress)
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                _collect(pool.map(phash_file, todo_paths, chunksize=32), todo, out, progress)
        entries = dict(cached)
        for i in todo:
            if stats[i] is not None:
                entries[names[i]] = [stats[i][0], stats[i][1], out[i]]
        write_json(cache_path, {"version": HASH_VERSION, "image_dir": str(image_dir), "images": entries})
    return [str(h) for h in out]


def _collect(results: Iterable[str], todo: list[int], out: list[str | None], progress: Callable[[int, int], None] | None) -> None:
    for k, h in enumerate(results):
        out[todo[k]] = h
        if progress is not None:
            progress(k + 1, len(todo))


def hashes_to_array(hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes -> uint64 array."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def close_pairs(a: np.ndarray, b: np.ndarray, max_distance: int, same: bool = False,
                block: int = 1024) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance) for every hash a[i], b[j] at most `max_distance` bits apart.

    `same`: a and b are the same array; only i < j is reported. Blockwise so memory stays bounded
    (an RSICD x RSITMD comparison is 52 million pairs).
    """
    out: list[tuple[int, int, int]] = []
    for start in range(0, len(a), block):
        d = np.bitwise_count(a[start:start + block, None] ^ b[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        for i, j in zip(ii.tolist(), jj.tolist()):
            i += start
            if not same or i < j:
                out.append((i, j, int(d[i - start, j])))
    return out
