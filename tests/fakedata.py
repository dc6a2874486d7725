"""Generate tiny fake copies of the four datasets in their real on-disk layouts (and AMFMN precomp).

Used by the dataset tests: nothing here is hand-made, every file is written at test time into a
temp folder. Layouts and file naming follow ../shared/specs/datasets.md (next to the repository root):

    ucm     dataset.json          imgs/N.tif                  (N = 1..)
    sydney  dataset.json          images/N.tif                (some 16-bit, greyscale, 4-band TIFFs)
    rsicd   dataset_rsicd.json    RSICD_images/<class>_<n>.jpg (unequal captions per image)
    rsitmd  dataset_RSITMD.json   images/<class>_<n>.tif      (train/test only; `keywords` key)
    precomp <name>_precomp/{train,test}_caps.txt, train_filename.txt (per image),
            test_filename.txt (per caption) + images/
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airport", "beach", "denseresidential")


# ---- image writers ------------------------------------------------------------------------------
def write_tiff(path: Path, arr: np.ndarray, extra_samples: int = 0) -> None:
    """Minimal baseline uncompressed little-endian TIFF writer (Pillow cannot write 16-bit/N-band).

    arr: (H, W) or (H, W, C), uint8 or uint16. C=1 grey; C>=3 RGB plus C-3 extra samples
    (ExtraSamples = `extra_samples`: 0 unspecified e.g. NIR, 2 unassociated alpha).
    """
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    bits = arr.dtype.itemsize * 8
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    photometric = 1 if c < 3 else 2
    n_extra = c - (1 if c < 3 else 3)
    tags: list[tuple[int, int, list[int]]] = [
        (256, 4, [w]), (257, 4, [h]), (258, 3, [bits] * c), (259, 3, [1]), (262, 3, [photometric]),
        (273, 4, [0]), (277, 3, [c]), (278, 4, [h]), (279, 4, [len(data)]), (284, 3, [1]),
        (339, 3, [1] * c),
    ]
    if n_extra > 0:
        tags.append((338, 3, [extra_samples] * n_extra))
    tags.sort()
    ifd_off = 8
    extra_off = ifd_off + 2 + 12 * len(tags) + 4
    extra = b""
    body = []
    for tag, typ, vals in tags:
        raw = struct.pack("<" + ("H" if typ == 3 else "I") * len(vals), *vals)
        if len(raw) <= 4:
            body.append((tag, typ, len(vals), raw.ljust(4, b"\0"), -1))
        else:
            body.append((tag, typ, len(vals), b"", len(extra)))
            extra += raw + (b"\0" if len(raw) % 2 else b"")
    data_off = extra_off + len(extra)
    out = b"II*\0" + struct.pack("<I", ifd_off) + struct.pack("<H", len(body))
    for tag, typ, cnt, raw, off in body:
        if tag == 273:
            raw = struct.pack("<I", data_off)
        elif off >= 0:
            raw = struct.pack("<I", extra_off + off)
        out += struct.pack("<HHI", tag, typ, cnt) + raw
    out += struct.pack("<I", 0) + extra + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)


def rgb_array(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth-ish random RGB image (compresses sensibly as JPEG)."""
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR))


