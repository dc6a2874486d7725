"""Where a dataset's files are: the `DataSource` and `load_dataset`.

People hold these sets in many shapes (the JSON next to the images, an AMFMN `<name>_precomp`
folder with the images elsewhere, images directly in the root). The user may give a root folder
or the annotation file and image folder separately; defaults and common variants are tried, and
an ambiguous or missing input is a one-line UserError saying what was looked for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..contracts import DatasetSplits
from ..errors import UserError, unknown
from .assembly import assemble
from .catalogue import DatasetInfo, get_dataset_info
from .formats.karpathy import read_karpathy
from .formats.nwpu import looks_like_nwpu
from .formats.precomp import is_precomp_dir, read_precomp
from .formats.val_split import apply_val_split, read_val_split
from .formats.verify import has_verify
from .images import IMAGE_EXTENSIONS
from .layouts import (
    EXTRA_LAYOUTS,
    REFINED_LAYOUTS,
    classify_ann_file,
    find_extra,
    locate_images,
    looked_for,
    read_extra,
)

LAYOUTS = ("auto", "karpathy", "precomp", *EXTRA_LAYOUTS, *REFINED_LAYOUTS)
SYNTHETIC_DEFAULTS = {"n_images": 300, "image_size": 64, "seed": 0}


def _opt_path(p: str | Path | None) -> Path | None:
    return Path(p).expanduser() if p is not None else None


@dataclass(frozen=True)
class DataSource:
    """One dataset's name and where its files are: the one copy of the data-source parameters.

    Plain values, frozen and picklable (a submitit job receives it). `data_root`: a folder with the
    annotation (default names, or `<name>_precomp/`) and the image folder; or `ann_file` (JSON, or
    a precomp folder) and `image_dir` separately. `val_seed`/`val_fraction`: the val carving when
    the source has no val split. `val_split`: a file naming the val images (replaces both).
    """

    name: str
    data_root: Path | None = None
    ann_file: Path | None = None
    image_dir: Path | None = None
    layout: str = "auto"
    val_seed: int = 0
    val_fraction: float = 0.2
    val_split: Path | None = None

    def __post_init__(self) -> None:
        for key in ("data_root", "ann_file", "image_dir", "val_split"):
            object.__setattr__(self, key, _opt_path(getattr(self, key)))

    @classmethod
    def of(cls, source: DataSource | str, **where: Any) -> DataSource:
        """`source` itself, or a DataSource built from a dataset name and keyword paths."""
        if isinstance(source, DataSource):
            if where:
                raise TypeError(f"give either a DataSource or keyword paths, not both ({', '.join(where)})")
            return source
        return cls(source, **where)

    def for_dataset(self, name: str, several: bool = True) -> DataSource:
        """This source for dataset `name` of a grid: with several datasets, `data_root/<name>` when
        that folder exists (one root holding every dataset), else the root as given."""
        root = self.data_root
        if root is not None and several and (root / name).is_dir():
            root = root / name
        return replace(self, name=name, data_root=root)

    def absolute(self) -> DataSource:
        """The same source with absolute, resolved paths (a job may start in another folder)."""
        paths = {k: getattr(self, k).resolve() for k in ("data_root", "ann_file", "image_dir", "val_split")
                 if getattr(self, k) is not None}
        return replace(self, **paths)


# ---- finding files ------------------------------------------------------------------------------
def _child(folder: Path, names: tuple[str, ...] | list[str], want_dir: bool) -> Path | None:
    """First of `names` present in `folder` (exact name first, then case-insensitive)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return None
    ok = [e for e in entries if (e.is_dir() if want_dir else e.is_file())]
    for n in names:
        for e in ok:
            if e.name == n:
                return e
    lower = {e.name.lower(): e for e in ok}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _has_images(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in it)
    except OSError:
        return False


