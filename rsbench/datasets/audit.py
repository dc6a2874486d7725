"""`bench data audit`: the data faults the field talks about, measured.

Captions: exact duplicate captions within each split (the same text written for several images),
and what they cost: under the single-positive rule a caption query counts as a hit only for its own
image, but identical texts give identical queries and so the same ranking; of the queries sharing
a text, at most those of one image can be right. The best t2i R@1 any method can reach is then
sum over texts of (most captions of that text on one image) / number of captions.

Images: near-duplicate images within a dataset across splits and across datasets, by perceptual
hash (datasets/hashing.py), each pair with its Hamming distance.

Writes DIR/audit.json ({"image_duplicates": [...], "caption_duplicates": [...], "ceilings": {...}})
and DIR/audit.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..contracts import DatasetSplits, Split
from ..io import write_json, write_text

SPLITS = ("train", "val", "test")
DEFAULT_MAX_DISTANCE = 6


def caption_audit(split: Split) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(ceiling row, duplicate groups) of one split; a group is a text written for several images."""
    per_text: dict[str, Counter[int]] = defaultdict(Counter)
    for text, img in zip(split.captions, split.cap2img.tolist()):
        per_text[text][img] += 1
    n = len(split.captions)
    best = sum(max(c.values()) for c in per_text.values())
    shared = {t: c for t, c in per_text.items() if len(c) > 1}
    repeating = sum(sum(c.values()) for c in shared.values())
    row = {"n_images": split.n_images, "n_captions": n, "n_distinct": len(per_text),
           "n_captions_shared_across_images": repeating, "n_texts_shared_across_images": len(shared),
           "n_captions_repeated_within_image": sum(v - 1 for c in per_text.values() for v in c.values()),
           "t2i_r1_ceiling": 100.0 * best / n if n else None}
    groups = [{"text": t, "images": [split.image_names[i] for i in sorted(c)], "n_captions": sum(c.values())}
              for t, c in sorted(shared.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    return row, groups


def _caption_part(datasets: list[DatasetSplits]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ceilings: dict[str, Any] = {}
    dups: list[dict[str, Any]] = []
    for ds in datasets:
        ceilings[ds.name] = {}
        for s in SPLITS:
            row, groups = caption_audit(ds.split(s))
            ceilings[ds.name][s] = row
            dups += [{"dataset": ds.name, "split": s, **g} for g in groups]
    return ceilings, dups


def _image_index(ds: DatasetSplits) -> list[tuple[str, str, Path]]:
    return [(s, n, p) for s in SPLITS for n, p in zip(ds.split(s).image_names, ds.split(s).image_paths)]


def image_duplicates(datasets: list[DatasetSplits], max_distance: int = DEFAULT_MAX_DISTANCE,
                     workers: int | None = None, progress: Callable[[str], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Near-duplicate pairs: within a dataset across splits, and between every two datasets."""
    from .hashing import close_pairs, hash_images, hashes_to_array

    index, arrays = [], []
    for ds in datasets:
        items = _image_index(ds)
        if progress is not None:
            progress(f"hashing {ds.name}: {len(items)} images")
        hashes = hash_images(ds.image_dir, [f"{s}/{n}" for s, n, _ in items], [p for _, _, p in items],
                             workers=workers)
        index.append(items)
        arrays.append(hashes_to_array(hashes))
    pairs: list[dict[str, Any]] = []
    for a in range(len(datasets)):
        for b in range(a, len(datasets)):
            for i, j, d in close_pairs(arrays[a], arrays[b], max_distance, same=a == b):
                ia, ib = index[a][i], index[b][j]
                if a == b and ia[0] == ib[0]:
                    continue  # same split of the same dataset: not a leak between splits
                pairs.append({"a": {"dataset": datasets[a].name, "split": ia[0], "filename": ia[1]},
                              "b": {"dataset": datasets[b].name, "split": ib[0], "filename": ib[1]},
                              "distance": d})
    pairs.sort(key=lambda p: (p["distance"], p["a"]["dataset"], p["a"]["filename"], p["b"]["filename"]))
    return pairs


def run_audit(datasets: list[DatasetSplits], out: Path | None = None, *, images: bool = True,
              max_distance: int = DEFAULT_MAX_DISTANCE, workers: int | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The audit of `datasets`; written to out/audit.json and out/audit.md when `out` is given."""
    ceilings, caption_dups = _caption_part(datasets)
    result: dict[str, Any] = {
        "datasets": {ds.name: {"fingerprint": ds.fingerprint, "layout": ds.notes.get("layout", "")} for ds in datasets},
        "image_duplicates": image_duplicates(datasets, max_distance, workers, progress) if images else None,
        "image_max_distance": max_distance if images else None,
        "caption_duplicates": caption_dups,
        "ceilings": ceilings,
    }
    if out is not None:
        write_json(Path(out) / "audit.json", result)
        write_text(Path(out) / "audit.md", format_audit(result))
    return result


def format_audit(result: dict[str, Any]) -> str:
    """audit.md: the ceiling table, then counts and the first pairs of near-duplicate images."""
    lines = ["# Data audit", "", "## Duplicate captions and the t2i R@1 ceiling (single-positive rule)", "",
             "| dataset | split | images | captions | distinct | shared across images | ceiling t2i R@1 |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, rows in result["ceilings"].items():
        for s, r in rows.items():
            ceil = "-" if r["t2i_r1_ceiling"] is None else f"{r['t2i_r1_ceiling']:.2f}"
            lines.append(f"| {name} | {s} | {r['n_images']} | {r['n_captions']} | {r['n_distinct']} | "
                         f"{r['n_captions_shared_across_images']} | {ceil} |")
    lines += ["", "## Near-duplicate images", ""]
    pairs = result["image_duplicates"]
    if pairs is None:
        lines.append("not measured (captions only)")
    else:
        lines.append(f"{len(pairs)} pair(s) at Hamming distance <= {result['image_max_distance']} of 64 bits")
        if pairs:
            lines += ["", "| a | b | distance |", "|---|---|---:|"]
            fmt = "{dataset}/{split}/{filename}"
            lines += [f"| {fmt.format(**p['a'])} | {fmt.format(**p['b'])} | {p['distance']} |" for p in pairs[:200]]
            if len(pairs) > 200:
                lines.append(f"\n({len(pairs) - 200} more in audit.json)")
    return "\n".join(lines) + "\n"
