"""An open_clip model as a tower rsbench can train: architecture registry, strict weight loading, tokenizer.

Weights are read without unpickling arbitrary objects (safetensors, or torch.load(weights_only=True));
a missing, truncated, foreign or mismatching file is a UserError naming the file. See docs/openclip.md.
The method itself (config, presets, loss) is rsbench/methods/openclip.py.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import UserError, one_line, suggest, unknown
from ...io import write_json
from .backbones import load_state_dict_file

DEFAULT_MODEL = "ViT-B-32"

# Architectures we ship (registered with open_clip on first use). rsbench-tiny is CPU-sized for the
# synthetic set: a 4-layer ViT on 64 px (patch 8) and a 2-layer text transformer with 32 tokens.
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "rsbench-tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
    },
}
_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_registered: set[str] = set()


# ---- architecture registry -----------------------------------------------------------------------

def _add_config_path(path: Path) -> None:
    import open_clip

    key = str(path.resolve())
    if key not in _registered:
        open_clip.add_model_config(path)
        _registered.add(key)


def _register_builtin(name: str) -> None:
    """Write a shipped architecture to a private temp folder once per process and register it."""
    import open_clip

    if name in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="rsbench-openclip-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / f"{name}.json"
    write_json(path, BUILTIN_CONFIGS[name])
    _add_config_path(path)


def _check_config_file(path: Path) -> None:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UserError(f"{path}: cannot read open_clip model config ({one_line(e)})") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in _REQUIRED_KEYS):
        raise UserError(f"{path}: not an open_clip model config (needs keys {', '.join(_REQUIRED_KEYS)})")


def resolve_architecture(model: str, model_config: str) -> str:
    """Register `model_config` (if any) and return the architecture name to build."""
    import open_clip

    name = model
    if model_config:
        path = Path(model_config).expanduser()
        if path.is_file():
            _check_config_file(path)
            if model and model != path.stem:
                raise UserError(f"{path}: defines architecture '{path.stem}' but model='{model}'; "
                                f"set model={path.stem} or leave model empty")
            name = path.stem
        elif not path.is_dir():
            raise UserError(f"{path}: model_config not found (a JSON file or a folder of them)")
        _add_config_path(path)
    name = (name or DEFAULT_MODEL).replace("/", "-")  # accept OpenAI's 'ViT-B/32' spelling
    if name in BUILTIN_CONFIGS:
        _register_builtin(name)
    if name not in open_clip.list_models():
        raise unknown("open_clip model", name, open_clip.list_models())
    return name


# ---- checkpoint loading ----------------------------------------------------------------------------

def _normalise_keys(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the layouts checkpoints come in onto the model's own key names (open_clip's conversions)."""
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    own = model.state_dict()
    if all(k.startswith("model.") for k in sd) and not any(k.startswith("model.") for k in own):
        sd = {k.removeprefix("model."): v for k, v in sd.items()}  # our own best.safetensors
    if "positional_embedding" in sd and "positional_embedding" not in own:
        sd = convert_to_custom_text_state_dict(sd)  # old CLIP layout -> CustomTextCLIP (text.*)
    for key in ("logit_scale", "logit_bias"):
        if key in sd and key in own and sd[key].numel() == own[key].numel():
            sd[key] = sd[key].reshape(own[key].shape)
    sd.pop("text.transformer.embeddings.position_ids", None)
    for resize in (resize_pos_embed, resize_text_pos_embed):
        try:  # a different input size / context length: interpolate, as open_clip does
            resize(sd, model)
        except (AssertionError, RuntimeError, ValueError) as e:  # widths differ: the shape check reports it
            logging.getLogger(__name__).debug("position embedding not resized: %s", e)
    return sd