def _find_image_dir(info: DatasetInfo, roots: list[Path]) -> Path:
    candidates = list(info.image_dirs) + ["images", "imgs", "Images", f"{info.name}_images", "image"]
    for root in roots:
        d = _child(root, candidates, want_dir=True)
        if d is not None:
            # zip extraction often nests the folder in itself: RSICD_images/RSICD_images/*.jpg
            inner = d / d.name
            return inner if not _has_images(d) and inner.is_dir() and _has_images(inner) else d
    for root in roots:
        if _has_images(root):
            return root
    looked = ", ".join(dict.fromkeys(candidates))
    raise UserError(f"no image folder found in {' or '.join(str(r) for r in roots)} (looked for {looked} "
                    "or image files in the folder itself); pass --image-dir")


def _find_ann_file(info: DatasetInfo, root: Path) -> Path | None:
    names = list(info.ann_files) + [f"dataset_{info.name}.json", "dataset.json"]
    names += [f"dataset_{a}.json" for a in info.aliases]
    return _child(root, names, want_dir=False)


def _find_precomp_dir(info: DatasetInfo, root: Path) -> Path | None:
    if is_precomp_dir(root):
        return root
    names = [f"{n}_precomp" for n in (info.name, *info.aliases)]
    return _child(root, names, want_dir=True)


def _resolve(info: DatasetInfo, data_root: Path | None, ann_file: Path | None, image_dir: Path | None,
             layout: str) -> tuple[str, Path, Path | None, list[Path]]:
    """-> (layout, annotation file or folder, image folder (None: found after reading, for the
    extra layouts), folders to look for images in)."""
    if layout not in LAYOUTS:
        raise unknown("layout", layout, LAYOUTS)
    if data_root is not None and not data_root.is_dir():
        raise UserError(f"{data_root}: data root folder not found")
    if image_dir is not None and not image_dir.is_dir():
        raise UserError(f"{image_dir}: image folder not found")
    if ann_file is not None and not ann_file.exists():
        raise UserError(f"{ann_file}: annotation file not found")
    if ann_file is None and data_root is None:
        raise UserError(f"dataset '{info.name}': give --data-root (folder holding {info.ann_files[0]} and "
                        f"{info.image_dirs[0]}/) or --ann-file and --image-dir")

    extra = classify_ann_file(ann_file) if ann_file is not None else None
    if ann_file is not None and extra is not None:
        if layout not in ("auto", extra):
            raise UserError(f"{ann_file}: is a {extra} annotation but --layout {layout} was given")
        kind, ann = extra, ann_file
        roots = [data_root] if data_root is not None else [ann.parent if ann.is_file() else ann, ann.parent]
    elif ann_file is not None:
        ann_is_precomp = ann_file.is_dir() or ann_file.name in ("train_caps.txt", "test_caps.txt",
                                                                 "train_filename.txt", "test_filename.txt")
        if ann_is_precomp:
            folder = ann_file if ann_file.is_dir() else ann_file.parent
            if not is_precomp_dir(folder):
                raise UserError(f"{ann_file}: not an annotation file nor a precomp folder (no train_caps.txt)")
            kind, ann = "precomp", folder
        else:
            kind, ann = "karpathy", ann_file
        if layout not in ("auto", kind) and (kind, layout) not in (("karpathy", "nwpu"), ("precomp", "precomp_verify")):
            raise UserError(f"{ann_file}: is a {kind} annotation but --layout {layout} was given")
        roots = [data_root] if data_root is not None else [ann.parent] if kind == "karpathy" else \
            [ann, ann.parent]
    else:
        assert data_root is not None
        js = _find_ann_file(info, data_root) if layout in ("auto", "karpathy", "nwpu") else None
        pc = _find_precomp_dir(info, data_root) if layout in ("auto", "precomp", "precomp_verify") else None
        found = find_extra(info, data_root, layout) if js is None and pc is None else None
        if layout == "auto" and js is not None and pc is not None:
            raise UserError(f"{data_root}: holds both {js.name} and the precomp folder {pc.name}; "
                            "pass --layout karpathy or --layout precomp")
        if pc is not None:
            kind, ann = "precomp", pc
        elif js is not None:
            kind, ann = "karpathy", js
        elif found is not None:
            kind, ann = found
        else:
            what = {"karpathy": f"{' or '.join(info.ann_files)}", "nwpu": f"{' or '.join(info.ann_files)}",
                    "precomp": f"{info.name}_precomp/ or train_caps.txt",
                    "precomp_verify": f"{info.name}_precomp/ or train_caps.txt",
                    "auto": f"{' or '.join(info.ann_files)}, {info.name}_precomp/ or train_caps.txt, "
                            f"{looked_for(info, 'auto')}"}.get(layout, looked_for(info, layout))
            raise UserError(f"{data_root}: no annotation found (looked for {what}); pass --ann-file")
        roots = [data_root] if ann != data_root else [data_root, data_root.parent]
    if image_dir is not None or kind in EXTRA_LAYOUTS:
        return kind, ann.resolve(), image_dir.resolve() if image_dir is not None else None, roots
    return kind, ann.resolve(), _find_image_dir(info, roots).resolve(), roots


