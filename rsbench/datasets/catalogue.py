"""The catalogue of known datasets: one entry per dataset (names, default files, display name).

Adding a dataset is one `DatasetInfo` here; finding its files on disk is datasets/source.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import unknown


@dataclass(frozen=True)
class DatasetInfo:
    """What we know about a dataset's usual files (defaults; every path can be overridden)."""

    name: str
    description: str
    ann_files: tuple[str, ...]  # default annotation file names (Karpathy JSON), tried in order
    image_dirs: tuple[str, ...]  # candidate image folder names, tried in order
    image_ext: str  # usual image file extension (a hint only)
    aliases: tuple[str, ...] = ()
    display_name: str = ""  # how tables and papers write it ('' -> the name)


_DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("ucm", "UCM-captions: 2100 images, 21 classes, 256x256 TIFF, official train/val/test",
                    ("dataset.json",), ("imgs", "images"), ".tif", ("ucm-captions", "ucm_captions"), "UCM-captions"),
        DatasetInfo("sydney", "Sydney-captions: 613 images, 7 classes, 500x500 TIFF, official train/val/test",
                    ("dataset.json",), ("images", "imgs"), ".tif", ("sydney-captions", "sydney_captions"),
                    "Sydney-captions"),
        DatasetInfo("rsicd", "RSICD: 10921 images, 30 classes, 224x224 JPEG, 8734/1094/1093",
                    ("dataset_rsicd.json", "dataset_RSICD.json"), ("RSICD_images", "rsicd_images", "images"),
                    ".jpg", display_name="RSICD"),
        DatasetInfo("rsitmd", "RSITMD: 4743 images, 32 classes, 256x256 TIFF, 4291 train / 452 test; "
                    "val carved from train", ("dataset_RSITMD.json", "dataset_rsitmd.json"),
                    ("images", "RSITMD_images", "rsitmd_images"), ".tif", display_name="RSITMD"),
        DatasetInfo("nwpu", "NWPU-Captions: 31500 images, 45 classes, 256x256 JPEG, 157500 captions; "
                    "dataset_nwpu.json keyed by class", ("dataset_nwpu.json", "dataset_NWPU.json"),
                    ("NWPU_images", "nwpu_images", "images"), ".jpg", ("nwpu-captions", "nwpu_captions"),
                    "NWPU-Captions"),
        DatasetInfo("synthetic", "Synthetic shapes with templated captions (generated, cached; for tests and "
                    "smoke runs)", ("dataset.json",), ("images",), ".png"),
    )
}
_ALIASES = {a: d.name for d in _DATASETS.values() for a in d.aliases}


def list_datasets() -> list[DatasetInfo]:
    return [_DATASETS[k] for k in sorted(_DATASETS)]


def get_dataset_info(name: str) -> DatasetInfo:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _DATASETS:
        raise unknown("dataset", name, list(_DATASETS) + list(_ALIASES))
    return _DATASETS[key]


def display_name(name: str) -> str:
    """How a dataset is written in tables ('rsicd' -> 'RSICD'); a name without one is returned as given."""
    key = name.strip().lower()
    info = _DATASETS.get(_ALIASES.get(key, key))
    return info.display_name if info is not None and info.display_name else name

