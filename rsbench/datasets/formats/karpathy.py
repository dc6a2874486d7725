"""Karpathy-style JSON (dataset_rsicd.json, dataset_RSITMD.json, dataset.json) -> ImageRecords.

Only the keys the field's code relies on are required (top-level `images`; per image `filename`,
`split`, `sentences`; per sentence `raw`), so copies that drop tokens/sentid/imgid still load.
Captions per image are read from the data, never assumed to be 5.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...text import normalize_caption
from ..assembly import ImageRecord, class_from_name
from .common import decode_utf8, parse_json, read_bytes, require


def read_karpathy(path: Path) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Parse the JSON file; returns (records, sha256 of the file bytes, notes).

    Split values other than train/val/test (e.g. Karpathy's 'restval') count as train; how many is
    recorded in notes['split_remap'].
    """
    data = read_bytes(path)
    obj = parse_json(decode_utf8(data, path), path, dict, "an object with an 'images' list")
    images = require(obj, "images", list, path, "top level")
    records: list[ImageRecord] = []
    remap: dict[str, int] = {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(img, dict):
            raise DataError(f"{path}: {where}: must be an object, got {type(img).__name__}")
        fname = require(img, "filename", str, path, where)
        where = f"images[{i}] ('{fname}')"
        split = require(img, "split", str, path, where)
        sents = require(img, "sentences", list, path, where)
        caps = []
        for j, s in enumerate(sents):
            if not isinstance(s, dict):
                raise DataError(f"{path}: {where}: sentences[{j}] must be an object, got {type(s).__name__}")
            raw = require(s, "raw", str, path, f"{where} sentences[{j}]")
            caps.append(normalize_caption(raw))
        if split not in ("train", "val", "test"):
            remap[split] = remap.get(split, 0) + 1
            split = "train"
        cls = img.get("class")
        cls = cls if isinstance(cls, str) else class_from_name(fname)
        records.append(ImageRecord(fname, split, caps, cls, f"images[{i}]"))
    notes: dict[str, Any] = {"layout": "karpathy"}
    if remap:
        notes["split_remap"] = {k: {"to": "train", "n_images": v} for k, v in sorted(remap.items())}
    return records, hashlib.sha256(data).hexdigest(), notes
