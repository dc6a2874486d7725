"""The cached synthetic set: generated once per parameter set under $RSBENCH_CACHE, then reused."""

from __future__ import annotations

from pathlib import Path

from ...io import cache_root
from . import generate


def synthetic_root(n_images: int = 300, image_size: int = 64, seed: int = 0) -> Path:
    """Generate the synthetic set once into $RSBENCH_CACHE/synthetic/v<V>_n<N>_s<S>_seed<K> and reuse it.

    V is the generator's SYNTHETIC_VERSION: a changed generator gets a new folder instead of
    silently reusing copies drawn by the old one. Generation goes to a temp folder renamed into
    place, so a half-written folder is never used; a complete folder of a racing process wins.
    """
    target = cache_root() / "synthetic" / generate.synthetic_params_key(n_images, image_size, seed)
    generate.generate_synthetic(target, n_images=n_images, image_size=image_size, seed=seed, cached=True)
    return target
