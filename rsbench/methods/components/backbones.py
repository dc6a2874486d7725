"""Image backbones through timm, with honest handling of pretrained weights.

`pretrained=True` asks timm for its ImageNet weights (downloaded on the user's machine, or from the
HF cache); `weights=PATH` loads a local file (.safetensors, or a .pth/.bin state dict read with
weights_only), strictly unless a partial load is asked for. If weights were asked for and cannot be
had, we fail clearly instead of silently training from random (or mostly random) initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import UserError, one_line


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
        raise UserError(f"{path}: cannot read weights safely ({one_line(e, 200)})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def create_backbone(name: str, pretrained: bool = False, weights: str | None = None, partial: bool = False,
                    **kwargs: Any) -> nn.Module:
    """timm.create_model with clear errors. kwargs go to timm (features_only, out_indices, ...).

    A local weights file loads strictly: every tensor of the model must come from the file with its
    shape, else a one-line refusal; `partial=True` accepts a partial load. Where the weights came
    from (timm tag or file, and the key counts) is left on the model as `rsbench_weights`, which
    RetrievalMethod.weight_provenance() collects for run.json.
    """
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        from ...errors import unknown

        raise unknown("timm backbone", name, timm.list_models())
    use_hub = pretrained and not weights
    try:
        model = timm.create_model(name, pretrained=use_hub, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if use_hub:
            raise UserError(
                f"cannot get pretrained weights for '{name}' ({one_line(e, 120)}); "
                "pass backbone_weights=PATH or set pretrained=false"
            ) from None
        raise
    if weights:
        info = load_backbone_weights(model, weights, name, partial)
    elif use_hub:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        # timm itself loads its weights strictly (all but a classifier it was asked to drop)
        info = {"source": "timm", "tag": f"{cfg.get('architecture', name)}.{cfg.get('tag', '')}".rstrip("."),
                "hf_hub_id": cfg.get("hf_hub_id", ""), "strict": True, "loaded": len(model.state_dict()),
                "missing": 0, "unexpected": 0}
    else:
        info = {"source": "random init", "tag": "", "loaded": 0}
    model.rsbench_weights = {"backbone": name, **info}
    return model


def _match_keys(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, str]:
    """File key -> model key. A features_only model renames nested stages ('stages.0' -> 'stages_0')
    or wraps the network ('model.'), so each file key is tried in those spellings too."""
    out: dict[str, str] = {}
    for k in sd:
        for cand in (k, k.replace(".", "_", 1), f"model.{k}"):
            if cand in own and cand not in out.values():
                out[k] = cand
                break
    return out


def load_backbone_weights(model: nn.Module, weights: str | Path, name: str, partial: bool) -> dict[str, Any]:
    """Load a local file into a backbone; strict unless `partial`. Returns the key counts."""
    sd = load_state_dict_file(weights)
    own = model.state_dict()
    mapping = _match_keys(sd, own)
    shape_bad = sorted(k for k, m in mapping.items() if tuple(sd[k].shape) != tuple(own[m].shape))
    good = {m: sd[k] for k, m in mapping.items() if k not in shape_bad}
    missing = sorted(set(own) - set(good))
    unexpected = len(sd) - len(mapping)
    if not good:
        raise UserError(f"{weights}: no tensor matches backbone '{name}' (is it the right architecture?)")
    if (missing or shape_bad) and not partial:
        what = f"{len(shape_bad)} tensor(s) have another shape than the backbone's (first: {shape_bad[0]})" \
            if shape_bad else f"{len(missing)} of the backbone's {len(own)} tensors are not in the file " \
            f"(first: {missing[0]})"
        raise UserError(f"{weights}: {what}; is it the right architecture for '{name}'? "
                        "Set backbone_partial=true to accept a partial load")
    model.load_state_dict(good, strict=False)
    return {"source": "file", "file": str(weights), "tag": "", "strict": not partial, "loaded": len(good),
            "missing": len(missing), "unexpected": unexpected, "shape_mismatch": len(shape_bad)}
