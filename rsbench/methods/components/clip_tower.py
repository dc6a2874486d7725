"""A pretrained CLIP-family model behind one small interface: open_clip, transformers CLIP, transformers SigLIP.

Used by hf_clip, the zoo:* methods, HarMA and PE-RSITR, which all need the same five things from a
tower: encode images, encode texts, its tokenizer, its preprocessing, and where its weights came from
(recorded in run.json: file, sha256, activation, input size, mean/std).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import UserError, one_line
from ...io import sha256_file
from .openclip_tower import OpenClipTokenizer, build_openclip_model, uses_quick_gelu
from .prompts import PromptTokenizer
from .zoo_catalogue import OPENAI_MEAN, OPENAI_STD, ZooEntry, find_weights, get_entry

HF_KINDS = ("clip", "siglip")


class ClipTower(nn.Module, ABC):
    """Base: subclasses set self.model and implement the encoders."""

    model: nn.Module
    source: Path | None = None

    @abstractmethod
    def expected_size(self) -> int:
        """The square image size the tower was built for."""

    def check_size(self, images: torch.Tensor) -> None:
        want = self.expected_size()
        if tuple(images.shape[-2:]) != (want, want):
            raise UserError(f"this model takes {want}x{want} images, got {images.shape[-2]}x{images.shape[-1]}; "
                            f"set train.image_size={want}")

    def provenance(self) -> dict[str, Any]:
        """What run.json records about the weights (the file's sha256 is computed here, once)."""
        mean, std = self.mean_std()
        rec: dict[str, Any] = {"kind": type(self).__name__, "activation": self.activation(),
                               "image_size": self.expected_size(), "mean": list(mean), "std": list(std)}
        if self.source is not None:
            rec["file"] = str(self.source)
            f = self.source if self.source.is_file() else _hf_weights_file(self.source)
            rec["sha256"] = sha256_file(f) if f is not None else ""
        return rec


class OpenClipTower(ClipTower):
    """An open_clip model built by openclip_tower.build_openclip_model (any OpenClipConfig-like cfg)."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.model, self.arch = build_openclip_model(cfg)
        self.source = Path(cfg.checkpoint).expanduser() if cfg.checkpoint else None

    def expected_size(self) -> int:
        size = self.model.visual.image_size
        return int(size if isinstance(size, int) else size[0])

    def activation(self) -> str:
        return "quick_gelu" if uses_quick_gelu(self.model) else "gelu"

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        import open_clip

        pp = open_clip.get_model_preprocess_cfg(self.model)
        return tuple(float(x) for x in pp["mean"]), tuple(float(x) for x in pp["std"])

    def tokenizer(self, prompt: str) -> PromptTokenizer:
        import open_clip

        ctx = int(getattr(self.model, "context_length", 0) or 77)
        return PromptTokenizer(OpenClipTokenizer(open_clip.get_tokenizer(self.arch, context_length=ctx), ctx), prompt)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.check_size(images)
        return self.model.encode_image(images)

    def encode_text(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(text["input_ids"])

    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale


def _hf_weights_file(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin", "flax_model.msgpack"):
        if (folder / name).is_file():
            return folder / name
    return None


class HfTokenizer:
    """Picklable: captions -> input_ids/attention_mask; SigLIP pads to max_length as it was trained."""

    def __init__(self, tokenizer: Any, max_len: int, pad_to_max: bool):
        self.tokenizer, self.max_len, self.pad_to_max = tokenizer, max_len, pad_to_max

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(captions), padding="max_length" if self.pad_to_max else True, truncation=True,
                             max_length=self.max_len, return_tensors="pt")
        out = {"input_ids": enc["input_ids"]}
        if "attention_mask" in enc:
            out["attention_mask"] = enc["attention_mask"]
        return out


def _features(out: Any) -> torch.Tensor:
    """transformers < 5 returns the projected features; >= 5 a ModelOutput with them as pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HfTower(ClipTower):
    """A transformers CLIPModel or SiglipModel from a local folder (never downloads)."""

    def __init__(self, folder: str | Path, entry: ZooEntry | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UserError(f"{path}: not a folder (a transformers CLIP/SigLIP model saved with save_pretrained)")
        try:
            cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
            self.kind = cfg.model_type
            if self.kind not in HF_KINDS:
                raise UserError(f"{path}: model_type '{self.kind}' is not a CLIP or SigLIP model")
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True)
            self._tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: cannot load the transformers model ({one_line(e, 160)})") from None
        self.source, self.entry = path, entry
        self._pp = _read_preprocessor(path)

    def expected_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def activation(self) -> str:
        return str(self.model.config.vision_config.hidden_act)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if "image_mean" in self._pp and "image_std" in self._pp:
            return tuple(map(float, self._pp["image_mean"])), tuple(map(float, self._pp["image_std"]))
        if self.entry is not None:
            return self.entry.mean, self.entry.std
        return ((0.5,) * 3, (0.5,) * 3) if self.kind == "siglip" else (OPENAI_MEAN, OPENAI_STD)

    def tokenizer(self, prompt: str) -> PromptTokenizer:
        max_len = int(self.model.config.text_config.max_position_embeddings)
        return PromptTokenizer(HfTokenizer(self._tok, max_len, self.kind == "siglip"), prompt)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.check_size(images)
        return _features(self.model.get_image_features(pixel_values=images))

    def encode_text(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = text.get("attention_mask") if self.kind == "clip" else None  # SigLIP is trained without a mask
        return _features(self.model.get_text_features(input_ids=text["input_ids"], attention_mask=mask))

    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale


def _read_preprocessor(folder: Path) -> dict[str, Any]:
    f = folder / "preprocessor_config.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{f}: cannot read ({one_line(e)})") from None
    return data if isinstance(data, dict) else {}


@dataclass
class OpenClipArgs:
    """What build_openclip_model reads (the subset of OpenClipConfig a tower needs)."""

    model: str = ""
    checkpoint: str = ""
    strict: bool = True
    pretrained: str = ""
    model_config: str = ""
    force_image_size: int = 0


def build_zoo_tower(entry: ZooEntry, weights_dir: str | Path, strict: bool = True) -> ClipTower:
    """The entry's model with its weights loaded (architecture, activation and preprocessing from the entry)."""
    path = find_weights(entry, weights_dir)
    if entry.loader == "openclip":
        return OpenClipTower(OpenClipArgs(entry.arch, str(path), strict))
    return HfTower(path, entry)


def build_tower(cfg: Any) -> ClipTower:
    """A tower from a config with zoo/weights_dir, hf_folder, or open_clip fields (first one set wins)."""
    if cfg.zoo:
        return build_zoo_tower(get_entry(cfg.zoo), cfg.weights_dir)
    if cfg.hf_folder:
        return HfTower(cfg.hf_folder)
    return OpenClipTower(OpenClipArgs(cfg.model, cfg.checkpoint, True, cfg.pretrained, cfg.model_config,
                                      cfg.force_image_size))
