"""NWPU-Captions (`dataset_nwpu.json`) -> ImageRecords.

    {"airplane": [{"filename": "airplane_001.jpg", "split": "train", "raw": "...", "raw_1": "...",
                   ..., "raw_4": "...", "sentids": 0, "sentids_1": 1, ..., "imgid": 0}, ...], ...}

Keyed by class name; the five captions of an image are `raw`, `raw_1` .. `raw_4` (read in that
order, as many as are present); images lie under `NWPU_images/<class>/`, so a record's name is
`<class>/<filename>`. 31,500 images, 45 classes, 157,500 captions.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...text import normalize_caption
from ..assembly import ImageRecord
from .common import decode_utf8, read_bytes, require

_RAW_KEY = re.compile(r"^raw(?:_(\d+))?$")


def looks_like_nwpu(path: Path) -> bool:
    """A JSON object whose first key is a class name (not Karpathy's 'images'/'dataset') holding
    a list of objects with 'filename' and 'raw' (read from the first 4 KB only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "ignore")
    except OSError:
        return False
    m = re.match(r'\s*(?:\ufeff)?\{\s*"([^"]*)"\s*:\s*\[\s*\{', head)
    return m is not None and m.group(1) not in ("images", "dataset") and '"raw"' in head and '"filename"' in head


def _captions(entry: dict[str, Any]) -> list[str]:
    keys = sorted((int(m.group(1) or 0), k) for k in entry if (m := _RAW_KEY.match(k)))
    return [normalize_caption(entry[k]) if isinstance(entry[k], str) else "" for _, k in keys]


def read_nwpu(path: Path) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Parse dataset_nwpu.json; returns (records, sha256 of the file bytes, notes)."""
    data = read_bytes(path)
    try:
        obj = json.loads(decode_utf8(data, path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: top level must be an object keyed by class name, got {type(obj).__name__}")
    records: list[ImageRecord] = []
    for cls, entries in obj.items():
        if not isinstance(entries, list):
            raise DataError(f"{path}: class '{cls}': must be a list of images, got {type(entries).__name__}")
        for i, e in enumerate(entries):
            where = f"'{cls}'[{i}]"
            if not isinstance(e, dict):
                raise DataError(f"{path}: {where}: must be an object, got {type(e).__name__}")
            fname = require(e, "filename", str, path, where)
            split = require(e, "split", str, path, f"{where} ('{fname}')")
            require(e, "raw", str, path, f"{where} ('{fname}')")
            if split not in ("train", "val", "test"):
                raise DataError(f"{path}: {where} ('{fname}'): split must be train, val or test, got '{split}'")
            records.append(ImageRecord(f"{cls}/{fname}", split, _captions(e), cls, f"{where}"))
    return records, hashlib.sha256(data).hexdigest(), {"layout": "nwpu"}
