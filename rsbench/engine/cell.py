"""Run one (method, dataset, seed) cell: train, select on validation, evaluate on test once.

Honest protocol: the checkpoint is chosen on the val split only (engine.train sees `validate`, which
scores val); test is scored exactly once, with the selected weights (engine.evaluate). Resumable per
epoch (see engine.train; docs/bad_inputs.md lists what can differ on GPU). The caller holds the cell
lock (rsbench.locks) while run_cell runs; the cell's files are described in docs/DESIGN.md.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from . import distributed as dist
from .cellfolder import (  # noqa: F401  (ConfigMismatch ... one_line: re-exported for older imports)
    CONFIG_FILE,
    DATA_FILE,
    ConfigMismatch,
    DataMismatch,
    check_cell_config,
    check_cell_data,
    clear_cell,
    config_differences,
    config_record,
    data_record,
    one_line,
    remove_trash,
)
from .checkpoint import load_best
from .device import Precision, pick_precision, use_channels_last
from .evaluate import TrainingCollapsed, check_not_collapsed, evaluate  # noqa: F401  (TrainingCollapsed: re-export)
from .train import (  # noqa: F401  (TrainingDiverged, build_optimizer: re-exported for older imports)
    TrainingDiverged,
    Trainer,
    attach_train_data,
    build_image_cache,
    build_optimizer,
    seed_everything,
    start_training,
    train_epochs,
)
from ..config.schema import RunConfig
from ..contracts import DatasetSplits
from ..datasets.cache import cache_root  # one cache root for datasets and methods (RSBENCH_CACHE)
from ..io import remove_stale_temp_files, write_json
from ..methods.base import MethodContext, RetrievalMethod
from ..methods.registry import create_method


@dataclass
class CellResult:
    cell: Path
    metrics: dict[str, Any]
    skipped: bool = False
    wall_s: float = 0.0


def run_cell(cfg: RunConfig, data: DatasetSplits, cell: Path, device: torch.device, *, resume: bool = True,
             progress: bool = False, log: Any = print) -> CellResult:
    """Train, select on val, evaluate on test; write the cell folder (see docs/DESIGN.md).

    resume=True continues from checkpoint/last.pt if present (refusing a cell whose config.json
    differs); resume=False empties the cell first. The caller holds the cell's lock.
    """
    from ..results.cell import write_eval_outputs

    t0 = time.time()
    prepare_cell(cfg, data, cell, resume, log)
    seed_everything(cfg.seed)
    precision = pick_precision(cfg.train.amp, device)
    method = build_method(cfg, data, device)
    if dist.is_main():
        write_json(cell / CONFIG_FILE, config_record(cfg))
        write_json(cell / DATA_FILE, data_record(data))
    tr = start_training(cfg, method, device, precision, cell, resume, log)
    cache = build_image_cache(data, cfg)  # passed to every loader; the shared Split objects stay untouched
    attach_train_data(tr, data.train, cache)

    def validate() -> dict[str, Any]:  # what selection sees: the val split, never test
        if data.val.n_images == 0:  # a test-only copy evaluated with --epochs 0: nothing to select on
            return {}
        return dist.on_main(evaluate, method, data.val, cfg, device, precision, progress, image_cache=cache)[0]

    train_epochs(tr, validate, progress, log)
    best_meta = load_best(tr.ckpt_dir, method, cfg.method)
    method.load_extra_state_json(best_meta.get("text_state", {}))
    if cfg.train.epochs > 0:
        check_not_collapsed(best_meta.get("val"), data.val, cfg.train.lr)
    _, i2t, t2i = dist.on_main(evaluate, method, data.test, cfg, device, precision, progress, image_cache=cache)
    wall = time.time() - t0
    dist.on_main(write_json, cell / "run.json", _cell_run_record(tr, data, wall))
    metrics = dist.on_main(write_eval_outputs, cell, i2t, t2i, data.test.cap2img, {
        "split": "test", "n_images": data.test.n_images, "n_captions": data.test.n_captions,
        "selected_epoch": best_meta.get("epoch"), "selection": f"val {cfg.train.select_metric}",
        "val": best_meta.get("val"),
    })
    return CellResult(cell, metrics, False, wall)


def prepare_cell(cfg: RunConfig, data: DatasetSplits, cell: Path, resume: bool, log: Any) -> None:
    """Check a cell to resume against this config and data (or empty it), and tidy what a kill left."""
    ckpt_dir = cell / "checkpoint"
    if resume:
        dist.on_main(check_cell_config, cell, cfg)  # DDP: rank 0 checks and writes, the others wait
        dist.on_main(check_cell_data, cell, data)
    elif dist.is_main():
        clear_cell(cell)
    if dist.is_main():
        cell.mkdir(parents=True, exist_ok=True)
        remove_trash(cell)
        removed = remove_stale_temp_files(cell) + remove_stale_temp_files(ckpt_dir)
        if removed:
            log(f"  removed {removed} temp file(s) left by an interrupted run")
    dist.barrier()


def build_method(cfg: RunConfig, data: DatasetSplits, device: torch.device) -> RetrievalMethod:
    """The method of this cell on `device` (channels_last where it pays), with its training-data context."""
    context = MethodContext(
        train_captions=data.train.captions, train_cap2img=data.train.cap2img,
        cache_dir=cache_root() / "methods" / data.name, dataset_fingerprint=data.fingerprint, device=device,
    )
    method = create_method(cfg.method, cfg.model, context).to(device)
    if use_channels_last(method, cfg.train, device):
        method = method.to(memory_format=torch.channels_last)
    return method


def _cell_run_record(tr: Trainer, data: DatasetSplits, wall: float) -> dict[str, Any]:
    """run.json of a trained cell: run_record plus resume point, weights, world size, training time."""
    record = run_record(tr.cfg, data, tr.device, tr.precision, wall)
    record["resumed_from_epoch"] = tr.state.resumed_from
    record["weights"] = tr.method.weight_provenance()  # backbone weight tag/file and loaded/missing key counts
    record["world_size"] = dist.world_size()  # DDP processes; global batch = train.batch_size x this
    record["train_seconds"] = round(sum(float(r.get("seconds") or 0) for r in tr.state.rows), 2)
    return record


def run_record(cfg: RunConfig, data: DatasetSplits, device: torch.device, precision: Precision,
               wall: float) -> dict[str, Any]:
    """Everything needed to re-run: versions, hardware, data fingerprint, wall time, command line."""
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0], "rsbench": __version__}
    for pkg in ("torch", "torchvision", "timm", "transformers", "open_clip_torch", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    hw = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
          "device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
        hw["cuda"] = torch.version.cuda
    return {
        "versions": versions, "hardware": hw, "precision": precision.name,
        "data": {"dataset": data.name, "fingerprint": data.fingerprint, "ann_file": str(data.ann_file or ""),
                 "image_dir": str(data.image_dir), "notes": json.loads(json.dumps(data.notes, default=str))},
        "wall_s": round(wall, 2), "command": sys.argv, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
