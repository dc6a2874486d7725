"""`bench score`'s logic: rank an external score matrix (a published model's) into a result cell.

The matrix is loaded memory-mapped and checked (shape, finite values) before the old cell is
cleared, so a bad file never destroys a result. Pickles are refused.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError, one_line

if TYPE_CHECKING:
    from ..datasets import DataSource

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


def score_external(sims: Path, source: DataSource | str, name: str, out: Path, *, split: str = "test",
                   seed: int = 0, overwrite: bool = False, **where: Any) -> ScoredCell:
    """Load and check the matrix, then write <out>/<dataset>/<name>/seed<seed>/ under the cell lock.

    `source`: where the dataset is (a DataSource, or a dataset name with its fields as keywords)."""
    started = time.time()
    if not _NAME.match(name):
        raise UserError(f"--name '{name}': use letters, digits and . _ + - (it becomes a folder name)")

    from ..datasets import DataSource, load_dataset
    from ..locks import cell_lock, holding
    from ..results.cell import is_complete
    from ..results.layout import cell_dir

    arr = load_score_matrix(sims)
    ds = load_dataset(DataSource.of(source, **where), verify_images=False)
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
        msg = "contains Python objects (pickled); save a plain numeric array" if pickled else one_line(e)
        raise UserError(f"{path}: {msg}") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: not a .npy/.npz array file ({one_line(e)})") from None
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


def _score_cell(cell: Path, arr: Any, sims: Path, ds: Any, sp: Any, split: str, name: str, seed: int,
                started: float) -> dict[str, Any]:
    """Rank the matrix and write the cell's files (the caller holds the cell lock)."""
    from ..evaluation.metrics import compute_ranks
    from ..io import sha256_file, write_json
    from ..results.cell import mark_incomplete, run_record, write_eval_outputs
    from ..results.layout import CONFIG_FILE, RUN_FILE

    i2t, t2i = compute_ranks(arr, sp.cap2img)  # everything that can fail comes before the old cell is cleared
    source = str(sims.resolve())
    extra = {"source": source, "source_sha256": sha256_file(sims)}
    mark_incomplete(cell)
    write_json(cell / CONFIG_FILE, {"method": name, "dataset": ds.name, "seed": seed, "split": split,
                                    "preset": None, "train": None, "model": None, "external": True,
                                    "source": source})
    write_json(cell / RUN_FILE, run_record(ds, time.time() - started, extra=extra))
    extra = {"split": split, "n_images": sp.n_images, "n_captions": sp.n_captions}
    return write_eval_outputs(cell, i2t, t2i, sp.cap2img, {**extra, "selected_epoch": None, "val": None},
                              fingerprint=ds.fingerprint)
