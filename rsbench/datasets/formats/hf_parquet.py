"""Hugging Face parquet copies of RSICD (`arampacha/rsicd` and its de-duplicated forks) -> ImageRecords.

    <root>/data/{train,valid,test}-00000-of-00001.parquet   (or the .parquet files in <root> itself)
    columns: filename (str), captions (list of str), image (struct {bytes, path})

Split `valid` is our `val`. The images live inside the parquet files, not on disk. Why we write
them out once (byte for byte, under $RSBENCH_CACHE/parquet/<digest>/) rather than teach every
reader a second kind of image source: the image cache, `bench data check`, the DataLoader workers,
the gallery and the audit then read them exactly as files, and decoding is identical because the
bytes are the parquet's own. The folder is written atomically and reused while the parquet
files are unchanged (the folder is named by their digest).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...io import atomic_dir, cache_root, write_bytes
from ...text import normalize_caption
from ..assembly import ImageRecord, class_from_name

SPLIT_NAMES = {"train": "train", "valid": "val", "validation": "val", "val": "val", "test": "test"}
_SHARD = re.compile(r"^(?P<split>[A-Za-z]+)-\d+-of-\d+\.parquet$|^(?P<plain>[A-Za-z]+)\.parquet$")
_DONE = ".complete"


def parquet_shards(folder: Path) -> dict[str, list[Path]]:
    """split -> its parquet shard files in `folder` (sorted); empty when there are none."""
    out: dict[str, list[Path]] = {}
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".parquet")
    except OSError:
        return {}
    for p in files:
        m = _SHARD.match(p.name)
        split = SPLIT_NAMES.get(((m.group("split") or m.group("plain")) if m else "").lower())
        if split is not None:
            out.setdefault(split, []).append(p)
    return out


def find_parquet_dir(root: Path) -> Path | None:
    """`root/data` or `root` when it holds {train,valid,test} parquet shards."""
    for folder in (root / "data", root):
        if parquet_shards(folder):
            return folder
    return None


def _digest(shards: dict[str, list[Path]]) -> str:
    h = hashlib.sha256(b"rsbench-parquet-v1\0")
    for split in sorted(shards):
        for p in shards[split]:
            fh = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    fh.update(chunk)
            h.update(f"{split}/{p.name}\0".encode() + fh.digest())
    return h.hexdigest()


def _read_shard(path: Path) -> Any:
    import pandas as pd

    try:
        df = pd.read_parquet(path, columns=["filename", "captions", "image"])
    except ImportError as e:
        raise DataError(f"{path}: reading parquet needs pyarrow ({e}); pip install pyarrow") from None
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: not a parquet file with columns filename, captions, image ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read parquet ({e})") from None
    return df


def _row(path: Path, i: int, fname: Any, caps: Any, image: Any) -> tuple[str, list[str], bytes]:
    where = f"{path}: row {i}"
    if not isinstance(fname, str) or not fname.strip():
        raise DataError(f"{where}: 'filename' must be a non-empty string, got {fname!r}")
    if caps is None or isinstance(caps, (str, bytes)) or not all(isinstance(c, str) for c in caps):
        raise DataError(f"{where} ('{fname}'): 'captions' must be a list of strings")
    data = image.get("bytes") if isinstance(image, dict) else None
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataError(f"{where} ('{fname}'): 'image' has no bytes (a struct of bytes and path is expected)")
    return fname, [normalize_caption(c) for c in caps], bytes(data)


def read_hf_parquet(folder: Path) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Parse the parquet shards in `folder` and write their images out once.

    Returns (records, digest of the shards, notes); notes['image_root'] is the folder the images
    were written to (load_dataset uses it unless --image-dir is given).
    """
    shards = parquet_shards(folder)
    if not shards:
        raise DataError(f"{folder}: no parquet shards found (looked for {{train,valid,test}}-*-of-*.parquet)")
    digest = _digest(shards)
    out = cache_root() / "parquet" / digest[:32]
    records: list[ImageRecord] = []
    blobs: dict[str, bytes] = {}
    for split in ("train", "val", "test"):
        for path in shards.get(split, []):
            df = _read_shard(path)
            for i, (fname, caps, image) in enumerate(zip(df["filename"], df["captions"], df["image"])):
                name, captions, data = _row(path, i, fname, list(caps) if caps is not None else None, image)
                records.append(ImageRecord(name, split, captions, class_from_name(name), f"{path.name} row {i}"))
                blobs[name] = data
    if not (out / _DONE).is_file():
        _write_images(out, records, blobs)
    notes = {"layout": "hf_parquet", "parquet_dir": str(folder), "image_root": str(out),
             "parquet_shards": {s: [p.name for p in ps] for s, ps in sorted(shards.items())}}
    return records, digest, notes


def _write_images(out: Path, records: list[ImageRecord], blobs: dict[str, bytes]) -> None:
    """Every image's bytes as a file under `out` (one atomic folder; names checked by assembly later)."""
    from ..assembly import safe_image_path

    with atomic_dir(out, is_complete=lambda p: (p / _DONE).is_file()) as tmp:
        for r in records:
            target = safe_image_path(tmp, r.name, out, r.entry)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blobs[r.name])  # inside a folder renamed into place as a whole
        write_bytes(tmp / _DONE, b"")
