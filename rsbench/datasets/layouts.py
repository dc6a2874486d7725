"""The layouts beyond Karpathy JSON and AMFMN precomp: how each is recognised and read.

One row per layout: a finder (what to look for under --data-root), a reader (formats/<module>),
and where its images are. Used by source.py; adding a layout is a format module plus a row here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError, UserError
from .assembly import ImageRecord
from .catalogue import DatasetInfo
from .formats.csv_captions import csv_files, csv_split, read_csv_captions
from .formats.hf_parquet import find_parquet_dir, parquet_shards, read_hf_parquet
from .formats.nwpu import read_nwpu
from .formats.pir_json import pir_files, read_pir_json
from .formats.verify import read_precomp_verify

# searched under --data-root in this order, after the Karpathy JSON and the precomp folder
EXTRA_LAYOUTS = ("hf_parquet", "pir_json", "csv")
# read from a file the Karpathy / precomp finders found (recognised by content)
REFINED_LAYOUTS = ("nwpu", "precomp_verify")


def _names(info: DatasetInfo) -> tuple[str, ...]:
    return (info.name, *info.aliases)


def looked_for(info: DatasetInfo, layout: str) -> str:
    """What the finders of `layout` (or of the extra layouts, for 'auto') look for, for messages."""
    what = {"hf_parquet": "data/{train,valid,test}-*.parquet",
            "pir_json": f"{info.name}_{{train,val,test}}.json",
            "csv": "*.csv (filename,title)"}
    return what[layout] if layout in what else ", ".join(what.values())


def find_extra(info: DatasetInfo, root: Path, layout: str) -> tuple[str, Path] | None:
    """(layout, annotation folder) of the first extra layout found in `root`, or None."""
    for kind in EXTRA_LAYOUTS:
        if layout not in ("auto", kind):
            continue
        if kind == "hf_parquet" and (d := find_parquet_dir(root)) is not None:
            return kind, d
        if kind == "pir_json" and pir_files(root, _names(info)):
            return kind, root
        if kind == "csv" and csv_files(root):
            return kind, root
    return None


def classify_ann_file(ann_file: Path) -> str | None:
    """The extra layout an --ann-file names (a parquet file or folder, a CSV, a PIR split JSON), or None."""
    suffix = ann_file.suffix.lower()
    if suffix == ".parquet" or (ann_file.is_dir() and parquet_shards(ann_file)):
        return "hf_parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix == ".json" and ann_file.is_file() and ann_file.stem.lower().rsplit("_", 1)[-1] in ("train", "val", "test"):
        with open(ann_file, "rb") as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if head.startswith(b"["):
            return "pir_json"
    return None


def read_extra(kind: str, ann: Path, info: DatasetInfo) -> tuple[list[ImageRecord], str, dict[str, Any]]:
    """Read a layout found by find_extra / classify_ann_file / the refinements."""
    if kind == "hf_parquet":
        return read_hf_parquet(ann if ann.is_dir() else ann.parent)
    if kind == "pir_json":
        if ann.is_file():
            prefix = ann.stem.rsplit("_", 1)[0]
            return read_pir_json(pir_files(ann.parent, (prefix,)))
        return read_pir_json(pir_files(ann, _names(info)))
    if kind == "csv":
        return read_csv_captions({csv_split(ann): ann} if ann.is_file() else csv_files(ann))
    if kind == "nwpu":
        return read_nwpu(ann)
    if kind == "precomp_verify":
        return read_precomp_verify(ann)
    raise AssertionError(kind)


def locate_images(info: DatasetInfo, roots: list[Path], records: list[ImageRecord]) -> Path:
    """The first candidate folder where the first listed images exist (names may carry sub-folders)."""
    probe = [r.name for r in records[:3]]
    candidates = list(info.image_dirs) + ["images", "imgs", "Images", f"{info.name}_images", "image"]
    folders = [r / c for r in roots for c in candidates] + list(roots)
    for d in folders:
        if d.is_dir() and probe and all((d / n).is_file() for n in probe):
            return d
    if not probe:
        raise DataError(f"{roots[0]}: the annotation lists no images")
    raise UserError(f"no image folder holding '{probe[0]}' found in {' or '.join(str(r) for r in roots)} "
                    f"(looked in {', '.join(dict.fromkeys(candidates))} and the folder itself); pass --image-dir")
