"""One result cell folder (<out>/<dataset>/<method>/seed<k>/, see docs/DESIGN.md): its writer, its one
reader, its run record (run.json) and its failure marker.

A cell is complete when its metrics.json exists and every result file reads back; metrics.json is
written last, so a crashed or running job never counts. File names live in rsbench.results.layout.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, one_line
from ..evaluation.metric_names import LEADERBOARD_METRICS, METRIC_KEYS
from ..evaluation.topk import TOPK_FILE, TopK, read_topk, write_topk
from ..io import read_json, read_json_object, write_json, write_with
from .layout import CONFIG_FILE, FAILED_FILE, METRICS_FILE, RANKS_FILE, RUN_FILE, cell_dir, parse_cell

__all__ = ["Cell", "DamagedCell", "cell_damage", "cell_dir", "clear_failure", "is_complete", "load_cell",
           "mark_incomplete", "read_cell", "read_failure", "read_run_record", "run_record", "write_eval_outputs",
           "write_failure"]


def mark_incomplete(cell: str | Path) -> None:
    """Remove metrics.json before (re)writing a cell, so a half-rewritten cell never reads as complete.
    ranks.npz and topk.npz stay until they are replaced: without metrics.json nothing vouches for them."""
    (Path(cell) / METRICS_FILE).unlink(missing_ok=True)


def _check_topk(top: TopK, n_images: int, n_captions: int) -> None:
    """The top-K lists must belong to this gallery (one row per query, indices inside it)."""
    rows = (top.i2t_idx.shape[0], top.t2i_idx.shape[0])
    if rows != (n_images, n_captions):
        raise ValueError(f"top-K has {rows[0]} image and {rows[1]} caption queries, the ranks {n_images} and "
                         f"{n_captions}")


def write_eval_outputs(
    cell: str | Path,
    i2t_rank: Any,
    t2i_rank: Any,
    cap2img: Any,
    extra: dict[str, Any] | None = None,
    *,
    fingerprint: str | None = None,
    topk: TopK | None = None,
) -> dict[str, Any]:
    """Write ranks.npz, then topk.npz (when `topk` is given), then metrics.json last; return the metrics.

    extra adds split, n_images, n_captions, selected_epoch, val (defaults: "test", the rank
    lengths, None, None) and any further keys; it may not override a computed metric.
    metrics.json also names the cell it belongs to: dataset, method and seed (from the folder, when
    it is shaped like a cell) and the data fingerprint, so a copied file still says what it measures.
    Without `topk` an earlier run's topk.npz is removed, so the gallery never shows another run's lists.
    """
    from ..evaluation.metrics import chance_metrics, metrics_from_ranks  # torch: only writers pay for it

    cell = Path(cell)
    i2t = np.asarray(i2t_rank, dtype=np.int64)
    t2i = np.asarray(t2i_rank, dtype=np.int64)
    c2i = np.asarray(cap2img, dtype=np.int64)
    if c2i.shape != t2i.shape:
        raise ValueError(f"cap2img has shape {c2i.shape}, t2i_rank {t2i.shape}")
    extra = dict(extra or {})
    for key, n in (("n_images", i2t.size), ("n_captions", t2i.size)):
        if key in extra and int(extra[key]) != n:
            raise ValueError(f"extra[{key!r}] = {extra[key]} but the ranks have {n}")
    computed = metrics_from_ranks(i2t, t2i)
    clash = (set(computed) | {"chance_mR", "dataset", "method", "seed", "fingerprint"}) & set(extra)
    if clash:
        raise ValueError(f"extra may not override metrics: {sorted(clash)}")
    if topk is not None:
        _check_topk(topk, i2t.size, t2i.size)

    mark_incomplete(cell)
    cell.mkdir(parents=True, exist_ok=True)
    write_with(cell / RANKS_FILE, lambda f: np.savez(f, i2t_rank=i2t, t2i_rank=t2i, cap2img=c2i))
    if topk is not None:
        write_topk(cell / TOPK_FILE, topk)
    else:
        (cell / TOPK_FILE).unlink(missing_ok=True)

    metrics: dict[str, Any] = {
        "split": extra.pop("split", "test"),
        "n_images": int(extra.pop("n_images", i2t.size)),
        "n_captions": int(extra.pop("n_captions", t2i.size)),
    }
    metrics.update({k: computed[k] for k in METRIC_KEYS})
    metrics["chance_mR"] = chance_metrics(c2i)["chance_mR"]
    metrics["recall_curve"] = computed["recall_curve"]
    metrics["selected_epoch"] = extra.pop("selected_epoch", None)
    metrics["val"] = extra.pop("val", None)
    metrics.update(_identity(cell, fingerprint))
    metrics.update(extra)
    write_json(cell / METRICS_FILE, metrics)
    return metrics


def _identity(cell: Path, fingerprint: str | None) -> dict[str, Any]:
    """dataset, method, seed (None outside a <dataset>/<method>/seed<k> folder) and the data fingerprint."""
    dataset, method, seed = parse_cell(cell) or (None, None, None)
    return {"dataset": dataset, "method": method, "seed": seed, "fingerprint": fingerprint}


class DamagedCell(UserError):
    """A cell whose metrics.json exists (so it claims to be finished) but whose result files do not read back."""


def _read_metrics(cell: Path) -> dict[str, Any]:
    """metrics.json as a dict whose leaderboard metrics are all finite numbers; DamagedCell otherwise."""
    f = cell / METRICS_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        what = "empty file" if f.is_file() and f.stat().st_size == 0 else f"not valid JSON ({type(e).__name__})"
        raise DamagedCell(f"{f}: {what}") from None
    if not isinstance(data, dict):
        raise DamagedCell(f"{f}: not a JSON object")
    for m in LEADERBOARD_METRICS:
        v = data.get(m)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DamagedCell(f"{f}: metric '{m}' is {'missing' if m not in data else repr(v)}, not a number")
    return data


def _read_ranks(cell: Path, metrics: dict[str, Any]) -> dict[str, np.ndarray]:
    """ranks.npz as int64 arrays, checked against each other and metrics.json; DamagedCell otherwise."""
    import zipfile

    f = cell / RANKS_FILE
    if not f.is_file():
        raise DamagedCell(f"{f}: missing (metrics.json exists without its ranks)")
    try:
        with np.load(f, allow_pickle=False) as z:
            ranks = {k: np.asarray(z[k]).astype(np.int64) for k in ("i2t_rank", "t2i_rank", "cap2img")}
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError) as e:
        what = "empty file" if f.stat().st_size == 0 else f"not a valid ranks file ({type(e).__name__})"
        raise DamagedCell(f"{f}: {what}") from None
    i2t, t2i, c2i = ranks["i2t_rank"], ranks["t2i_rank"], ranks["cap2img"]
    if i2t.ndim != 1 or t2i.ndim != 1 or c2i.shape != t2i.shape or not i2t.size or not t2i.size:
        raise DamagedCell(f"{f}: inconsistent array shapes {i2t.shape}, {t2i.shape}, {c2i.shape}")
    for key, arr in (("n_images", i2t), ("n_captions", t2i)):
        if key in metrics and metrics[key] != arr.size:
            raise DamagedCell(f"{f}: {arr.size} ranks but metrics.json says {key} = {metrics[key]!r}")
    return ranks


def _check_topk_file(cell: Path, ranks: dict[str, np.ndarray]) -> None:
    """A cell's topk.npz, when it has one, must read back for its gallery; DamagedCell otherwise.
    A missing one is fine: cells written before top-K lists were kept have no gallery."""
    f = cell / TOPK_FILE
    if not f.exists():
        return
    try:
        read_topk(f, n_images=ranks["i2t_rank"].size, n_captions=ranks["t2i_rank"].size)
    except UserError as e:
        raise DamagedCell(str(e)) from None


def read_cell(cell: str | Path) -> Cell:
    """THE reader of a result cell: metrics.json, ranks.npz, config.json and topk.npz (if any) must read back.

    UserError for a folder that is not a cell or has no metrics.json yet (incomplete: being run,
    or interrupted); DamagedCell when metrics.json exists but a result file does not read back.
    """
    cell = Path(cell)
    where = parse_cell(cell)
    if where is None:
        raise UserError(f"{cell}: not a result cell folder (expected <dataset>/<method>/seed<k>)")
    if not (cell / METRICS_FILE).exists():
        raise UserError(f"{cell}: incomplete result cell (no {METRICS_FILE})")
    metrics = _read_metrics(cell)
    ranks = _read_ranks(cell, metrics)
    _check_topk_file(cell, ranks)
    config: dict[str, Any] = {}
    if (cell / CONFIG_FILE).exists():
        try:
            cfg = read_json(cell / CONFIG_FILE)
        except UserError as e:
            raise DamagedCell(str(e)) from None
        config = cfg if isinstance(cfg, dict) else {}
    return Cell(path=cell, dataset=where[0], method=where[1], seed=where[2], metrics=metrics, config=config,
                _ranks=ranks)


def cell_damage(cell: str | Path) -> str | None:
    """Why a cell that has a metrics.json is damaged ('<file>: <problem>'); None if it reads back or has none."""
    cell = Path(cell)
    if not (cell / METRICS_FILE).exists():
        return None
    try:
        read_cell(cell)
    except DamagedCell as e:
        return str(e)
    return None


def is_complete(cell: str | Path) -> bool:
    """True when every result file of the cell reads back (see read_cell); a damaged cell is not complete."""
    try:
        read_cell(cell)
    except UserError:
        return False
    return True


@dataclass
class Cell:
    """One loaded result cell. `ranks` (ranks.npz arrays) is read on first access."""

    path: Path
    dataset: str
    method: str
    seed: int
    metrics: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    _ranks: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def ranks(self) -> dict[str, np.ndarray]:
        """{"i2t_rank", "t2i_rank", "cap2img"} as int64 arrays."""
        if self._ranks is None:
            self._ranks = _read_ranks(self.path, self.metrics)
        return self._ranks


def load_cell(cell: str | Path) -> Cell:
    """Load a complete cell (same as read_cell); dataset/method/seed come from its folder names."""
    return read_cell(cell)


# ---- run.json: ONE schema for `bench run` and `bench score` --------------------------------------

RUN_SCHEMA = 2
_VERSIONED = ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy")


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import sys

    from .. import __version__

    versions = {"python": sys.version.split()[0], "rsbench": __version__}
    for pkg in _VERSIONED:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def _hardware(device: Any) -> dict[str, Any]:
    import os
    import platform

    import torch

    hw = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
          "device": str(device), "torch_threads": torch.get_num_threads()}
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
        hw["cuda"] = torch.version.cuda
    return hw


def run_record(data: Any, wall_s: float, *, device: Any = "cpu", precision: str | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What run.json holds, for every writer: versions, hardware, precision, the data (name, fingerprint,
    files, notes), wall time in seconds, command line, finish time; then `extra` (resumed_from_epoch,
    weights, world_size ... or bench score's source and source_sha256). `data` is a DatasetSplits."""
    import sys

    record: dict[str, Any] = {
        "schema": RUN_SCHEMA, "versions": _versions(), "hardware": _hardware(device), "precision": precision,
        "data": {"dataset": data.name, "fingerprint": data.fingerprint, "ann_file": str(data.ann_file or ""),
                 "image_dir": str(data.image_dir or ""), "notes": json.loads(json.dumps(data.notes, default=str))},
        "wall_s": round(float(wall_s), 2), "command": list(sys.argv), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    clash = set(record) & set(extra or {})
    if clash:
        raise ValueError(f"extra may not override run record fields: {sorted(clash)}")
    record.update(extra or {})
    return record


def read_run_record(cell: str | Path) -> dict[str, Any] | None:
    """run.json in the current schema; None when missing or unreadable. Records written before the one
    schema (`bench score`'s wall_seconds / data_fingerprint / ann_file) are read into its fields."""
    rec = read_json_object(Path(cell) / RUN_FILE)
    if rec is None:
        return None
    data = rec.get("data") if isinstance(rec.get("data"), dict) else {}
    if "wall_seconds" in rec and "wall_s" not in rec:
        rec["wall_s"] = rec.pop("wall_seconds")
    if "data_fingerprint" in rec:
        data = {"fingerprint": rec.pop("data_fingerprint"), "ann_file": rec.pop("ann_file", None) or "", **data}
    rec["data"] = data
    return rec


# ---- failure marker -------------------------------------------------------------------------------

def write_failure(cell: str | Path, error: BaseException | str) -> None:
    """Write `<cell>/failed.json` with the one-line error (callers under DDP write it on rank 0 only)."""
    cell = Path(cell)
    cell.mkdir(parents=True, exist_ok=True)
    write_json(cell / FAILED_FILE, {"error": error if isinstance(error, str) else one_line(error),
                                    "type": "" if isinstance(error, str) else type(error).__name__,
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def clear_failure(cell: str | Path) -> None:
    """Forget an earlier failure when the cell is started again."""
    (Path(cell) / FAILED_FILE).unlink(missing_ok=True)


def read_failure(cell: str | Path) -> str | None:
    """The recorded one-line error of a failed cell ('unknown error' if unreadable); None if none."""
    f = Path(cell) / FAILED_FILE
    if not f.is_file():
        return None
    data = read_json_object(f) or {}
    return str(data.get("error", "unknown error"))
