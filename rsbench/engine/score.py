"""`bench score`'s logic: rank an external score matrix (a published model's) into a result cell.

The matrix is loaded memory-mapped and checked (shape, finite values) before the old cell is
cleared, so a bad file never destroys a result. Pickles are refused.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, first_line

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class ScoredCell:
    """What `score_external` wrote: the cell, its metrics, and the split it was scored on."""

    cell: Path
    metrics: dict[str, Any]
    dataset: str
    split: str
    n_images: int
    n_captions: int


def score_external(sims: Path, dataset: str, name: str, out: Path, *, data_root: Path | None = None,
                   ann_file: Path | None = None, image_dir: Path | None = None, split: str = "test",
                   seed: int = 0, overwrite: bool = False) -> ScoredCell:
    """Load and check the matrix, then write <out>/<dataset>/<name>/seed<seed>/ under the cell lock."""
    started = time.time()
    if not _NAME.match(name):
        raise UserError(f"--name '{name}': use letters, digits and . _ + - (it becomes a folder name)")

    from ..datasets import load_dataset
    from ..locks import cell_lock, holding
    from ..results.cell import cell_dir, is_complete

    arr = load_score_matrix(sims)
    ds = load_dataset(dataset, data_root=data_root, ann_file=ann_file, image_dir=image_dir, verify_images=False)
    sp = ds.split(split)
    check_score_matrix(arr, sims, ds.name, split, sp.n_images, sp.n_captions)

    cell = cell_dir(out, ds.name, name, seed)
    with holding(cell_lock(cell), f"{cell}: being written by another process"):
        if is_complete(cell) and not overwrite:
            raise UserError(f"{cell}: already has results; pass --overwrite to replace them")
        metrics = _score_cell(cell, arr, sims, ds, sp, split, name, seed, started)
    return ScoredCell(cell, metrics, ds.name, split, sp.n_images, sp.n_captions)


def load_score_matrix(path: Path) -> Any:
    """Load a 2-D numeric score matrix from .npy (memory-mapped), or .npz holding exactly one array.

    Pickles are refused. Memory-mapping lets a 50,000 x 250,000 matrix be ranked block by block.
    """
    import numpy as np

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    _check_magic(path)
    try:
        obj = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        pickled = "pickle" in str(e) or "Python objects" in str(e)
        msg = "contains Python objects (pickled); save a plain numeric array" if pickled else first_line(e)
        raise UserError(f"{path}: {msg}") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: not a .npy/.npz array file ({first_line(e)})") from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            names = list(obj.files)
            if len(names) != 1:
                raise UserError(f"{path}: expected one array in the .npz, found {len(names)}: {names}")
            try:
                arr = obj[names[0]]
            except ValueError as e:
                raise UserError(f"{path}: array '{names[0]}' cannot be read ({e})") from None
    else:
        arr = obj
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise UserError(f"{path}: scores must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.itemsize > 8:  # longdouble (float96/float128): torch cannot rank it
        raise UserError(f"{path}: dtype {arr.dtype} (longdouble) is not supported; save the scores as float64 "
                        "or float32")
    if arr.ndim != 2:
        raise UserError(f"{path}: expected a 2-D (images x captions) matrix, got shape {arr.shape}")
    if not arr.dtype.isnative:  # big-endian file on a little-endian machine: same values, native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _check_magic(path: Path) -> None:
    """Say what a file is when it is not an array file at all (np.load would call it 'pickled')."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")) or head[:1] == b"\x80":
        return  # .npy, .npz (zip), or a pickle: np.load refuses the last without running it
    if not head:
        raise UserError(f"{path}: empty file (0 bytes); expected a .npy/.npz array file")
    try:
        head.decode("utf-8")
        what = "a text file"
    except UnicodeDecodeError:
        what = "neither .npy nor .npz (no NPY header or zip signature)"
    raise UserError(f"{path}: not a .npy file: {what}; save the matrix with numpy.save (or numpy.savez)")


def check_score_matrix(arr: Any, path: Path, dataset: str, split: str, n_images: int, n_captions: int) -> None:
    """Shape must be (n_images, n_captions) of the split; all values finite."""
    import numpy as np

    if arr.shape != (n_images, n_captions):
        hint = " (transposed? expected images x captions)" if arr.shape == (n_captions, n_images) else ""
        raise UserError(
            f"{path}: shape {tuple(arr.shape)} does not match {split} split of {dataset} "
            f"({n_images} images x {n_captions} captions){hint}"
        )
    if np.issubdtype(arr.dtype, np.floating):
        rows = max(1, (1 << 26) // max(1, n_captions))  # bounded memory on memory-mapped input
        for r0 in range(0, n_images, rows):
            bad = ~np.isfinite(arr[r0 : r0 + rows])
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise UserError(
                    f"{path}: non-finite score at image {r0 + i}, caption {j}; all values must be finite"
                )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_info(started: float, extra: dict[str, Any]) -> dict[str, Any]:
    """versions, hardware, command line, wall time (for run.json)."""
    import os
    import platform

    import numpy as np
    import torch

    from .. import __version__

    return {
        "versions": {
            "rsbench": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
        "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": None},
        "command": sys.argv,
        "wall_seconds": round(time.time() - started, 3),
        **extra,
    }


def _score_cell(cell: Path, arr: Any, sims: Path, ds: Any, sp: Any, split: str, name: str, seed: int,
                started: float) -> dict[str, Any]:
    """Rank the matrix and write the cell's files (the caller holds the cell lock)."""
    from ..io import write_json
    from ..evaluation.metrics import compute_ranks
    from ..results.cell import mark_incomplete, write_eval_outputs

    i2t, t2i = compute_ranks(arr, sp.cap2img)  # everything that can fail comes before the old cell is cleared
    source, digest = str(sims.resolve()), _sha256(sims)
    mark_incomplete(cell)
    write_json(
        cell / "config.json",
        {
            "method": name,
            "dataset": ds.name,
            "seed": seed,
            "split": split,
            "preset": None,
            "train": None,
            "model": None,
            "external": True,
            "source": source,
        },
    )
    write_json(
        cell / "run.json",
        _run_info(
            started,
            {
                "data_fingerprint": ds.fingerprint,
                "ann_file": str(Path(ds.ann_file).resolve()) if ds.ann_file else None,
                "source": source,
                "source_sha256": digest,
            },
        ),
    )
    extra = {"split": split, "n_images": sp.n_images, "n_captions": sp.n_captions}
    return write_eval_outputs(cell, i2t, t2i, sp.cap2img, {**extra, "selected_epoch": None, "val": None})
