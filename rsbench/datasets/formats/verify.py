"""The AMFMN/GaLR/SWAN `*_verify` files next to a precomp folder: their train/val split.

    <name>_precomp/train_caps_verify.txt  train_filename_verify.txt
    <name>_precomp/val_caps_verify.txt    val_filename_verify.txt

Same line rules as the precomp files (a name per image or per caption). When present they give
the train and val splits (the val split those papers selected on) and test comes from
test_caps.txt / test_filename.txt as usual, so nothing is carved.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...text import normalize_caption
from ..assembly import ImageRecord, class_from_name
from .common import read_bytes
from .precomp import _lines, _names, read_precomp

VERIFY_FILES = ("train_caps_verify.txt", "train_filename_verify.txt", "val_caps_verify.txt",
                "val_filename_verify.txt")


def has_verify(folder: Path) -> bool:
    return (folder / "val_caps_verify.txt").is_file() and (folder / "val_filename_verify.txt").is_file()


def _split_records(folder: Path, split: str) -> tuple[list[ImageRecord], bytes]:
    caps_p, names_p = folder / f"{split}_caps_verify.txt", folder / f"{split}_filename_verify.txt"
    caps_b, names_b = read_bytes(caps_p), read_bytes(names_p)
    caps, names = _lines(caps_b, caps_p), _names(names_b, names_p)
    if not names:
        raise DataError(f"{names_p}: no image names")
    recs: list[ImageRecord] = []
    if len(names) == len(caps):  # one name per caption: consecutive equal names are one image
        for i, (n, c) in enumerate(zip(names, caps)):
            if recs and recs[-1].name == n:
                recs[-1].captions.append(normalize_caption(c))
            else:
                recs.append(ImageRecord(n, split, [normalize_caption(c)], class_from_name(n),
                                        f"{names_p.name} line {i + 1}"))
    elif len(caps) % len(names) == 0:
        k = len(caps) // len(names)
        recs = [ImageRecord(n, split, [normalize_caption(c) for c in caps[i * k:(i + 1) * k]], class_from_name(n),
                            f"{names_p.name} line {i + 1}") for i, n in enumerate(names)]
    else:
        raise DataError(f"{caps_p}: {len(caps)} captions for {len(names)} images in {names_p.name} is not a "
                        "whole number of captions per image")
    return recs, caps_b + b"\0" + names_b


def read_precomp_verify(folder: Path) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Test from the precomp files, train and val from the *_verify files."""
    base, base_digest, notes = read_precomp(folder)
    h = hashlib.sha256(b"rsbench-verify-v1\0" + base_digest.encode())
    records = [r for r in base if r.split == "test"]
    for split in ("train", "val"):
        recs, data = _split_records(folder, split)
        h.update(f"{split}\0".encode() + hashlib.sha256(data).digest())
        records = recs + records if split == "train" else records + recs
    notes = {**notes, "layout": "precomp_verify", "verify_files": list(VERIFY_FILES)}
    return records, h.hexdigest(), notes
