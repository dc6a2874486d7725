"""AMFMN "precomp" text layout (also GaLR, SWAN) -> ImageRecords.

    <name>_precomp/train_caps.txt      one caption per line, captions of an image on consecutive lines
    <name>_precomp/train_filename.txt  one line per IMAGE (captions per image = n_caps / n_images)
    <name>_precomp/test_caps.txt
    <name>_precomp/test_filename.txt   one line per CAPTION (consecutive equal names = one image)

There is no val split: the caller carves one from train. A test_filename.txt with one line per
image (as train) is accepted too, since some copies are written that way; the rule for both files
is: as many names as captions -> one name per caption, else one name per image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...text import normalize_caption
from ..assembly import ImageRecord, class_from_name
from .common import decode_utf8, read_bytes

PRECOMP_FILES = ("train_caps.txt", "train_filename.txt", "test_caps.txt", "test_filename.txt")


def is_precomp_dir(folder: Path) -> bool:
    return (folder / "train_caps.txt").is_file() or (folder / "test_caps.txt").is_file()


def _lines(data: bytes, path: Path) -> list[str]:
    """Lines of a text file without line terminators (\\n or \\r\\n); the final newline ends the last line."""
    text = decode_utf8(data, path)
    text = text.removesuffix("\n")
    if not text:
        return []
    return [ln.removesuffix("\r") for ln in text.split("\n")]


def _names(data: bytes, path: Path) -> list[str]:
    lines = [ln.strip() for ln in _lines(data, path)]
    while lines and not lines[-1]:
        lines.pop()
    for i, ln in enumerate(lines):
        if not ln:
            raise DataError(f"{path}: line {i + 1}: empty file name")
    return lines


def _per_image(names: list[str], caps: list[str], split: str, folder: Path) -> list[ImageRecord]:
    """One name per image: captions are equal consecutive runs of n_caps / n_images lines."""
    fn = folder / f"{split}_filename.txt"
    if not names:
        raise DataError(f"{fn}: no image names")
    if len(caps) % len(names):
        raise DataError(f"{folder / f'{split}_caps.txt'}: {len(caps)} captions for {len(names)} images in "
                        f"{fn.name} is not a whole number of captions per image")
    k = len(caps) // len(names)
    return [
        ImageRecord(n, split, [normalize_caption(c) for c in caps[i * k:(i + 1) * k]], class_from_name(n),
                    f"{fn.name} line {i + 1}")
        for i, n in enumerate(names)
    ]


def _per_caption(names: list[str], caps: list[str], split: str, folder: Path) -> list[ImageRecord]:
    """One name per caption: consecutive equal names form one image (counts may differ per image)."""
    fn = folder / f"{split}_filename.txt"
    recs: list[ImageRecord] = []
    for i, (n, c) in enumerate(zip(names, caps)):
        if recs and recs[-1].name == n:
            recs[-1].captions.append(normalize_caption(c))
        else:
            recs.append(ImageRecord(n, split, [normalize_caption(c)], class_from_name(n), f"{fn.name} line {i + 1}"))
    return recs


def read_precomp(folder: Path) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Parse a `<name>_precomp` folder; returns (records, sha256 over the four files, notes)."""
    h = hashlib.sha256()
    content: dict[str, bytes] = {}
    for f in PRECOMP_FILES:
        p = folder / f
        if not p.is_file():
            raise DataError(f"{p}: precomp file not found (a precomp folder needs {', '.join(PRECOMP_FILES)})")
        content[f] = read_bytes(p)
        h.update(f.encode() + b"\0" + hashlib.sha256(content[f]).digest())

    records: list[ImageRecord] = []
    notes: dict[str, Any] = {"layout": "precomp", "precomp_dir": str(folder)}
    for split in ("train", "test"):
        caps = _lines(content[f"{split}_caps.txt"], folder / f"{split}_caps.txt")
        names = _names(content[f"{split}_filename.txt"], folder / f"{split}_filename.txt")
        if len(names) == len(caps):  # one name per caption (always so for test; 1 caption/image alike)
            recs = _per_caption(names, caps, split, folder)
        else:
            recs = _per_image(names, caps, split, folder)
        records.extend(recs)
        notes[f"{split}_captions_per_image"] = (len(caps) // len(recs)) if recs and len(caps) % len(recs) == 0 else None
    return records, h.hexdigest(), notes