def load_openclip_weights(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, int]:
    """Load a weights file into an open_clip model; UserError naming the file on any mismatch."""
    sd = _normalise_keys(model, load_state_dict_file(path))
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    counts = {"loaded": len(sd) - len(unexpected) - len(mismatched), "missing": len(missing),
              "unexpected": len(unexpected), "mismatched": len(mismatched)}
    summary = (f"{counts['missing']} missing, {counts['unexpected']} unexpected, "
               f"{counts['mismatched']} shape-mismatched keys of {len(own)}")
    example = (mismatched or missing or unexpected or [""])[0]
    if counts["loaded"] == 0 or (strict and (missing or unexpected or mismatched)):
        raise UserError(f"{path}: does not match this open_clip architecture ({summary}, e.g. '{example}'); "
                        "check model=..., or set strict=false to load the matching part")
    if missing or unexpected or mismatched:
        logging.getLogger(__name__).warning("%s: partial load (%s)", path, summary)
    model.load_state_dict({k: v for k, v in sd.items() if k in own and k not in mismatched}, strict=False)
    return counts


def build_openclip_model(cfg: Any) -> tuple[nn.Module, str]:
    """Create the architecture (random init, a pretrained tag, or a local checkpoint).

    `cfg`: an rsbench.methods.openclip.OpenClipConfig (model, model_config, checkpoint, pretrained,
    strict, force_image_size).
    """
    import open_clip

    if cfg.checkpoint and cfg.pretrained:
        raise UserError("set either checkpoint=PATH or pretrained=TAG for openclip, not both")
    name = resolve_architecture(cfg.model, cfg.model_config)
    if cfg.pretrained:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if Path(cfg.pretrained).expanduser().exists():
            raise UserError(f"pretrained='{cfg.pretrained}' is a file: pass it as checkpoint=PATH")
        if cfg.pretrained not in tags:
            raise UserError(f"unknown open_clip pretrained tag '{cfg.pretrained}' for '{name}'"
                            f"{suggest(cfg.pretrained, tags)}; known tags: {', '.join(tags) or 'none'}")
    kwargs: dict[str, Any] = {"pretrained_hf": False}  # never fetch HF text-tower weights unasked
    if cfg.force_image_size:
        kwargs["force_image_size"] = cfg.force_image_size
    if cfg.checkpoint and not Path(cfg.checkpoint).expanduser().is_file():
        raise UserError(f"{cfg.checkpoint}: checkpoint file not found")
    prev_disable = logging.root.manager.disable
    if cfg.checkpoint:  # open_clip would warn "initialized randomly" although our weights follow
        logging.disable(logging.WARNING)
    try:
        model = open_clip.create_model(name, pretrained=cfg.pretrained or None, **kwargs)
    except (RuntimeError, OSError, ValueError) as e:
        if cfg.pretrained:
            raise UserError(f"cannot get open_clip weights '{cfg.pretrained}' for '{name}' "
                            f"({one_line(e, 160)}); download the file elsewhere and pass "
                            "checkpoint=PATH") from None
        raise UserError(f"cannot build open_clip model '{name}': {one_line(e, 200)}") from None
    finally:
        logging.disable(prev_disable)
    if cfg.checkpoint:
        check_activation(model, name, Path(cfg.checkpoint).expanduser())
        load_openclip_weights(model, Path(cfg.checkpoint).expanduser(), strict=cfg.strict)
    return model, name


def uses_quick_gelu(model: nn.Module) -> bool:
    """True when the towers use QuickGELU (what OpenAI-initialised CLIP weights were trained with)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def check_activation(model: nn.Module, name: str, path: Path) -> None:
    """Refuse a known zoo checkpoint in an architecture with the wrong activation (silently worse scores).

    open_clip >= 2.29 builds plain 'ViT-B-32' with GELU, but RemoteCLIP/GeoRSCLIP ViT-B-32 were trained
    with QuickGELU: loading one into the other gives no error, only lower numbers.
    """
    from .zoo_catalogue import entry_for_file

    entry = entry_for_file(path)
    if entry is None or entry.loader != "openclip":
        return
    if (entry.activation == "quick_gelu") != uses_quick_gelu(model):
        raise UserError(f"{path}: {entry.family} weights were trained with {entry.activation}, but open_clip "
                        f"model '{name}' uses {'quick_gelu' if uses_quick_gelu(model) else 'gelu'}; set "
                        f"model={entry.arch} or use --methods {entry.method_name}")


# ---- tokenizer ---------------------------------------------------------------------------------------

class OpenClipTokenizer:
    """Picklable: captions -> {"input_ids": (B, context_length) long} with the model's own tokenizer."""

    def __init__(self, tokenizer: Any, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(captions), context_length=self.context_length)
        return {"input_ids": ids.long()}
