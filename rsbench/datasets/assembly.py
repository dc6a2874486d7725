"""From parsed annotation records to a verified DatasetSplits: safe paths, val carving, fingerprint.

Both loaders (Karpathy JSON, AMFMN precomp text) produce the same `ImageRecord`s so the checks that
matter for correctness (no path escapes the image folder, no image listed twice, a val split that
never touches test, a fingerprint that changes when the split does) live in one place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts import DatasetSplits, Problem, Split
from ..errors import DataError, UserError

SPLITS = ("train", "val", "test")


@dataclass
class ImageRecord:
    """One image as read from an annotation source."""

    name: str  # file name as written in the annotation
    split: str  # train | val | test
    captions: list[str]
    cls: str  # scene class ('' when unknown)
    entry: str  # where it was read, for messages: "images[12]" or "train_filename.txt line 5"


def class_from_name(name: str) -> str:
    """Scene class from the file name: the prefix before the last '_' (airport_12.jpg -> airport)."""
    stem = Path(name).name
    head, sep, _ = stem.rpartition("_")
    return head if sep else ""


def safe_image_path(image_dir: Path, name: str, ann_file: Path | str, entry: str,
                    resolved_dir: bool = False) -> Path:
    """Join `name` to the image folder, refusing anything that would read outside it.

    Refused: empty names, absolute paths, any '..' component, and names that resolve (through
    symlinks) to a place outside the resolved image folder.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{ann_file}: {entry}: empty image file name")
    if "\x00" in name:
        raise DataError(f"{ann_file}: {entry}: image name {name!r} contains a NUL character")
    p = Path(name)
    drive = len(name) > 2 and name[0].isalpha() and name[1] == ":" and name[2] in "/\\"
    if p.is_absolute() or name.startswith(("/", "\\")) or drive:
        raise DataError(f"{ann_file}: {entry}: image name '{name}' is an absolute path; "
                        "names must be relative to the image folder")
    if ".." in p.parts or ".." in name.replace("\\", "/").split("/"):
        raise DataError(f"{ann_file}: {entry}: image name '{name}' escapes the image folder ('..')")
    root = image_dir if resolved_dir else image_dir.resolve()
    full = root / p
    # Fast path: a plain file name that is not a symlink cannot leave the folder (one lstat).
    if len(p.parts) == 1 and not os.path.islink(full):
        return full
    resolved = Path(os.path.realpath(full))
    if resolved != root and root not in resolved.parents:
        raise DataError(f"{ann_file}: {entry}: image name '{name}' resolves outside the image folder "
                        f"{root} (to {resolved}; a symlink?)")
    return full


def carve_val(names: list[str], classes: list[str], fraction: float, seed: int) -> np.ndarray:
    """Indices (sorted) of the training images moved to a carved validation split.

    Class-stratified and deterministic: per class (sorted class order), the class's images are
    sorted by name, shuffled with one numpy Generator seeded by `seed`, and the first
    round_half_up(n_c * fraction) are taken (at most n_c - 1, so a class always keeps a training
    image). Sorting first makes the result independent of the order the annotation lists images.
    On RSITMD's 4291 training images with fraction 0.2 this gives 856 val / 3435 train, the field's
    numbers. Images with an unknown class ('') form one stratum.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"bad val fraction {fraction}: must be between 0 and 1 (exclusive)")
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(classes):
        by_class[c].append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in sorted(by_class):
        idx = sorted(by_class[c], key=lambda i: names[i])
        n = len(idx)
        k = min(math.floor(n * fraction + 0.5), max(n - 1, 0))
        perm = rng.permutation(n)
        chosen.extend(idx[j] for j in perm[:k])
    return np.array(sorted(chosen), dtype=np.int64)


def _build_split(name: str, recs: list[ImageRecord], paths: dict[str, Path]) -> Split:
    captions: list[str] = []
    cap2img: list[int] = []
    for i, r in enumerate(recs):
        captions.extend(r.captions)
        cap2img.extend([i] * len(r.captions))
    return Split(
        name=name,
        image_paths=[paths[r.name] for r in recs],
        image_names=[r.name for r in recs],
        captions=captions,
        cap2img=np.asarray(cap2img, dtype=np.int64),
        image_classes=[r.cls for r in recs],
    )


def caption_file(ann_file: Path | str | None, layout: str, split: str) -> str:
    """The file a split's captions are read from, for messages (a carved val comes from train_caps.txt)."""
    if layout == "precomp" and ann_file is not None:
        return str(Path(ann_file) / ("test_caps.txt" if split == "test" else "train_caps.txt"))
    return str(ann_file)


def drop_empty_train_captions(train: list[ImageRecord]) -> tuple[list[ImageRecord], list[tuple[str, int]]]:
    """Train records without their empty captions, and (image, caption index) of each one left out.

    Why: a blank line in a training file (the real RSITMD train_caps.txt has 20) is not a pair to
    learn from; it is left out of training and reported as a warning, never trained on.
    """
    dropped: list[tuple[str, int]] = []
    out: list[ImageRecord] = []
    for r in train:
        empty = [k for k, c in enumerate(r.captions) if not c]
        dropped.extend((r.name, k) for k in empty)
        out.append(replace(r, captions=[c for c in r.captions if c]) if empty else r)
    return out, dropped


