"""`eval.exclude=audit.json`: metrics on the test set minus the images that leak from training data.

Pure functions (no files): the caller reads audit.json and writes the result beside the standard
metrics, never instead of them. Removing an image removes it from the gallery and removes its
captions from the queries; the remaining scores are unchanged, so the excluded metrics are the
standard metrics of the sub-matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .metrics import evaluate_scores

TRAINING_SPLITS = ("train", "val")


def leaked_images(audit: dict[str, Any], dataset: str, split: str = "test") -> set[str]:
    """Images of `dataset`/`split` in a near-duplicate pair whose other side is a train or val image
    (of any dataset): what a model may have seen while training."""
    out: set[str] = set()
    for pair in audit.get("image_duplicates") or []:
        for me, other in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
            if me["dataset"] == dataset and me["split"] == split and other["split"] in TRAINING_SPLITS:
                out.add(me["filename"])
    return out


def keep_mask(image_names: Sequence[str], excluded: Iterable[str]) -> np.ndarray:
    """True for each image that stays."""
    drop = set(excluded)
    return np.array([n not in drop for n in image_names], dtype=bool)


def exclude_images(sims: Any, cap2img: Any, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sub-matrix over the kept images and their captions, the renumbered caption -> image index)."""
    c2i = np.asarray(cap2img, dtype=np.int64)
    keep = np.asarray(keep, dtype=bool)
    cap_keep = keep[c2i]
    new_index = np.cumsum(keep) - 1
    sub = np.asarray(sims)[np.flatnonzero(keep)][:, np.flatnonzero(cap_keep)]
    return sub, new_index[c2i[cap_keep]]


def excluded_metrics(sims: Any, cap2img: Any, image_names: Sequence[str], excluded: Iterable[str],
                     max_k: int = 100) -> dict[str, Any]:
    """Standard metrics on the test set without `excluded`, plus what was left out."""
    keep = keep_mask(image_names, excluded)
    if not keep.any():
        raise ValueError("every test image is excluded; nothing left to evaluate")
    sub, c2i = exclude_images(sims, cap2img, keep)
    out = evaluate_scores(sub, c2i, max_k=max_k)
    out["excluded_images"] = [n for n, k in zip(image_names, keep.tolist()) if not k]
    out["n_images"], out["n_captions"] = int(sub.shape[0]), int(sub.shape[1])
    return out
