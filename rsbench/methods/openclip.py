"""Any open_clip model and checkpoint: RemoteCLIP, GeoRSCLIP, OpenAI/LAION CLIP, or a custom architecture.

Zero-shot evaluation (`--epochs 0`) and contrastive fine-tuning with the model's own logit_scale. The
model's own preprocessing mean/std and tokenizer are used, so scores match the checkpoint's training.

Weights are read without unpickling arbitrary objects (safetensors, or torch.load(weights_only=True));
a missing, truncated, foreign or mismatching file is a UserError naming the file. See docs/openclip.md.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..contracts import require_above
from ..errors import UserError, first_line, suggest, unknown
from ..io import write_json
from .components.backbones import load_state_dict_file
from .base import Batch, LossOutput, MethodContext, RetrievalMethod, Tokenizer
from .components.contrastive import PromptTokenizer, check_same_image_mode, decay_param_groups, info_nce
from .registry import register_method

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


@dataclass
class OpenClipConfig:
    """Options of the `openclip` method (set with --set key=value)."""

    model: str = ""  # open_clip architecture (ViT-B-32, RN50, ViT-L-14...); '' = ViT-B-32, or model_config's
    checkpoint: str = ""  # local weights file (.pt/.pth/.bin state dict or .safetensors)
    pretrained: str = ""  # an open_clip pretrained tag (e.g. 'openai', 'laion2b_s34b_b79k'); needs internet
    model_config: str = ""  # JSON architecture file (its stem names it) or a folder of them
    strict: bool = True  # refuse a checkpoint with missing/unexpected/mis-shaped keys
    force_image_size: int = 0  # build the vision tower for this input size (0: the architecture's own)
    prompt: str = ""  # e.g. "a satellite image of" prepended to every caption ('' = off)
    same_image: str = "mask"  # mask | positive: how two batch rows of the same image are treated
    learn_temperature: bool = True  # fine-tune the model's logit_scale
    max_logit_scale: float = 100.0  # clamp of the logit scale, as in CLIP

    def validate(self) -> None:
        """Checked at resolution (rsbench.config.check_fields), before any data is loaded."""
        require_above(self, "model.", ("max_logit_scale",))


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
        raise UserError(f"{path}: cannot read open_clip model config ({first_line(e)})") from None
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
        sd = {k.removeprefix("model."): v for k, v in sd.items()}  # an rsbench best.safetensors of this method
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


def build_openclip_model(cfg: OpenClipConfig) -> tuple[nn.Module, str]:
    """Create the architecture (random init, a pretrained tag, or a local checkpoint)."""
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
                            f"({first_line(e, 160)}); download the file elsewhere and pass "
                            "checkpoint=PATH") from None
        raise UserError(f"cannot build open_clip model '{name}': {first_line(e, 200)}") from None
    finally:
        logging.disable(prev_disable)
    if cfg.checkpoint:
        load_openclip_weights(model, Path(cfg.checkpoint).expanduser(), strict=cfg.strict)
    return model, name


# ---- tokenizer ---------------------------------------------------------------------------------------

class OpenClipTokenizer:
    """Picklable: captions -> {"input_ids": (B, context_length) long} with the model's own tokenizer."""

    def __init__(self, tokenizer: Any, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(captions), context_length=self.context_length)
        return {"input_ids": ids.long()}


# ---- the method ----------------------------------------------------------------------------------------

def _visual_is_cnn(visual: nn.Module) -> bool:
    """ModifiedResNet and timm CNN towers are CNNs; open_clip/timm ViTs are not (channels_last only helps CNNs)."""
    if hasattr(visual, "class_embedding"):  # open_clip VisionTransformer
        return False
    trunk = getattr(visual, "trunk", None)
    return not hasattr(trunk, "patch_embed")


@register_method(
    "openclip",
    "Any open_clip model/checkpoint (RemoteCLIP, GeoRSCLIP, CLIP): zero-shot with --epochs 0, or "
    "contrastive fine-tuning",
    presets={
        # CPU-sized: the shipped rsbench-tiny architecture from random init, 64 px.
        "small": {
            "model": "rsbench-tiny",
            "train.epochs": 5,  # val mR ~55-62 from epoch 2 on the synthetic set (chance ~12)
            "train.batch_size": 32,
            "train.optimizer": "adamw",
            "train.lr": 5e-4,
            "train.weight_decay": 0.05,
            "train.image_size": 64,
        },
        # Fine-tuning a RemoteCLIP/GeoRSCLIP/CLIP ViT-B-32 checkpoint at 224 px with AdamW, lr 5e-6 (the
        # GeoRSCLIP authors' RSICD/RSITMD fine-tuning lr, om-ai-lab/RS5M issue #12: lr 5e-6, wd 0.5,
        # batch 600, 7 epochs) and CLIP's weight decay 0.2, batch 128 to fit one GPU, 10 epochs with
        # the checkpoint selected on val; the image size must match the architecture (336 for *-336).
        "paper": {
            "model": "ViT-B-32",
            "train.epochs": 10,
            "train.batch_size": 128,
            "train.optimizer": "adamw",
            "train.lr": 5e-6,
            "train.weight_decay": 0.2,
            "train.grad_clip": 50.0,
            "train.image_size": 224,
        },
    },
)
class OpenClipMethod(RetrievalMethod):
    """An open_clip CLIP/CustomTextCLIP as a dual encoder; fine-tuned with symmetric InfoNCE."""

    config_cls = OpenClipConfig

    def __init__(self, config: OpenClipConfig, context: MethodContext):
        super().__init__(config, context)
        check_same_image_mode(config.same_image)
        self.model, self.arch = build_openclip_model(config)
        self.model.logit_scale.requires_grad_(config.learn_temperature)
        self.is_cnn = _visual_is_cnn(self.model.visual)

    def _expected_size(self) -> tuple[int, int] | None:
        size = getattr(self.model.visual, "image_size", None)
        if size is None:
            return None
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    # ---- data side -------------------------------------------------------------------------
    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        import open_clip

        pp = open_clip.get_model_preprocess_cfg(self.model)
        return tuple(float(x) for x in pp["mean"]), tuple(float(x) for x in pp["std"])

    def tokenizer(self) -> Tokenizer:
        import open_clip

        ctx = int(getattr(self.model, "context_length", 0) or 77)
        inner = OpenClipTokenizer(open_clip.get_tokenizer(self.arch, context_length=ctx), ctx)
        return PromptTokenizer(inner, self.config.prompt)

    # ---- model side ------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        want = self._expected_size()
        if want is not None and tuple(images.shape[-2:]) != want:
            raise UserError(f"open_clip model '{self.arch}' takes {want[0]}x{want[1]} images, got "
                            f"{images.shape[-2]}x{images.shape[-1]}; set train.image_size={want[0]} "
                            f"(or force_image_size={images.shape[-1]})")
        return self.model.encode_image(images)

    def encode_texts(self, text: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.encode_text(text["input_ids"])

    def training_loss(self, batch: Batch) -> LossOutput:
        scale = self.model.logit_scale.float().exp().clamp(max=self.config.max_logit_scale).reshape(())
        loss = info_nce(self.encode_images(batch.images), self.encode_texts(batch.text), scale,
                        batch.image_ids, self.config.same_image, self.context.gather)
        return LossOutput(loss, {"logit_scale": scale.detach()})

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return decay_param_groups(self, lr, weight_decay)
