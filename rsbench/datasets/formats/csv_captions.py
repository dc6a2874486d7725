"""CSV caption tables as RemoteCLIP, GeoRSCLIP and SkyScript ship their test sets -> ImageRecords.

One row per caption, columns `filename,title` (or `filepath,title`), separated by ',' or a tab;
paths relative to the image folder or absolute. Split from the file name (`rsicd_test.csv`,
`train.csv`; a file naming no split is test). GeoRSCLIP's RSICD CSV is GB18030: the text is read
as UTF-8 and, when that fails and GB18030 decodes it, as GB18030 (said in notes['encoding']).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...text import normalize_caption
from ..assembly import ImageRecord, class_from_name
from .common import decode_utf8, read_bytes

NAME_COLUMNS = ("filename", "filepath")
TEXT_COLUMN = "title"
_SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def csv_split(path: Path) -> str:
    """The split a CSV file holds, from the words of its name; 'test' when it names none."""
    words = re.split(r"[^a-z]+", path.stem.lower())
    found = [_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS]
    return found[-1] if found else "test"


def csv_files(root: Path) -> dict[str, Path]:
    """split -> the one .csv/.tsv file for it in `root`; DataError when two files claim a split."""
    try:
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".tsv"))
    except OSError:
        return {}
    out: dict[str, Path] = {}
    for p in files:
        s = csv_split(p)
        if s in out:
            raise DataError(f"{root}: two CSV files for the {s} split ({out[s].name}, {p.name}); "
                            "pass the one you mean with --ann-file")
        out[s] = p
    return out


def decode_text(data: bytes, path: Path) -> tuple[str, str]:
    """(text, encoding): UTF-8, else GB18030 when that decodes the bytes, else UTF-8's error."""
    try:
        return decode_utf8(data, path), "utf-8"
    except DataError as utf8_error:
        try:
            return data.decode("gb18030"), "gb18030"
        except UnicodeDecodeError:
            raise utf8_error from None  # the UTF-8 error names the byte offset


def _rows(text: str, path: Path) -> tuple[list[list[str]], int, int]:
    """Data rows, and the name and text column indices read from the header line."""
    first = text.split("\n", 1)[0]
    delim = "\t" if first.count("\t") > first.count(",") else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    if not rows:
        raise DataError(f"{path}: empty CSV (expected a header filename,title)")
    header = [h.strip().lower() for h in rows[0]]
    name_col = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    if name_col is None or TEXT_COLUMN not in header:
        raise DataError(f"{path}: header must have a filename (or filepath) and a title column, "
                        f"got {', '.join(rows[0])}")
    return rows[1:], name_col, header.index(TEXT_COLUMN)


def read_csv_file(path: Path, split: str) -> tuple[list[ImageRecord], bytes, str]:
    """One CSV -> records of `split` (rows grouped by image, first-seen order), its bytes and encoding."""
    data = read_bytes(path)
    text, encoding = decode_text(data, path)
    rows, nc, tc = _rows(text.lstrip("\ufeff"), path)
    by_name: dict[str, ImageRecord] = {}
    for i, row in enumerate(rows):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(nc, tc):
            raise DataError(f"{path}: line {i + 2}: {len(row)} column(s), expected at least {max(nc, tc) + 1}")
        name = row[nc].strip()
        if not name:
            raise DataError(f"{path}: line {i + 2}: empty file name")
        if name not in by_name:
            by_name[name] = ImageRecord(name, split, [], class_from_name(name), f"{path.name} line {i + 2}")
        by_name[name].captions.append(normalize_caption(row[tc]))
    return list(by_name.values()), data, encoding


def relativize(records: list[ImageRecord]) -> tuple[list[ImageRecord], Path | None]:
    """Absolute paths -> names relative to their common folder, which becomes the image root.

    Why: the safe-path rule refuses absolute names in an annotation, but a CSV with absolute paths
    states exactly where each image is; the common folder is the image folder the user meant.
    """
    absolute = [r for r in records if os.path.isabs(r.name)]
    if not absolute:
        return records, None
    if len(absolute) != len(records):
        raise DataError(f"{records[0].entry.split(' ')[0]}: mixes absolute and relative image paths")
    common = Path(os.path.commonpath([os.path.dirname(r.name) for r in records]))
    for r in records:
        r.name = os.path.relpath(r.name, common)
    return records, common


def read_csv_captions(files: dict[str, Path]) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Parse the split CSVs; returns (records, sha256 over the files, notes)."""
    h = hashlib.sha256(b"rsbench-csv-v1\0")
    records: list[ImageRecord] = []
    encodings: dict[str, str] = {}
    for split in ("train", "val", "test"):
        if split in files:
            recs, data, enc = read_csv_file(files[split], split)
            h.update(f"{split}\0".encode() + hashlib.sha256(data).digest())
            records.extend(recs)
            encodings[files[split].name] = enc
    records, common = relativize(records)
    notes: dict[str, Any] = {"layout": "csv", "csv_files": {s: str(p) for s, p in files.items()},
                             "encoding": encodings}
    if common is not None:
        notes["image_root"] = str(common)
    return records, h.hexdigest(), notes
