"""Reading helpers every annotation format shares: bytes, strict UTF-8, required typed keys.

Each raises DataError with one line naming the file (and the entry or byte offset).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import DataError


def decode_utf8(data: bytes, path: Path) -> str:
    """Strict UTF-8 decode (a BOM is allowed); DataError naming the file and the byte offset."""
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        off = e.start + bom
        line = data.count(b"\n", 0, off) + 1
        raise DataError(f"{path}: not valid UTF-8 at byte offset {off} (line {line}): "
                        f"{data[off:off + 4]!r}") from None


def read_bytes(path: Path) -> bytes:
    """The file's bytes; DataError naming the file when it is missing, a folder or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an annotation file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def require(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], path: Path, where: str) -> Any:
    """obj[key], which must exist and have type `typ`; DataError naming the file, entry and key."""
    if key not in obj:
        raise DataError(f"{path}: {where}: missing key '{key}'")
    val = obj[key]
    if not isinstance(val, typ):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise DataError(f"{path}: {where}: '{key}' must be a {names}, got {type(val).__name__}")
    return val


def parse_json(text: str, path: Path, top: type | None = None, shape: str = "") -> Any:
    """json.loads with one-line DataErrors: bad JSON, nesting too deep, or a top level not of type `top`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON for a dataset (nested too deeply)") from None
    if top is not None and not isinstance(obj, top):
        raise DataError(f"{path}: top level must be {shape}, got {type(obj).__name__}")
    return obj
