"""Prior text similarity S(T, T_I) in [0, 1] between a caption and an image, for AMFMN's dynamic margin.

Why: AMFMN shrinks the triplet margin for negatives whose captions say nearly the same thing as the
positive's (remote-sensing captions repeat a lot), so S must come from the training captions alone.

Design (see also docs in the AMFMN section of the method spec):
- Caption-caption score s(a, b) = mean of
    * a BLEU-like score of candidate a against reference b: geometric mean of the modified (clipped)
      n-gram precisions n = 1..4 over lower-cased words, with a brevity penalty and an epsilon
      numerator for a zero count (orders longer than the candidate are skipped), and
    * the content-word overlap (Dice / F1 of the two sets) after lower-casing, stop-word removal
      and a small suffix-stripping stemmer,
  forced to 1 when the two normalised word sequences are identical.
- S(T, T_I) = max over the captions of image I of s(T, caption): a caption of I itself (or an exact
  duplicate of one) gives 1, so its margin is 0, the multi-reference spirit of BLEU.
- Clipped counts are sparse matrix products: min(x, y) = sum_{t >= 1} [x >= t][y >= t], so with a
  binary matrix whose columns are (n-gram, t) pairs, the clipped count of every caption pair is
  X_a @ X_b.T. The cache holds these sparse matrices (a few MB for RSICD), not the dense
  captions x images table (49,140 x 9,828 float16 = 965 MB); B x B blocks are computed exactly on
  the fly (a few ms per batch).
- The cache file is keyed by sha256(training captions + parameters) and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ...io import write_with
from ...text import words

CACHE_VERSION = 1

_STOP_TEXT = """
    a an the and or but nor so yet of in on at to from by for with without within into onto upon
    over under above below between among across along around about against beside besides near
    through throughout toward towards behind beyond off out up down inside outside
    is are was were be been being am do does did done has have had having can could will would
    shall should may might must it its s this that these those there here where when which who
    whom whose what while as than then also very too just only not no some any each every both
    either neither such same other another own all most more much few several lot lots
    i me my we our you your he him his she her they them their one ones
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())  # a small hand-written English function-word list

_SUFFIXES = (  # (suffix, replacement), longest first; applied once
    ("ational", "ate"), ("ization", "ize"), ("fulness", "ful"), ("ousness", "ous"),
    ("iveness", "ive"), ("ements", ""), ("ement", ""), ("ments", ""), ("ment", ""),
    ("ings", ""), ("ing", ""), ("ies", "y"), ("ied", "y"), ("sses", "ss"), ("edly", ""),
    ("ed", ""), ("ly", ""), ("es", ""), ("s", ""),
)
_VOWEL = re.compile(r"[aeiouy]")


def stem(word: str) -> str:
    """A small suffix stripper: maps plural/verb/adverb forms to one stem (trees/tree, parked/parking).

    Not Porter; consistency matters more than linguistic accuracy for an overlap score.
    """
    if len(word) <= 3:
        return word
    for suffix, repl in _SUFFIXES:
        if not word.endswith(suffix):
            continue
        if suffix == "s" and word.endswith(("ss", "us", "is")):
            return word
        if suffix == "es" and not word.endswith(("ches", "shes", "xes", "zes", "sses")):
            continue  # "houses" -> "house" via "s", "boxes" -> "box" via "es"
        base = word[: -len(suffix)] + repl
        if len(base) < 3 or not _VOWEL.search(base):
            return word  # "sing", "red", "bed": too short to strip
        if suffix in ("ing", "ed", "ings", "edly") and len(base) > 3 and base[-1] == base[-2] \
                and base[-1] not in "lsz":
            base = base[:-1]  # "running" -> "run", "planned" -> "plan"
        return base
    return word


def content_stems(caption: str) -> set[str]:
    """Stems of the content words of a caption (lower-cased, stop words removed)."""
    return {stem(w) for w in words(caption) if w not in STOP_WORDS}


def dynamic_margin(sim, gamma: float, beta: float):
    """margin(S) = gamma (e^beta - e^(beta S)) / (e^beta - 1): gamma at S = 0, 0 at S = 1.

    Works on floats, numpy arrays and torch tensors; beta -> 0 is the linear limit gamma (1 - S).
    """
    if abs(beta) < 1e-6:
        return gamma * (1 - sim)
    e_beta = float(np.exp(beta))
    exp = np.exp if not hasattr(sim, "exp") else (lambda x: x.exp())
    return gamma * (e_beta - exp(beta * sim)) / (e_beta - 1.0)


