"""PIR / HarMA list JSON (`rsitmd_{train,val,test}.json`, `rsicd_...`) -> ImageRecords.

    train: one entry per CAPTION  {"caption", "image", "image_id", "label_name", "label"}
    val, test: one entry per IMAGE {"image", "caption": [...]}

Image paths carry their split folder (`train/x.tif`) and are kept as written (relative to the
image root). Their val split is used as is (RSITMD 3435/856, RSICD val 1966), so nothing is carved.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...text import normalize_caption
from ..assembly import ImageRecord, class_from_name
from .common import decode_utf8, read_bytes, require

SPLITS = ("train", "val", "test")


def pir_files(root: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """split -> `<name>_<split>.json` in `root` for the first dataset name that has a test file."""
    try:
        lower = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    except OSError:
        return {}
    for n in names:
        found = {s: lower[f"{n.lower()}_{s}.json"] for s in SPLITS if f"{n.lower()}_{s}.json" in lower}
        if "test" in found:
            return found
    return {}


def _load(path: Path) -> tuple[list[Any], bytes]:
    data = read_bytes(path)
    try:
        obj = json.loads(decode_utf8(data, path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(obj, list):
        raise DataError(f"{path}: top level must be a list of entries, got {type(obj).__name__}")
    return obj, data


def _train_records(entries: list[Any], path: Path) -> list[ImageRecord]:
    """One entry per caption, grouped by image in first-seen order."""
    by_name: dict[str, ImageRecord] = {}
    for i, e in enumerate(entries):
        where = f"[{i}]"
        if not isinstance(e, dict):
            raise DataError(f"{path}: {where}: must be an object, got {type(e).__name__}")
        name = require(e, "image", str, path, where)
        cap = require(e, "caption", str, path, f"{where} ('{name}')")
        if name not in by_name:
            cls = e.get("label_name")
            cls = cls if isinstance(cls, str) else class_from_name(name)
            by_name[name] = ImageRecord(name, "train", [], cls, f"{path.name} [{i}]")
        by_name[name].captions.append(normalize_caption(cap))
    return list(by_name.values())


def _image_records(entries: list[Any], path: Path, split: str) -> list[ImageRecord]:
    """One entry per image with a caption list."""
    out = []
    for i, e in enumerate(entries):
        where = f"[{i}]"
        if not isinstance(e, dict):
            raise DataError(f"{path}: {where}: must be an object, got {type(e).__name__}")
        name = require(e, "image", str, path, where)
        caps = require(e, "caption", (list, str), path, f"{where} ('{name}')")
        caps = [caps] if isinstance(caps, str) else caps
        if not all(isinstance(c, str) for c in caps):
            raise DataError(f"{path}: {where} ('{name}'): 'caption' must be a list of strings")
        out.append(ImageRecord(name, split, [normalize_caption(c) for c in caps], class_from_name(name),
                               f"{path.name} [{i}]"))
    return out


def read_pir_json(files: dict[str, Path]) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Parse the split files; returns (records, sha256 over the files, notes)."""
    h = hashlib.sha256(b"rsbench-pir-v1\0")
    records: list[ImageRecord] = []
    for split in SPLITS:
        if split not in files:
            continue
        entries, data = _load(files[split])
        h.update(f"{split}\0".encode() + hashlib.sha256(data).digest())
        # train is per caption in PIR; a per-image train file (caption lists) is read as such too
        per_caption = split == "train" and all(isinstance(e, dict) and isinstance(e.get("caption"), str)
                                               for e in entries)
        recs = _train_records(entries, files[split]) if per_caption else _image_records(entries, files[split], split)
        records.extend(recs)
    notes = {"layout": "pir_json", "pir_files": {s: str(p) for s, p in files.items()}}
    return records, h.hexdigest(), notes
