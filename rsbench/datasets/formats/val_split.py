"""A named validation split (`data.val_split=FILE`): reproduce someone's val split exactly.

FILE is a list of image file names (one per line, or a JSON list of strings) or a PIR/HarMA val
JSON (a list of {"image": ..., "caption": [...]}). The listed images become val; every other
train/val image is train; test is never touched. The file's sha256 goes into the fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ...errors import DataError
from ..assembly import ImageRecord
from .common import decode_utf8, parse_json, read_bytes


def read_val_split(path: Path) -> tuple[list[str], str]:
    """(image names, sha256 of the file bytes); DataError naming the file when it lists nothing usable."""
    data = read_bytes(path)
    text = decode_utf8(data, path)
    stripped = text.lstrip("\ufeff").lstrip()
    if stripped.startswith("["):
        obj = parse_json(stripped, path, list, "a list of names or entries")
        names = []
        for i, e in enumerate(obj):
            name = e.get("image") if isinstance(e, dict) else e
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{path}: [{i}]: expected a file name or an object with 'image'")
            names.append(name.strip())
    else:
        names = [ln.strip() for ln in text.lstrip("\ufeff").splitlines() if ln.strip()]
    if not names:
        raise DataError(f"{path}: the val split file lists no images")
    return list(dict.fromkeys(names)), hashlib.sha256(data).hexdigest()


def _index(records: list[ImageRecord]) -> tuple[dict[str, ImageRecord], dict[str, list[ImageRecord]]]:
    exact = {r.name: r for r in records}
    base: dict[str, list[ImageRecord]] = {}
    for r in records:
        base.setdefault(Path(r.name).name, []).append(r)
    return exact, base


def apply_val_split(records: list[ImageRecord], names: list[str], path: Path) -> int:
    """Mark the listed images val and the other train/val images train (in place); returns n_val.

    A listed name matches a record's name exactly, else by file name alone when that is unique
    (a PIR val JSON writes `train/x.tif` where a Karpathy JSON writes `x.tif`).
    """
    exact, base = _index(records)
    chosen: list[ImageRecord] = []
    missing: list[str] = []
    for n in names:
        r = exact.get(n)
        if r is None:
            cands = base.get(Path(n).name, [])
            r = cands[0] if len(cands) == 1 else None
        if r is None:
            missing.append(n)
            continue
        if r.split == "test":
            raise DataError(f"{path}: '{n}' is a test image; a val split must not touch test")
        chosen.append(r)
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(names)} listed images are not in the dataset's "
                        f"train/val images (first: '{missing[0]}')")
    for r in records:
        if r.split in ("train", "val"):
            r.split = "train"
    for r in chosen:
        r.split = "val"
    return len(chosen)