def write_image(path: Path, rng: np.random.Generator, size: int, variant: str = "rgb8") -> None:
    """Write one image; the format comes from the suffix, `variant` picks the pixel layout.

    variants: rgb8, grey8, rgb16, grey16, rgbn16 (4-band 16-bit), rgba8, rgbn8, palette.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rgb_array(rng, size)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        if variant == "rgb8":
            write_tiff(path, rgb)
        elif variant == "grey8":
            write_tiff(path, rgb[..., 0])
        elif variant == "rgb16":
            write_tiff(path, rgb.astype(np.uint16) * 257)
        elif variant == "grey16":
            write_tiff(path, rgb[..., 0].astype(np.uint16) * 257)
        elif variant == "rgbn16":
            nir = rgb[..., :1].astype(np.uint16)
            write_tiff(path, np.concatenate([rgb.astype(np.uint16), nir], axis=2) * 257, extra_samples=0)
        elif variant == "rgba8":
            write_tiff(path, np.concatenate([rgb, rgb[..., :1]], axis=2), extra_samples=2)
        elif variant == "rgbn8":
            write_tiff(path, np.concatenate([rgb, rgb[..., :1]], axis=2), extra_samples=0)
        else:
            raise ValueError(variant)
    elif suffix in (".jpg", ".jpeg"):
        Image.fromarray(rgb).save(path, quality=92)
    elif suffix == ".png":
        if variant == "palette":
            Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(path)
        elif variant == "grey16":
            Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)
        elif variant == "grey8":
            Image.fromarray(rgb[..., 0]).save(path)
        else:
            Image.fromarray(rgb).save(path)
    else:
        raise ValueError(f"unsupported suffix {suffix}")


# ---- datasets -----------------------------------------------------------------------------------
@dataclass
class FakeSet:
    root: Path
    ann_file: Path  # the JSON, or the precomp folder
    image_dir: Path
    splits: dict[str, list[str]] = field(default_factory=dict)  # image names per split, in file order
    captions: dict[str, list[str]] = field(default_factory=dict)  # image name -> normalised captions
    classes: dict[str, str] = field(default_factory=dict)  # image name -> class


LAYOUTS = {
    # name: (annotation file, image folder, extension, names carry the class)
    "ucm": ("dataset.json", "imgs", ".tif", False),
    "sydney": ("dataset.json", "images", ".tif", False),
    "rsicd": ("dataset_rsicd.json", "RSICD_images", ".jpg", True),
    "rsitmd": ("dataset_RSITMD.json", "images", ".tif", True),
}

_SYDNEY_VARIANTS = ("rgb8", "rgb8", "grey8", "rgb16", "rgbn16", "rgb8")


def _caption(cls: str, i: int, j: int) -> tuple[str, str]:
    """(raw text with the field's stray spacing, normalised text). Caption 0 repeats across a class."""
    if j == 0:
        raw = f"  many  buildings are near the {cls} . "
    else:
        raw = f"There is a {cls}\tscene  number {i} , caption {j} ."
    return raw, " ".join(raw.split())


def make_karpathy(root: Path, dataset: str, per_class: int = 6, classes: tuple[str, ...] = CLASSES,
                  seed: int = 0, image_size: int = 24) -> FakeSet:
    """A fake `dataset` in its real Karpathy-JSON layout under `root`.

    Per class: images 0-3 train, 4 val, 5 test (rsitmd: 0-4 train, 5 test; no val). rsicd has
    4-6 captions per image; the others 5.
    """
    ann_name, img_dir_name, ext, named_by_class = LAYOUTS[dataset]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    image_dir = root / img_dir_name
    fs = FakeSet(root, root / ann_name, image_dir, {"train": [], "val": [], "test": []})
    images = []
    sentid = 0
    n = 0
    for cls in classes:
        for i in range(per_class):
            n += 1
            name = f"{cls}_{i}{ext}" if named_by_class else f"{n}{ext}"
            k = i % 6
            split = ("train" if k < 5 else "test") if dataset == "rsitmd" else \
                ("train" if k < 4 else "val" if k == 4 else "test")
            n_caps = 4 + (i % 3) if dataset == "rsicd" else 5
            sents, norm = [], []
            for j in range(n_caps):
                raw, clean = _caption(cls, i, j)
                sents.append({"tokens": clean.lower().split(), "raw": raw, "imgid": n - 1, "sentid": sentid})
                norm.append(clean)
                sentid += 1
            entry = {"filename": name, "imgid": n - 1, "split": split,
                     "sentids": [s["sentid"] for s in sents], "sentences": sents}
            if dataset == "rsitmd":
                entry["keywords"] = [cls, "scene"]
            images.append(entry)
            fs.splits[split].append(name)
            fs.captions[name] = norm
            fs.classes[name] = cls if named_by_class else ""
            if dataset == "rsicd":
                size = (16, 20)[i % 2]
            elif dataset == "sydney":
                size = 32
            else:
                size = image_size
            variant = _SYDNEY_VARIANTS[i % len(_SYDNEY_VARIANTS)] if dataset == "sydney" else "rgb8"
            write_image(image_dir / name, rng, size, variant)
    fs.ann_file.write_text(json.dumps({"images": images, "dataset": dataset}), encoding="utf-8")
    return fs


def make_precomp(root: Path, name: str = "rsitmd", per_class: int = 6, classes: tuple[str, ...] = CLASSES,
                 seed: int = 0, ext: str = ".tif", image_size: int = 20, test_caps: tuple[int, ...] = (5, 4)
                 ) -> FakeSet:
    """A fake AMFMN precomp copy: `<root>/<name>_precomp/*.txt` + `<root>/images/`.

    Per class: images 0..per_class-2 train (5 captions each, one name line per image), the last
    one test (captions per image cycling through `test_caps`, one name line per caption).
    """
    rng = np.random.default_rng(seed)
    pre = root / f"{name}_precomp"
    pre.mkdir(parents=True, exist_ok=True)
    image_dir = root / "images"
    fs = FakeSet(root, pre, image_dir, {"train": [], "val": [], "test": []})
    train_caps, train_names, test_caps_lines, test_names = [], [], [], []
    t = 0
    for cls in classes:
        for i in range(per_class):
            fname = f"{cls}_{i}{ext}"
            write_image(image_dir / fname, rng, image_size)
            fs.classes[fname] = cls
            if i < per_class - 1:
                caps = [_caption(cls, i, j) for j in range(5)]
                train_names.append(fname)
                train_caps += [raw for raw, _ in caps]
                fs.splits["train"].append(fname)
            else:
                k = test_caps[t % len(test_caps)]
                t += 1
                caps = [_caption(cls, i, j) for j in range(k)]
                test_names += [fname] * k
                test_caps_lines += [raw.replace("\t", " ") for raw, _ in caps]
                fs.splits["test"].append(fname)
            fs.captions[fname] = [clean for _, clean in caps]
    (pre / "train_caps.txt").write_text("\n".join(train_caps) + "\n", encoding="utf-8")
    (pre / "train_filename.txt").write_text("\n".join(train_names) + "\n", encoding="utf-8")
    (pre / "test_caps.txt").write_text("\n".join(test_caps_lines) + "\n", encoding="utf-8")
    (pre / "test_filename.txt").write_text("\n".join(test_names) + "\n", encoding="utf-8")
    return fs