@dataclass(frozen=True)
class PriorParams:
    """Parameters that change the cached features (they are part of the cache key)."""

    max_n: int = 4  # BLEU orders 1..max_n
    smooth: float = 0.1  # numerator used for a zero clipped count (keeps one miss from zeroing BLEU)
    bleu_weight: float = 0.5  # S = w * BLEU + (1 - w) * overlap (0.5: the authors' plain average)


def captions_key(captions: Sequence[str], params: PriorParams) -> str:
    """sha256 over the captions (length-prefixed, so no two lists collide) and the parameters."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, **asdict(params)}, sort_keys=True).encode())
    for c in captions:
        b = c.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _binary_csr(rows: list[list[int]], n_cols: int) -> sp.csr_matrix:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.fromiter((c for r in rows for c in r), dtype=np.int32, count=int(indptr[-1]))
    data = np.ones(len(indices), dtype=np.float32)
    m = sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_cols))
    m.sort_indices()
    return m


class CaptionFeatures:
    """Sparse features of a caption list: per n-gram order a (captions x (gram, t)) binary matrix,
    the content-stem set matrix, word counts and an id per distinct normalised text."""

    def __init__(self, ngram: list[sp.csr_matrix], content: sp.csr_matrix, lengths: np.ndarray,
                 text_ids: np.ndarray):
        self.ngram = ngram
        self.content = content
        self.lengths = lengths
        self.text_ids = text_ids

    @classmethod
    def build(cls, captions: Sequence[str], max_n: int) -> CaptionFeatures:
        gram_ids: list[dict[tuple[tuple[str, ...], int], int]] = [{} for _ in range(max_n)]
        rows: list[list[list[int]]] = [[] for _ in range(max_n)]
        stem_ids: dict[str, int] = {}
        content_rows: list[list[int]] = []
        text_id: dict[str, int] = {}
        lengths = np.zeros(len(captions), dtype=np.int32)
        text_ids = np.zeros(len(captions), dtype=np.int64)
        for i, cap in enumerate(captions):
            w = words(cap)
            lengths[i] = len(w)
            text_ids[i] = text_id.setdefault(" ".join(w), len(text_id))
            for n in range(1, max_n + 1):
                ids = gram_ids[n - 1]
                counts = Counter(tuple(w[k:k + n]) for k in range(len(w) - n + 1))
                rows[n - 1].append(
                    [ids.setdefault((g, t), len(ids)) for g, c in counts.items() for t in range(1, c + 1)]
                )
            content_rows.append(sorted({stem_ids.setdefault(s, len(stem_ids)) for s in
                                        (stem(x) for x in w if x not in STOP_WORDS)}))
        ngram = [_binary_csr(rows[n], len(gram_ids[n])) for n in range(max_n)]
        return cls(ngram, _binary_csr(content_rows, len(stem_ids)), lengths, text_ids)

    # ---- (de)serialisation without pickle ------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"lengths": self.lengths, "text_ids": self.text_ids}
        for name, m in [*((f"ngram{n}", m) for n, m in enumerate(self.ngram)), ("content", self.content)]:
            out[f"{name}_indptr"] = m.indptr
            out[f"{name}_indices"] = m.indices
            out[f"{name}_shape"] = np.asarray(m.shape, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays, max_n: int) -> CaptionFeatures:
        def mat(name: str) -> sp.csr_matrix:
            indices = arrays[f"{name}_indices"]
            data = np.ones(len(indices), dtype=np.float32)
            shape = tuple(int(x) for x in arrays[f"{name}_shape"])
            return sp.csr_matrix((data, indices, arrays[f"{name}_indptr"]), shape=shape)

        return cls([mat(f"ngram{n}") for n in range(max_n)], mat("content"), arrays["lengths"],
                   arrays["text_ids"])


class PriorSimilarity:
    """Caption-caption and caption-image prior similarity for one training split."""

    def __init__(self, features: CaptionFeatures, cap2img: np.ndarray, params: PriorParams):
        self.f = features
        self.params = params
        cap2img = np.asarray(cap2img, dtype=np.int64)
        if len(cap2img) != len(features.lengths):
            raise ValueError(f"cap2img has {len(cap2img)} entries for {len(features.lengths)} captions")
        n_images = int(cap2img.max()) + 1 if len(cap2img) else 0
        self.img_caps = np.argsort(cap2img, kind="stable")  # caption ids grouped by image
        self.img_count = np.bincount(cap2img, minlength=n_images)
        self.img_start = np.concatenate([[0], np.cumsum(self.img_count)[:-1]]).astype(np.int64)

    @classmethod
    def load_or_build(cls, captions: Sequence[str], cap2img: np.ndarray, cache_dir: str | Path | None,
                      params: PriorParams | None = None) -> PriorSimilarity:
        """Features from the cache when its key matches these captions, else built and cached."""
        params = params or PriorParams()
        if cache_dir is None:
            return cls(CaptionFeatures.build(captions, params.max_n), cap2img, params)
        key = captions_key(captions, params)
        path = Path(cache_dir) / "prior_similarity" / f"{key[:24]}.npz"
        feats = _load(path, key, params.max_n)
        if feats is None:
            feats = CaptionFeatures.build(captions, params.max_n)
            arrays = {"key": np.asarray(key), **feats.to_arrays()}
            write_with(path, lambda f: np.savez(f, **arrays))
        return cls(feats, cap2img, params)

    def captions(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), len(b)) float32: s(caption a_i, caption b_j), candidate a against reference b."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        la = self.f.lengths[a].astype(np.float64)
        lb = self.f.lengths[b].astype(np.float64)
        log_p = np.zeros((len(a), len(b)))
        n_orders = np.zeros(len(a))
        for n, m in enumerate(self.f.ngram, start=1):
            total = la - n + 1  # candidate n-gram count
            ok = total > 0
            if not ok.any():
                continue
            clip = (m[a] @ m[b].T).toarray().astype(np.float64)
            clip = np.where(clip > 0, clip, self.params.smooth)
            log_p[ok] += np.log(clip[ok] / total[ok, None])
            n_orders += ok
        bleu = np.exp(log_p / np.maximum(n_orders, 1)[:, None])
        bp = np.exp(np.minimum(0.0, 1.0 - lb[None, :] / np.maximum(la, 1.0)[:, None]))  # brevity penalty
        bleu = np.where(n_orders[:, None] > 0, np.minimum(bleu, 1.0) * bp, 0.0)
        ca, cb = self.f.content[a], self.f.content[b]
        inter = (ca @ cb.T).toarray().astype(np.float64)
        size = np.add.outer(np.diff(ca.indptr), np.diff(cb.indptr)).astype(np.float64)
        overlap = np.divide(2 * inter, size, out=np.zeros_like(inter), where=size > 0)
        w = self.params.bleu_weight
        s = w * bleu + (1 - w) * overlap
        s[self.f.text_ids[a][:, None] == self.f.text_ids[b][None, :]] = 1.0
        return np.clip(s, 0.0, 1.0).astype(np.float32)

    def caption_image(self, caption_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """(len(captions), len(images)) float32: S(T, T_I) = max over I's captions (0 if I has none)."""
        caption_ids = np.asarray(caption_ids, dtype=np.int64)
        image_ids = np.asarray(image_ids, dtype=np.int64)
        u_img, inv_img = np.unique(image_ids, return_inverse=True)
        u_cap, inv_cap = np.unique(caption_ids, return_inverse=True)
        counts = self.img_count[u_img]
        has = counts > 0
        refs = np.concatenate([self.img_caps[s:s + c] for s, c in
                               zip(self.img_start[u_img[has]], counts[has])]) if has.any() else None
        out = np.zeros((len(u_cap), len(u_img)), dtype=np.float32)
        if refs is not None:
            pair = self.captions(u_cap, refs)
            starts = np.concatenate([[0], np.cumsum(counts[has])[:-1]])
            out[:, has] = np.maximum.reduceat(pair, starts, axis=1)
        return out[inv_cap][:, inv_img]

    def block(self, image_ids: np.ndarray, caption_ids: np.ndarray) -> np.ndarray:
        """(len(images), len(captions)) block in score-matrix orientation: [i, j] = S(T_j, T_{I_i})."""
        return self.caption_image(caption_ids, image_ids).T


def _load(path: Path, key: str, max_n: int) -> CaptionFeatures | None:
    """The cached features if the file exists, reads cleanly and carries this exact key."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return CaptionFeatures.from_arrays({k: z[k] for k in z.files}, max_n)
    except (OSError, ValueError, KeyError):
        return None  # truncated or foreign file: rebuild (the atomic write replaces it)
