"""The strict dotted-key overlay on config dataclasses: `--set key=value`, presets, config files.

Unknown keys are rejected with a suggestion instead of being swallowed; values are parsed to the
field's declared type. Pure dataclass plumbing: what a value may be is config/schema.py's job.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as the `tomli` package (a dependency there, see pyproject.toml)
    import tomli as tomllib

from ..errors import UserError, one_line, suggest


def is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def parse_value(raw: Any, tp: Any, key: str) -> Any:
    """Convert a string (or JSON/TOML value) to the field's declared type, or raise UserError."""
    optional = is_optional(tp)
    tp = strip_optional(tp)
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


def field_map(obj: Any) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(type(obj))
    out = {}
    for f in fields(obj):
        f.type = hints.get(f.name, f.type)
        out[f.name] = f
    return out


def has_key(obj: Any, dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    fmap = field_map(obj)
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


def set_key(obj: Any, dotted: str, raw: Any, where: str = "", prefix: str = "") -> None:
    """Set a dotted key on a (nested) dataclass, parsing the value to the field type; `prefix` (e.g.
    "train.") is how the user wrote the keys of `obj`, so an error names the full key."""
    head, _, rest = dotted.partition(".")
    fmap = field_map(obj)
    if head not in fmap or (rest and not is_dataclass(getattr(obj, head))):
        src = f" in {where}" if where else ""
        keys = [prefix + k for k in all_keys(obj)]
        raise UserError(f"unknown option '{prefix}{dotted}'{src}{suggest(prefix + dotted, keys)}; valid: {', '.join(keys)}")
    if rest:
        set_key(getattr(obj, head), rest, raw, where, prefix + head + ".")
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
        raise UserError(f"{path}: cannot parse config ({one_line(e)})") from None
    except RecursionError:
        raise UserError(f"{path}: cannot parse config (nested too deeply)") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: config must be a table/object of key = value")
    return flatten(data)


def fill(obj: Any, values: dict[str, Any]) -> Any:
    """Set a dataclass instance's fields from a dict (recursing into nested dataclasses): the
    inverse of `to_dict`, for configs that travel as JSON (submitit jobs). Unknown keys are ignored."""
    for f in fields(obj):
        if f.name not in values:
            continue
        cur, new = getattr(obj, f.name), values[f.name]
        if is_dataclass(cur) and isinstance(new, dict):
            fill(cur, new)
        else:
            setattr(obj, f.name, new)
    return obj
