"""Configs as dataclasses, with a strict dotted-key overlay (`--set key=value`, presets, config files).

Unknown keys are rejected with a suggestion instead of being swallowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as the `tomli` package (a dependency there, see pyproject.toml)
    import tomli as tomllib

from ..errors import UserError, first_line, suggest


@dataclass
class TrainConfig:
    """Optimisation and data-pipeline settings shared by every method."""

    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 256
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 2e-4
    weight_decay: float = 0.0
    lr_step: int = 0  # multiply the lr by lr_gamma every lr_step epochs (0: constant)
    lr_gamma: float = 0.1
    grad_clip: float = 2.0  # max grad norm (0: off)
    image_size: int = 224
    resize: int = 0  # resize before the random crop (0: about image_size * 1.09)
    augment: str = "crop,flip"  # comma list of crop, flip, rotate ('' or 'none': off)
    sampling: str = "caption"  # caption: every caption once per epoch; image: one random caption per image
    num_workers: int = -1  # -1: sized to the machine
    amp: str = "auto"  # auto (bf16/fp16 on GPU, off on CPU) | bf16 | fp16 | off
    compile: bool = False
    channels_last: bool = True  # on GPU, for CNN backbones
    image_cache: bool = False  # decode+resize images once into a memory-mapped uint8 array
    val_every: int = 1
    patience: int = 0  # stop after this many validations without improvement (0: off)
    select_metric: str = "mR"  # validation metric used to select the checkpoint (never test)

    def validate(self) -> None:
        """Ranges and choices the runner relies on, checked at resolution so a bad value fails before
        any data is loaded (not after an epoch). The type-level checks are in check_fields()."""
        from ..evaluation.metrics import METRIC_DIRECTION

        require_at_least(self, "train.", {"epochs": 0, "batch_size": 2, "eval_batch_size": 1, "image_size": 16,
                                          "val_every": 1, "num_workers": -1})
        require_above(self, "train.", ("lr",))
        choices = {"optimizer": ("adam", "adamw", "sgd"), "sampling": ("caption", "image"),
                   "amp": ("auto", "bf16", "fp16", "off"), "select_metric": tuple(METRIC_DIRECTION)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"train.{key} '{getattr(self, key)}'{suggest(getattr(self, key), allowed)} "
                                f"not in {', '.join(allowed)}")
        bad = {a.strip() for a in self.augment.split(",") if a.strip()} - {"crop", "flip", "rotate", "none"}
        if bad:
            raise UserError(f"train.augment: unknown augmentation(s) {', '.join(sorted(bad))}; use crop, flip, rotate")


def require_at_least(obj: Any, prefix: str, minimum: dict[str, float]) -> None:
    """Each named field must be >= its minimum (one-line UserError naming the dotted key)."""
    for key, low in minimum.items():
        value = getattr(obj, key)
        if value < low:
            raise UserError(f"{prefix}{key} must be >= {low:g}, got {value!r}")


def require_above(obj: Any, prefix: str, keys: tuple[str, ...], low: float = 0.0) -> None:
    """Each named field must be strictly greater than `low` (a temperature, a learning rate)."""
    for key in keys:
        value = getattr(obj, key)
        if not value > low:
            raise UserError(f"{prefix}{key} must be > {low:g}, got {value!r}")


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _check_field(key: str, value: Any, tp: Any, default: Any) -> None:
    """None only where the type allows it; numbers are finite, not bools, and not negative when the
    default is not (a negative default such as -1 is a sentinel and is the lowest value allowed)."""
    if value is None:
        if not _is_optional(tp) and tp is not Any:
            raise UserError(f"{key}: a value is required, got none")
        return
    tp = _strip_optional(tp)
    if tp not in (int, float):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{key}: must be a finite number, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        low = min(default, 0)
        if value < low:
            raise UserError(f"{key} must be >= {low:g}, got {value!r}")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Type-level checks of every field of a (nested) config dataclass, then its own validate()."""
    fmap = _field_map(obj)
    for name, f in fmap.items():
        value = getattr(obj, name)
        if is_dataclass(value):
            check_fields(value, f"{prefix}{name}.")
        else:
            _check_field(prefix + name, value, f.type, _field_default(f))
    if hasattr(obj, "validate"):
        obj.validate()


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def parse_value(raw: Any, tp: Any, key: str) -> Any:
    """Convert a string (or JSON/TOML value) to the field's declared type, or raise UserError."""
    optional = _is_optional(tp)
    tp = _strip_optional(tp)
    if not isinstance(raw, str):
        if raw is None and optional:
            return None
        if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
            return float(raw)
        if tp in (int, float, str, bool) and (not isinstance(raw, tp) or (tp is int and isinstance(raw, bool))):
            raise UserError(f"bad value for '{key}': {raw!r} is not {tp.__name__}")
        return raw
    text = raw.strip()
    if text.lower() in ("none", "null") and tp is not str and optional:
        return None
    try:
        if tp is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
        if typing.get_origin(tp) in (list, tuple):
            (inner,) = typing.get_args(tp)[:1]
            return [parse_value(v, inner, key) for v in text.split(",") if v.strip()]
    except ValueError:
        name = getattr(tp, "__name__", str(tp))
        raise UserError(f"bad value for '{key}': {raw!r} is not a valid {name}") from None
    return text


def _field_map(obj: Any) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(type(obj))
    out = {}
    for f in fields(obj):
        f.type = hints.get(f.name, f.type)
        out[f.name] = f
    return out


def has_key(obj: Any, dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    fmap = _field_map(obj)
    if head not in fmap:
        return False
    if not rest:
        return not is_dataclass(getattr(obj, head))
    child = getattr(obj, head)
    return is_dataclass(child) and has_key(child, rest)


def all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        if is_dataclass(v):
            keys += all_keys(v, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def set_key(obj: Any, dotted: str, raw: Any, where: str = "") -> None:
    """Set a dotted key on a (nested) dataclass, parsing the value to the field type."""
    head, _, rest = dotted.partition(".")
    fmap = _field_map(obj)
    if head not in fmap or (rest and not is_dataclass(getattr(obj, head))):
        src = f" in {where}" if where else ""
        raise UserError(
            f"unknown option '{dotted}'{src}{suggest(dotted, all_keys(obj))}; valid: {', '.join(all_keys(obj))}"
        )
    if rest:
        set_key(getattr(obj, head), rest, raw, where)
        return
    if is_dataclass(getattr(obj, head)):
        raise UserError(f"option '{dotted}' is a group; set one of its keys, e.g. '{dotted}.<key>=...'")
    setattr(obj, head, parse_value(raw, fmap[head].type, dotted))


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """Parse repeated `--set key=value` options."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad --set '{item}': expected key=value")
        out[key.strip()] = value
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into flat dotted keys."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot parse config ({first_line(e)})") from None
    except RecursionError:
        raise UserError(f"{path}: cannot parse config (nested too deeply)") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: config must be a table/object of key = value")
    return flatten(data)


@dataclass
class RunConfig:
    """Everything one (method, dataset, seed) cell needs; written as config.json in the cell folder."""

    method: str
    dataset: str
    seed: int = 0
    preset: str = "small"
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Any = None  # the method's own config dataclass
