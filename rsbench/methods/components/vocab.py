"""Word-level text processing for GRU methods (VSE++, AMFMN): normalisation, vocabulary, padding.

The vocabulary is built from the training captions only and saved as JSON beside the weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

from ...errors import UserError
from ...text import words

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<start>", "<end>"


class Vocabulary:
    """Word <-> id map. Ids 0..3 are PAD, UNK, BOS, EOS."""

    def __init__(self, itos: list[str]):
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for c in captions for w in words(c))
        kept = sorted(w for w, n in counts.items() if n >= min_count)
        return cls([PAD, UNK, BOS, EOS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, caption: str) -> list[int]:
        unk = self.stoi[UNK]
        return [self.stoi[BOS], *(self.stoi.get(w, unk) for w in words(caption)), self.stoi[EOS]]

    def to_json(self) -> dict:
        return {"itos": self.itos}

    @classmethod
    def from_json(cls, d: dict) -> Vocabulary:
        return cls(d["itos"])

    def restored(self, state: dict, method: str) -> Vocabulary:
        """The vocabulary a checkpoint's text state holds (`state["vocab"]`), or this one if it holds none.

        The model's embedding table was sized from this vocabulary, so a checkpoint vocabulary of another
        size (built from another training split) is refused with a one-line error naming the method.
        """
        if "vocab" not in state:
            return self
        vocab = Vocabulary.from_json(state["vocab"])
        if len(vocab) != len(self):
            raise UserError(f"{method}: checkpoint vocabulary has {len(vocab)} words, the model {len(self)} "
                            "(built from another training split?)")
        return vocab


class VocabularyState:
    """For methods that read captions through a Vocabulary built from the training split (`self.vocab`):
    the vocabulary is saved beside the weights and restored with them, so a checkpoint always reads words
    with the ids it was trained on, whatever captions the method was rebuilt from."""

    vocab: Vocabulary

    def extra_state_json(self) -> dict[str, Any]:
        return {"vocab": self.vocab.to_json()}

    def load_extra_state_json(self, state: dict[str, Any]) -> None:
        self.vocab = self.vocab.restored(state, type(self).__name__.lower())


class WordTokenizer:
    """Picklable collate-time tokenizer: captions -> {"input_ids": (B, L) long, "lengths": (B,) long}."""

    def __init__(self, vocab: Vocabulary, max_len: int = 48):
        self.vocab = vocab
        self.max_len = max_len

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        seqs = [self.vocab.encode(c)[: self.max_len] for c in captions]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        ids = torch.zeros(len(seqs), int(lengths.max()) if seqs else 1, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return {"input_ids": ids, "lengths": lengths}
