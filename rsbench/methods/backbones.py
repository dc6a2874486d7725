"""Image backbones through timm, with honest handling of pretrained weights.

`pretrained=True` asks timm for its ImageNet weights (downloaded on the user's machine, or from the
HF cache); `weights=PATH` loads a local file (.safetensors, or a .pth/.bin state dict read with
weights_only). If weights were asked for and cannot be had, we fail clearly instead of silently
training from random initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError, first_line


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read (pickle refusal, truncation, foreign format) is a refusal
        raise UserError(f"{path}: cannot read weights safely ({first_line(e, 200)})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """timm.create_model with clear errors. kwargs go to timm (features_only, out_indices, ...)."""
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        from ..errors import unknown

        raise unknown("timm backbone", name, timm.list_models())
    use_hub = pretrained and not weights
    try:
        model = timm.create_model(name, pretrained=use_hub, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if use_hub:
            raise UserError(
                f"cannot get pretrained weights for '{name}' ({first_line(e, 120)}); "
                "pass backbone_weights=PATH or set pretrained=false"
            ) from None
        raise
    if weights:
        sd = load_state_dict_file(weights)
        _missing, unexpected = model.load_state_dict(sd, strict=False)
        loaded = len(sd) - len(unexpected)
        if loaded == 0:
            raise UserError(f"{weights}: no tensor matches backbone '{name}' (is it the right architecture?)")
    return model
