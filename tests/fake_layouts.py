"""Generate tiny fake copies of the layouts #17 reads, each in its real on-disk structure.

Every generator but NWPU's re-writes one Karpathy fake set (fakedata.make_karpathy) in another
layout, so a test can check that both layouts give the same records:

    hf_parquet  <root>/data/{train,valid,test}-00000-of-00001.parquet  (filename, captions, image{bytes,path})
    pir_json    <root>/<name>_{train,val,test}.json + <root>/images/<split>/<file>
                (train: one entry per caption; val/test: one entry per image with a caption list)
    csv         <root>/<name>_test.csv  filename,title (or filepath), ',' or tab, utf-8 or gb18030
    nwpu        <root>/dataset_nwpu.json keyed by class + <root>/NWPU_images/<class>/<class>_NNN.jpg
    verify      <name>_precomp/{train,val}_{caps,filename}_verify.txt next to a precomp copy
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
from fakedata import FakeSet, write_image


def make_hf_parquet(root: Path, fs: FakeSet, shard_split_name: dict[str, str] | None = None) -> Path:
    """`fs` as Hugging Face parquet shards under `root/data`; returns that folder."""
    import pandas as pd

    names = shard_split_name or {"train": "train", "val": "valid", "test": "test"}
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, shard in names.items():
        rows = [{"filename": n, "captions": list(fs.captions[n]),
                 "image": {"bytes": (fs.image_dir / n).read_bytes(), "path": n}} for n in fs.splits[split]]
        pd.DataFrame(rows, columns=["filename", "captions", "image"]).to_parquet(
            data / f"{shard}-00000-of-00001.parquet", index=False)
    return data


def make_pir_json(root: Path, fs: FakeSet, name: str = "rsicd") -> Path:
    """`fs` as PIR/HarMA list JSON files with images under images/<split>/; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        entries: list[dict] = []
        for k, n in enumerate(fs.splits[split]):
            rel = f"{split}/{n}"
            dst = root / "images" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fs.image_dir / n, dst)
            if split == "train":
                entries += [{"caption": c, "image": rel, "image_id": k, "label_name": fs.classes[n],
                             "label": 0} for c in fs.captions[n]]
            else:
                entries.append({"image": rel, "caption": list(fs.captions[n])})
        (root / f"{name}_{split}.json").write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return root


def make_csv(root: Path, fs: FakeSet, name: str = "rsicd", splits: tuple[str, ...] = ("test",), sep: str = ",",
             column: str = "filename", absolute: bool = False, encoding: str = "utf-8",
             extra_caption: str = "") -> Path:
    """`fs` as one CSV per split (one row per caption) with the images in root/images; returns `root`."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter=sep, lineterminator="\n")
        w.writerow([column, "title"])
        for n in fs.splits[split]:
            shutil.copyfile(fs.image_dir / n, image_dir / n)
            path = str((image_dir / n).resolve()) if absolute else n
            for c in fs.captions[n]:
                w.writerow([path, c])
            if extra_caption:
                w.writerow([path, extra_caption])
        (root / f"{name}_{split}.csv").write_bytes(buf.getvalue().encode(encoding))
    return root


def make_nwpu(root: Path, classes: tuple[str, ...] = ("airplane", "beach", "church"), per_class: int = 5,
              seed: int = 0) -> dict[str, dict]:
    """A fake NWPU-Captions copy; returns name ('<class>/<file>') -> {split, captions, class}."""
    rng = np.random.default_rng(seed)
    obj: dict[str, list] = {}
    truth: dict[str, dict] = {}
    sentid = 0
    for ci, cls in enumerate(classes):
        obj[cls] = []
        for i in range(per_class):
            fname = f"{cls}_{i + 1:03d}.jpg"
            split = ("train", "train", "train", "val", "test")[i % 5]
            caps = [f"  a {cls} scene , number {i} caption {j} ." for j in range(5)]
            entry = {"filename": fname, "split": split, "raw": caps[0], "sentids": sentid, "imgid": ci * per_class + i}
            for j in range(1, 5):
                entry[f"raw_{j}"] = caps[j]
                entry[f"sentids_{j}"] = sentid + j
            sentid += 5
            obj[cls].append(entry)
            write_image(root / "NWPU_images" / cls / fname, rng, 16)
            truth[f"{cls}/{fname}"] = {"split": split, "captions": [" ".join(c.split()) for c in caps], "class": cls}
    (root / "dataset_nwpu.json").write_text(json.dumps(obj), encoding="utf-8")
    return truth


def make_verify(fs: FakeSet, n_val_per_class: int = 1) -> dict[str, list[str]]:
    """Add *_verify files to the precomp copy `fs` (fakedata.make_precomp): the last train image(s) of
    each class go to val. train_filename_verify has one line per image, val one line per caption."""
    pre = fs.ann_file
    by_class: dict[str, list[str]] = {}
    for n in fs.splits["train"]:
        by_class.setdefault(fs.classes[n], []).append(n)
    val = [n for names in by_class.values() for n in names[-n_val_per_class:]]
    train = [n for n in fs.splits["train"] if n not in val]
    (pre / "train_caps_verify.txt").write_text("".join(c + "\n" for n in train for c in fs.captions[n]))
    (pre / "train_filename_verify.txt").write_text("".join(n + "\n" for n in train))
    (pre / "val_caps_verify.txt").write_text("".join(c + "\n" for n in val for c in fs.captions[n]))
    (pre / "val_filename_verify.txt").write_text("".join(n + "\n" for n in val for _ in fs.captions[n]))
    return {"train": train, "val": val}