def default_data_root(name: str, data_root: str | Path | None = None,
                      ann_file: str | Path | None = None) -> Path | None:
    """`data_root` as given, or for `synthetic` named without a root or annotation the generated
    default set (generated on first use, then reused)."""
    if data_root is not None:
        return Path(data_root).expanduser()
    if ann_file is None and get_dataset_info(name).name == "synthetic":
        from .synthetic.store import synthetic_root

        return synthetic_root(**SYNTHETIC_DEFAULTS)
    return None


def load_dataset(
    source: DataSource | str,
    *,
    verify_images: bool = True,
    strict: bool = True,
    warn: Callable[[str], None] | None = None,
    **where: Any,
) -> DatasetSplits:
    """Load a dataset's train/val/test splits (val carved from train when the source has none).

    `source`: a DataSource, or a dataset name with the DataSource fields as keywords
    (`load_dataset("rsicd", data_root=...)`).
    `verify_images`: check every listed image file exists (decoding is `check_dataset`'s job).
    `strict`: refuse data that breaks the split rules (no test split, a val/test query with no
    text; see assembly.split_findings) with a DataError; False keeps the findings in `.errors`.
    `warn`: where each warning line goes (default: `warning: ...` on stderr).
    """
    src = DataSource.of(source, **where)
    info = get_dataset_info(src.name)
    root = default_data_root(src.name, src.data_root, src.ann_file)
    kind, ann_path, img_dir, roots = _resolve(info, root, src.ann_file, src.image_dir, src.layout)
    kind = _refine(kind, ann_path, src.layout)
    if kind == "precomp":
        records, digest, notes = read_precomp(ann_path)
    elif kind == "karpathy":
        records, digest, notes = read_karpathy(ann_path)
    else:
        records, digest, notes = read_extra(kind, ann_path, info)
    if img_dir is None:
        img_dir = Path(notes["image_root"]) if "image_root" in notes else locate_images(info, roots, records)
    val_digest = None
    if src.val_split is not None:
        names, val_digest = read_val_split(src.val_split)
        n_val = apply_val_split(records, names, src.val_split)
        notes = {**notes, "val_split": {"file": str(src.val_split), "sha256": val_digest, "n_val": n_val}}
    ds = assemble(info.name, records, image_dir=img_dir, ann_file=ann_path, source_digest=digest, notes=notes,
                  val_seed=src.val_seed, val_fraction=src.val_fraction, verify_images=verify_images,
                  strict=strict, val_split_digest=val_digest)
    for w in ds.warnings:
        (warn or _stderr_warning)(w.line)
    return ds


def _refine(kind: str, ann: Path, layout: str) -> str:
    """NWPU's JSON is found where a Karpathy JSON would be; *_verify files sit in a precomp folder."""
    if kind == "karpathy" and looks_like_nwpu(ann):
        return "nwpu"
    if kind == "precomp" and layout in ("auto", "precomp_verify") and has_verify(ann):
        return "precomp_verify"
    return kind


def _stderr_warning(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)
