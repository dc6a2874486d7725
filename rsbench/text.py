"""Caption text rules shared by the dataset readers, the synthetic generator and the word-level methods.

One definition each, so that the tokens the synthetic Karpathy JSON stores, the words a GRU
vocabulary counts and the prior text similarity of AMFMN can never drift apart.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")


def words(caption: str) -> list[str]:
    """Lower-case and split into alphanumeric words (drops the stray punctuation the datasets contain)."""
    return _WORD.findall(caption.lower())


def normalize_caption(raw: str) -> str:
    """Keep the raw text but strip it and collapse runs of whitespace (tabs, double spaces, newlines)."""
    return " ".join(raw.split())
