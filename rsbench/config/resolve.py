"""Resolve the config of one (method, dataset, seed) cell.

Order (later wins): TrainConfig defaults -> the method's preset -> config file -> CLI flags
(--epochs ...) -> --set. Keys may be scoped to one method with a `<method>.` prefix; unscoped
keys must be valid for every method of the run. Model keys may also be written `model.<key>`;
training keys `train.<key>` or bare when no model option has that name.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import UserError, suggest
from ..methods.registry import get_method_spec, list_methods
from .overlay import all_keys, has_key, set_key
from .schema import RunConfig, TrainConfig, check_fields

PRESETS = ("small", "paper")


def resolve_preset(preset: str, dataset: str, method: str | None = None) -> str:
    """'auto' means the CPU-sized preset on the synthetic set and the paper settings on real data.
    Besides small/paper, a method may declare its own presets (e.g. ret2): valid for that method only."""
    if preset == "auto":
        return "small" if dataset == "synthetic" else "paper"
    if preset in PRESETS:
        return preset
    declared = {m.name: m.presets for m in list_methods()}
    if method is not None and preset in declared.get(method, {}):
        return preset
    owners = sorted(name for name, presets in declared.items() if preset in presets)
    if owners:
        shown = ", ".join(owners[:4]) + (f" and {len(owners) - 4} more" if len(owners) > 4 else "")
        own = [p for p in declared.get(method or "", {}) if p not in PRESETS]
        raise UserError(f"method '{method}' has no preset '{preset}' (declared by: {shown}); its presets: "
                        f"auto, {', '.join([*PRESETS, *own])}")
    names = sorted({*PRESETS, *(p for presets in declared.values() for p in presets)})
    raise UserError(f"unknown preset '{preset}'{suggest(preset, names)}; choose from: auto, {', '.join(names)}")


def _close_key(key: str, valid: list[str]) -> str:
    """' (did you mean X?)' with the full key: 'lrr' is closest to the training key 'lr', so 'train.lr'."""
    import difflib

    bare = {k.removeprefix("train."): k for k in reversed(valid)}  # a model key wins over train.<same>
    for pool in (valid, list(bare)):
        close = difflib.get_close_matches(key, pool, n=1, cutoff=0.5)
        if close:
            return f" (did you mean '{bare.get(close[0], close[0])}'?)"
    return ""


def _apply(cfg: RunConfig, key: str, value: Any, where: str) -> None:
    method_names = {m.name for m in list_methods()}
    head, _, rest = key.partition(".")
    if head in method_names and rest:
        if head != cfg.method:
            return
        key = rest
        head, _, rest = key.partition(".")
    if key == "display_name":  # not a model key: the printed name of the method (tables, figures)
        cfg.display_name = str(value).strip()
    elif head == "train" and rest:
        set_key(cfg.train, rest, value, where, prefix="train.")
    elif head == "model" and rest:
        set_key(cfg.model, rest, value, where)
    elif has_key(cfg.model, key):
        set_key(cfg.model, key, value, where)
    elif has_key(cfg.train, key):
        set_key(cfg.train, key, value, where)
    else:
        valid = all_keys(cfg.model) + ["train." + k for k in all_keys(cfg.train)]
        hint = _close_key(key, valid)
        src = f" in {where}" if where else ""
        raise UserError(f"unknown option '{key}' for method '{cfg.method}'{src}{hint}; "
                        f"see `bench methods --verbose` for the valid keys")


def resolve_config(
    method: str,
    dataset: str,
    seed: int = 0,
    preset: str = "auto",
    file_keys: dict[str, Any] | None = None,
    cli_train: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    spec = get_method_spec(method)
    preset = resolve_preset(preset, dataset, method)
    cfg = RunConfig(method=method, dataset=dataset, seed=seed, preset=preset, train=TrainConfig(),
                    model=spec.config_cls())
    for k, v in spec.presets.get(preset, {}).items():
        _apply(cfg, k, copy.deepcopy(v), f"preset '{preset}' of {method}")
    for k, v in (file_keys or {}).items():
        _apply(cfg, k, v, "config file")
    for k, v in (cli_train or {}).items():
        if v is not None:
            set_key(cfg.train, k, v, "command line")
    for k, v in (overrides or {}).items():
        _apply(cfg, k, v, "--set")
    validate_config(cfg)
    return cfg


def validate_config(cfg: RunConfig) -> None:
    """Every value of a resolved cell config, training and model alike (one-line UserError)."""
    check_fields(cfg.train, "train.")
    check_fields(cfg.model, "model.")