def split_findings(by_split: dict[str, list[ImageRecord]], dropped: list[tuple[str, int]], ann_file: Path,
                   layout: str) -> tuple[list[Problem], list[Problem]]:
    """The one rule set on splits and captions, shared by `bench run` (load_dataset) and `bench data check`.

    Errors (the data cannot give a test result): no test images; a val or test image with no
    caption; an empty val or test caption (a query with no text). Warnings: empty train captions
    (left out of training) and train images left with no caption (never sampled).
    """
    errors: list[Problem] = []
    if not by_split["test"]:
        errors.append(Problem(caption_file(ann_file, layout, "test"),
                              "no test split (no image is marked 'test'); rsbench reports results on test"))
    for split in ("val", "test"):
        cap_file = caption_file(ann_file, layout, split)
        for r in by_split[split]:
            if not r.captions:
                errors.append(Problem(cap_file, f"image '{r.name}' ({split}) has no captions"))
            errors.extend(Problem(cap_file, f"image '{r.name}' ({split}) caption {k}: empty caption "
                                            "(a query with no text)") for k, c in enumerate(r.captions) if not c)
    warnings: list[Problem] = []
    train_file = caption_file(ann_file, layout, "train")
    if dropped:
        name, k = dropped[0]
        warnings.append(Problem(train_file, f"{len(dropped)} empty caption(s) in train left out of training "
                                            f"(first: image '{name}' caption {k})"))
    bare = [r.name for r in by_split["train"] if not r.captions]
    if bare:
        warnings.append(Problem(train_file, f"{len(bare)} train image(s) have no caption and are left out of "
                                            f"training (first: '{bare[0]}')"))
    return errors, warnings


def fingerprint(source_digest: str, splits: dict[str, list[str]], carving: dict[str, Any] | None,
                val_split: str | None = None) -> str:
    """sha256 over the annotation bytes' digest, the image names per split, the val carving and the
    sha256 of a named val split file (when one is given)."""
    h = hashlib.sha256()
    h.update(b"rsbench-dataset-v1\0")
    h.update(source_digest.encode())
    h.update(json.dumps({k: splits[k] for k in SPLITS}, separators=(",", ":")).encode())
    if carving is not None:
        h.update(json.dumps({k: carving[k] for k in ("seed", "fraction")}, separators=(",", ":")).encode())
    if val_split is not None:
        h.update(b"val_split\0" + val_split.encode())
    return h.hexdigest()


def assemble(
    name: str,
    records: list[ImageRecord],
    *,
    image_dir: Path,
    ann_file: Path,
    source_digest: str,
    notes: dict[str, Any],
    val_seed: int = 0,
    val_fraction: float = 0.2,
    verify_images: bool = True,
    strict: bool = True,
    val_split_digest: str | None = None,
) -> DatasetSplits:
    """Check names, carve val when the source has none, apply the split rules, verify files, build DatasetSplits.

    `strict`: a split-rule error (split_findings) raises DataError here, before any training;
    `bench data check` passes False to list every finding instead.
    """
    image_dir = image_dir.resolve()
    first_entry: dict[str, str] = {}
    paths: dict[str, Path] = {}
    for r in records:
        if r.name in first_entry:
            raise DataError(f"{ann_file}: {r.entry}: image '{r.name}' is listed twice "
                            f"(first at {first_entry[r.name]})")
        first_entry[r.name] = r.entry
        paths[r.name] = safe_image_path(image_dir, r.name, ann_file, r.entry, resolved_dir=True)

    by_split: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    for r in records:
        by_split[r.split].append(r)
    if not by_split["train"] and not by_split["test"]:
        raise DataError(f"{ann_file}: no train or test images found")

    carving: dict[str, Any] | None = None
    if not by_split["val"] and by_split["train"]:
        train = by_split["train"]
        val_idx = carve_val([r.name for r in train], [r.cls for r in train], val_fraction, val_seed)
        is_val = np.zeros(len(train), dtype=bool)
        is_val[val_idx] = True
        by_split["val"] = [r for r, v in zip(train, is_val) if v]
        by_split["train"] = [r for r, v in zip(train, is_val) if not v]
        carving = {
            "seed": int(val_seed),
            "fraction": float(val_fraction),
            "n_train": len(by_split["train"]),
            "n_val": len(by_split["val"]),
            "val_images": [r.name for r in by_split["val"]],
        }
        notes = {**notes, "val_carving": carving}

    by_split["train"], dropped = drop_empty_train_captions(by_split["train"])
    errors, warnings = split_findings(by_split, dropped, ann_file, str(notes.get("layout", "")))
    if errors and strict:
        more = f" (and {len(errors) - 1} more; `bench data check` lists them all)" if len(errors) > 1 else ""
        raise DataError(errors[0].line + more)
    if dropped:
        notes = {**notes, "empty_train_captions": len(dropped)}

    if verify_images:
        missing = [r for r in records if not os.path.isfile(paths[r.name])]
        if missing:
            first = missing[0]
            raise DataError(f"{paths[first.name]}: image file not found ({first.entry} of {ann_file}); "
                            f"{len(missing)} of {len(records)} listed images are missing from {image_dir}")

    names = {s: [r.name for r in by_split[s]] for s in SPLITS}
    return DatasetSplits(
        name=name,
        train=_build_split("train", by_split["train"], paths),
        val=_build_split("val", by_split["val"], paths),
        test=_build_split("test", by_split["test"], paths),
        image_dir=image_dir,
        ann_file=ann_file,
        fingerprint=fingerprint(source_digest, names, carving, val_split_digest),
        notes=notes,
        errors=errors,
        warnings=warnings,
    )
