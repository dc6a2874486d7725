"""`bench data check`: read a dataset once, completely, and list every problem in one pass.

Why: a missing or truncated image otherwise surfaces hours into training inside a DataLoader
worker. Here every image is opened and decoded (in threads) and every caption looked at; each
problem is one line naming the file and what is wrong, so the user can fix them all at once.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contracts import DatasetSplits, Problem, Split
from ..errors import DataError
from .images import DecodedImage, decode_image
from .source import DataSource, load_dataset


@dataclass
class SplitStats:
    name: str
    n_images: int = 0
    n_captions: int = 0
    n_distinct_captions: int = 0
    captions_per_image_min: int = 0
    captions_per_image_max: int = 0
    n_empty_captions: int = 0
    n_unreadable_images: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # class -> images
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> images
    image_modes: dict[str, int] = field(default_factory=dict)  # Pillow mode as stored -> images


@dataclass
class CheckReport:
    dataset: str
    layout: str = ""
    ann_file: str = ""
    image_dir: str = ""
    fingerprint: str = ""
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # reported, exit 0 (e.g. empty train captions)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def class_counts(image_classes: list[str]) -> dict[str, int]:
    """{class: images}, sorted; images without a class in their name (RSICD's numbered 00001.jpg files:
    class "") are no class of their own, so RSICD counts its 30 classes, not 31."""
    return dict(sorted(Counter(c for c in image_classes if c).items()))


def _check_split(ds: DatasetSplits, split: Split, decode: bool, pool: ThreadPoolExecutor,
                 problems: list[Problem]) -> SplitStats:
    st = SplitStats(split.name, n_images=split.n_images, n_captions=split.n_captions,
                    n_distinct_captions=len(set(split.captions)))
    counts = Counter(split.cap2img.tolist())
    per_image = [counts.get(i, 0) for i in range(split.n_images)]
    if per_image:
        st.captions_per_image_min, st.captions_per_image_max = min(per_image), max(per_image)
    st.classes = class_counts(split.image_classes)
    if split.name == "train":  # left out of the split by the split rules; counted here
        st.n_empty_captions = int(ds.notes.get("empty_train_captions", 0))
    else:
        st.n_empty_captions = sum(1 for t in split.captions if not t)

    def one(path: Path) -> DecodedImage | Problem:
        if not os.path.isfile(path):
            return Problem(str(path), f"image file not found (listed in {ds.ann_file}, {split.name} split)")
        if not decode:
            return Problem("", "")
        try:
            return decode_image(path)
        except DataError as e:
            return Problem(str(path), str(e).removeprefix(f"{path}: "))

    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for res in pool.map(one, split.image_paths):
        if isinstance(res, DecodedImage):
            sizes[f"{res.size[0]}x{res.size[1]}"] += 1
            modes[res.mode] += 1
        elif res.message:
            st.n_unreadable_images += 1
            problems.append(res)
    st.image_sizes = dict(sizes.most_common())
    st.image_modes = dict(modes.most_common())
    return st


def check_dataset(
    source: DataSource | str,
    *,
    decode: bool = True,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
    **where: Any,
) -> CheckReport:
    """Load the annotation, then open and decode every image once; collect all problems.

    `source`: a DataSource, or a dataset name with the DataSource fields as keywords.
    An unusable annotation (bad JSON, wrong keys, unsafe names, non-UTF-8) is reported as the one
    problem found. Input errors that are not about the data (missing folder, unknown dataset) raise
    UserError as usual.
    """
    src = DataSource.of(source, **where)
    report = CheckReport(dataset=src.name)
    try:
        ds = load_dataset(src, verify_images=False, strict=False, warn=lambda line: None)
    except DataError as e:
        report.problems.append(Problem("", str(e)))
        return report
    _describe(report, ds)
    splits = (ds.train, ds.val, ds.test)
    total = sum(s.n_images for s in splits)
    if total and not any(os.path.isfile(p) for s in splits for p in s.image_paths):
        first = next(p for s in splits for p in s.image_paths)
        report.problems.append(Problem(str(ds.image_dir), f"none of the {total} images listed in {ds.ann_file} "
                                                          f"is here (first: {first.name}); wrong --image-dir?"))
        return report
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for split in splits:
            if progress is not None:
                progress(f"checking {split.name}: {split.n_images} images")
            report.splits[split.name] = _check_split(ds, split, decode, pool, report.problems)
    return report


def _describe(report: CheckReport, ds: DatasetSplits) -> None:
    """What was loaded (layout, files, fingerprint, notes) and the split-rule findings `bench run` applies."""
    report.dataset = ds.name
    report.layout = str(ds.notes.get("layout", ""))
    report.ann_file = str(ds.ann_file)
    report.image_dir = str(ds.image_dir)
    report.fingerprint = ds.fingerprint
    report.problems.extend(ds.errors)  # the split rules `bench run` applies (assembly.split_findings)
    report.warnings.extend(ds.warnings)
    report.notes = {k: v for k, v in ds.notes.items() if k != "val_carving"}
    if "val_carving" in ds.notes:
        vc = ds.notes["val_carving"]
        report.notes["val_carving"] = {k: vc[k] for k in ("seed", "fraction", "n_train", "n_val")}


def format_report(report: CheckReport) -> str:
    """A plain-text table per split (what `bench data check` prints on stdout)."""
    lines = [f"dataset: {report.dataset}   layout: {report.layout}",
             f"annotation: {report.ann_file}", f"images: {report.image_dir}",
             f"fingerprint: {report.fingerprint}"]
    for k, v in report.notes.items():
        if k not in ("layout",):
            lines.append(f"note: {k} = {v}")
    if report.splits:
        rows = [("split", "images", "captions", "distinct", "caps/img", "classes", "empty", "bad img")]
        for s in report.splits.values():
            rows.append((s.name, str(s.n_images), str(s.n_captions), str(s.n_distinct_captions),
                         f"{s.captions_per_image_min}-{s.captions_per_image_max}", str(len(s.classes)),
                         str(s.n_empty_captions), str(s.n_unreadable_images)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines.append("")
        for r in rows:
            lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        lines.append("")
        for s in report.splits.values():
            sizes = ", ".join(f"{k} x{v}" for k, v in list(s.image_sizes.items())[:6])
            more = f" (+{len(s.image_sizes) - 6} more)" if len(s.image_sizes) > 6 else ""
            modes = ", ".join(f"{k} x{v}" for k, v in s.image_modes.items())
            lines.append(f"{s.name}: sizes {sizes or '-'}{more}; modes {modes or '-'}")
    lines.append("")
    lines.append(f"{len(report.problems)} problem(s)" if report.problems else "no problems found")
    if report.warnings:
        lines[-1] += f", {len(report.warnings)} warning(s)"
    return "\n".join(lines)
