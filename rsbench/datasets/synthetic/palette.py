"""Colours, count words and the small random draws every scene builder makes.

The draws go through these helpers so that one call always consumes the generator the same way:
the generated data must not change when a builder is rearranged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "white": (232, 232, 226),
    "grey": (150, 150, 152),
    "red": (178, 50, 42),
    "blue": (54, 88, 170),
    "green": (62, 132, 70),
    "yellow": (224, 194, 70),
    "orange": (224, 124, 46),
    "black": (36, 36, 40),
    "brown": (128, 88, 56),
    "dark green": (36, 84, 44),
}
MIXED = ("white", "red", "blue", "black", "grey", "yellow", "green")  # car colours of a mixed lot
ASPHALT: RGB = (74, 74, 78)

COUNT_WORDS = ("one", "two", "three", "several", "many")
COUNTS_UNIFORM = (0.2, 0.2, 0.2, 0.2, 0.2)  # weights of the five count words
COUNTS_FEW = (0.35, 0.3, 0.2, 0.15, 0.0)  # one to six: the houses of a farm or a forest


def count_word(n: int) -> str:
    """The word a caption uses for n objects (the scene records it next to the exact count)."""
    if n <= 3:
        return COUNT_WORDS[max(n, 1) - 1]
    return "several" if n <= 6 else "many"


def sample_count(rng: np.random.Generator, weights: Sequence[float], many: tuple[int, int] = (7, 12)) -> int:
    """Draw a count word by `weights`, then a count it describes ('many' spans `many`)."""
    w = np.asarray(weights, dtype=float)
    word = int(rng.choice(5, p=w / w.sum()))
    if word < 3:
        return word + 1
    if word == 3:
        return int(rng.integers(4, 7))
    return int(rng.integers(many[0], many[1] + 1))


def _clip255(v: float) -> int:
    return int(min(max(v, 0.0), 255.0))


def jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> RGB:
    """A colour near `rgb`: a shared brightness shift plus a per-channel one, both within `amount`."""
    d = (rng.uniform(-amount, amount, 3) + rng.uniform(-amount, amount)).tolist()
    return (_clip255(rgb[0] + d[0]), _clip255(rgb[1] + d[1]), _clip255(rgb[2] + d[2]))


def shade(rgb: Sequence[float], f: float) -> RGB:
    """`rgb` darkened (f < 1) or lightened (f > 1), clipped to 0..255."""
    return (_clip255(rgb[0] * f), _clip255(rgb[1] * f), _clip255(rgb[2] * f))


def pick(rng: np.random.Generator, options: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """One of `options`, uniform or by the (unnormalised) weights `p`."""
    if p is None:
        return options[int(rng.integers(len(options)))]
    w = np.asarray(p, dtype=float)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


def some_of(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """Indices of min(n, k) of k slots, drawn at random and returned in slot order."""
    return np.sort(rng.permutation(k)[: min(n, k)])
