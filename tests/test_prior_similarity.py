"""Prior text similarity: sparse algebra against a naive per-pair definition, endpoints, cache."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from rsbench.methods.components import prior_similarity as ps
from rsbench.methods.components.prior_similarity import (
    STOP_WORDS,
    CaptionFeatures,
    PriorParams,
    PriorSimilarity,
    content_stems,
    dynamic_margin,
    stem,
)
from rsbench.text import words

CAPS = [
    "Many planes are parked next to a long building in an airport.",
    "many planes are parked next to a long building in an airport .",
    "some planes are parked in an airport",
    "the airport here is full of airplanes and containers",
    "green trees are planted around a pond",
    "a pond is surrounded by many green trees",
    "many buildings and green trees are in a dense residential area",
    "the the the the",
    "a",
    "there are houses with the houses and houses",
]


def naive_pair(a: str, b: str, p: PriorParams) -> float:
    """The documented definition, one pair at a time with Counters."""
    wa, wb = words(a), words(b)
    if wa == wb:
        return 1.0
    logs = []
    for n in range(1, p.max_n + 1):
        ca = Counter(tuple(wa[k:k + n]) for k in range(len(wa) - n + 1))
        cb = Counter(tuple(wb[k:k + n]) for k in range(len(wb) - n + 1))
        total = sum(ca.values())
        if total == 0:
            continue
        clip = sum(min(c, cb[g]) for g, c in ca.items())
        logs.append(math.log((clip if clip > 0 else p.smooth) / total))
    bleu = 0.0
    if logs:
        bp = math.exp(min(0.0, 1 - len(wb) / len(wa)))
        bleu = min(1.0, math.exp(sum(logs) / len(logs))) * bp
    sa, sb = content_stems(a), content_stems(b)
    overlap = 2 * len(sa & sb) / (len(sa) + len(sb)) if sa or sb else 0.0
    return min(1.0, p.bleu_weight * bleu + (1 - p.bleu_weight) * overlap)


def test_stemmer_and_stop_words() -> None:
    assert [stem(w) for w in ("trees", "tree", "parked", "parking", "cities", "running", "grasses")] == [
        "tree", "tree", "park", "park", "city", "run", "grass"]
    assert stem("bus") == "bus" and stem("red") == "red"
    assert {"the", "a", "are", "of", "in"} <= STOP_WORDS
    assert content_stems("The trees are in the parks") == {"tree", "park"}


def test_sparse_equals_naive_definition() -> None:
    p = PriorParams()
    sim = PriorSimilarity(CaptionFeatures.build(CAPS, p.max_n), np.arange(len(CAPS)), p)
    got = sim.captions(np.arange(len(CAPS)), np.arange(len(CAPS)))
    want = np.array([[naive_pair(a, b, p) for b in CAPS] for a in CAPS])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_identical_text_is_one_and_unrelated_low() -> None:
    p = PriorParams()
    sim = PriorSimilarity(CaptionFeatures.build(CAPS, p.max_n), np.arange(len(CAPS)), p)
    s = sim.captions(np.arange(len(CAPS)), np.arange(len(CAPS)))
    assert np.all(np.diag(s) == 1.0)
    assert s[0, 1] == 1.0  # same words, different case and punctuation
    assert s[4, 5] > s[4, 0] and s[0, 2] > s[0, 4]  # paraphrase above unrelated
    assert s[4, 0] < 0.1
    assert np.all((s >= 0) & (s <= 1))


def test_caption_image_is_max_and_block_orientation() -> None:
    cap2img = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    p = PriorParams()
    sim = PriorSimilarity(CaptionFeatures.build(CAPS, p.max_n), cap2img, p)
    full = sim.captions(np.arange(len(CAPS)), np.arange(len(CAPS)))
    caps, imgs = np.array([4, 0, 4, 9]), np.array([2, 1, 0, 0])
    ci = sim.caption_image(caps, imgs)
    for r, c in enumerate(caps):
        for k, i in enumerate(imgs):
            assert ci[r, k] == pytest.approx(full[c, cap2img == i].max())
    block = sim.block(imgs, caps)  # [image row, caption column]
    np.testing.assert_array_equal(block, ci.T)
    assert ci[1, 2] == 1.0  # caption 0 belongs to image 0


def test_dynamic_margin_endpoints() -> None:
    for gamma, beta in [(0.2, 1.0), (0.8, 5.0), (0.5, -2.0)]:
        assert dynamic_margin(0.0, gamma, beta) == pytest.approx(gamma)
        assert dynamic_margin(1.0, gamma, beta) == pytest.approx(0.0, abs=1e-12)
        s = np.linspace(0, 1, 11)
        assert np.all(np.diff(dynamic_margin(s, gamma, beta)) < 0)
    s = torch.tensor([0.0, 0.3, 1.0])
    m = dynamic_margin(s, 0.2, 2.0)
    expect = 0.2 * (math.exp(2) - math.exp(0.6)) / (math.exp(2) - 1)
    assert torch.allclose(m, torch.tensor([0.2, expect, 0.0]), atol=1e-6)
    assert dynamic_margin(0.25, 0.4, 0.0) == pytest.approx(0.3)  # beta -> 0: linear limit


def test_cache_hit_and_invalidation(tmp_path, monkeypatch) -> None:
    cap2img = np.arange(len(CAPS)) // 2
    first = PriorSimilarity.load_or_build(CAPS, cap2img, tmp_path)
    files = list((tmp_path / "prior_similarity").glob("*.npz"))
    assert len(files) == 1

    real_build = CaptionFeatures.build
    calls = []

    def counting_build(captions, max_n):
        calls.append(len(captions))
        return real_build(captions, max_n)

    monkeypatch.setattr(ps.CaptionFeatures, "build", staticmethod(counting_build))
    again = PriorSimilarity.load_or_build(CAPS, cap2img, tmp_path)
    assert calls == []  # cache hit
    ids = np.arange(len(CAPS))
    np.testing.assert_array_equal(again.captions(ids, ids), first.captions(ids, ids))

    changed = [*CAPS[:-1], "a brand new caption about a stadium"]
    PriorSimilarity.load_or_build(changed, cap2img, tmp_path)
    assert calls == [len(CAPS)]  # captions changed: rebuilt under a new key
    assert len(list((tmp_path / "prior_similarity").glob("*.npz"))) == 2

    PriorSimilarity.load_or_build(CAPS, cap2img, tmp_path, PriorParams(smooth=0.01))
    assert len(calls) == 2  # parameters are part of the key

    files[0].write_bytes(b"not an npz")  # a corrupt cache is rebuilt, not trusted
    rebuilt = PriorSimilarity.load_or_build(CAPS, cap2img, tmp_path)
    assert len(calls) == 3
    np.testing.assert_array_equal(rebuilt.captions(ids, ids), first.captions(ids, ids))
