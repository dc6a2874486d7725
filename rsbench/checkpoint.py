"""Checkpoints that never unpickle arbitrary objects.

best: `best.safetensors` (weights) + `best.json` (epoch, val metrics, method text state).
last: `last.pt` resume state (weights, optimiser, scheduler, log), read with weights_only=True.
Both written atomically; a tampered or foreign file is refused with a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .io import read_json, write_bytes, write_json, write_with


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_best(folder: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save

    write_bytes(folder / "best.safetensors", save(_cpu_state(model)))
    write_json(folder / "best.json", meta)


def load_best(folder: Path, model: torch.nn.Module) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / "best.safetensors"
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a valid safetensors checkpoint ({e})") from None
    _load_strict(model, state, path)
    return read_json(folder / "best.json")


def _load_strict(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:200]
        raise UserError(f"{path}: checkpoint does not match the model ({first})") from None


def save_resume(path: Path, state: dict[str, Any]) -> None:
    write_with(path, lambda f: torch.save(state, f))


def load_resume(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusal, truncation, foreign format
        raise UserError(f"{path}: refusing to load resume state ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(f"{path}: not an rsbench resume checkpoint")
    return state


def restore_model(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    _load_strict(model, state, path)
