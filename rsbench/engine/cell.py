"""Run one (method, dataset, seed) cell: train, select on validation, evaluate on test once.

Honest protocol: the checkpoint is chosen on the val split only (engine.train sees `validate`, which
scores val); test is scored exactly once, with the selected weights (engine.evaluate). Resumable per
epoch (see engine.train; docs/bad_inputs.md lists what can differ on GPU). The caller holds the cell
lock (rsbench.locks) while run_cell runs; the cell's files are described in docs/DESIGN.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config.schema import RunConfig
from ..contracts import DatasetSplits
from ..io import (  # one cache root for datasets and methods
    cache_root,
    remove_stale_temp_files,
    remove_trash,
    write_json,
)
from ..methods.base import MethodContext, RetrievalMethod
from ..methods.registry import create_method
from ..results.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DATA_FILE,
    METRICS_EXCLUDED_FILE,
    RESUME_FILE,
    RUN_FILE,
)
from . import distributed as dist
from .cellfolder import (
    check_cell_config,
    check_cell_data,
    clear_cell,
    config_record,
    data_record,
)
from .checkpoint import load_best
from .device import pick_precision, use_channels_last
from .evaluate import check_not_collapsed, evaluate
from .train import (
    Trainer,
    attach_train_data,
    build_image_cache,
    seed_everything,
    start_training,
    train_epochs,
)


@dataclass
class CellResult:
    cell: Path
    metrics: dict[str, Any]
    skipped: bool = False
    wall_s: float = 0.0
    excluded: dict[str, Any] | None = None  # eval.exclude: metrics without the leaked test images
    epochs_run: int = 0  # epochs trained by this call (not those before a resume): the run's ETA
    train_s: float = 0.0  # their seconds (train_log.csv's, validation included)


def run_cell(cfg: RunConfig, data: DatasetSplits, cell: Path, device: torch.device, *, resume: bool = True,
             progress: bool = False, log: Any = print, exclude: set[str] | None = None,
             estimate: bool = False) -> CellResult:
    """Train, select on val, evaluate on test; write the cell folder (see docs/DESIGN.md).

    resume=True continues from checkpoint/last.pt if present (refusing a cell whose config.json
    differs); resume=False empties the cell first. The caller holds the cell's lock. `exclude`
    (eval.exclude): test image names whose metrics are also computed without them (metrics_excluded.json).
    `estimate`: time the first training steps and print the cell's estimated training time.
    """
    from ..results.cell import run_record, write_eval_outputs

    t0 = time.time()
    prepare_cell(cfg, data, cell, resume, log)
    seed_everything(cfg.seed)
    precision = pick_precision(cfg.train.precision, device)
    method = build_method(cfg, data, device)
    if dist.is_main():
        write_json(cell / CONFIG_FILE, config_record(cfg))
        write_json(cell / DATA_FILE, data_record(data))
    tr = start_training(cfg, method, device, precision, cell, resume, log)
    tr.estimate_log = log if estimate and dist.is_main() else None
    cache = None if check_image_input(method, data, log) else build_image_cache(data, cfg)  # to every loader
    attach_train_data(tr, data.train, cache)

    def validate() -> dict[str, Any]:  # what selection sees: the val split, never test
        if data.val.n_images == 0:  # a test-only copy evaluated with --epochs 0: nothing to select on
            return {}
        metrics, _, _ = dist.on_main(evaluate, method, data.val, cfg, device, precision, progress, image_cache=cache)
        return metrics

    train_epochs(tr, validate, progress, log)
    best_meta = load_best(tr.ckpt_dir, method, cfg.method)
    method.load_extra_state_json(best_meta.get("text_state", {}))
    if cfg.train.epochs > 0:
        check_not_collapsed(best_meta.get("val"), data.val, cfg.train.lr)
    result = dist.on_main(evaluate, method, data.test, cfg, device, precision, progress, image_cache=cache,
                          topk=True)
    _, i2t, t2i = result
    top = result.topk
    excluded = dist.on_main(_write_excluded, cell, exclude, method, data.test, (i2t, t2i), cfg, device, precision,
                            progress, cache)
    wall = time.time() - t0
    dist.on_main(write_json, cell / RUN_FILE, run_record(data, wall, device=device, precision=precision.name,
                                                         extra=_run_extra(tr)))
    metrics = dist.on_main(write_eval_outputs, cell, i2t, t2i, data.test.cap2img, {
        "split": "test", "n_images": data.test.n_images, "n_captions": data.test.n_captions,
        "selected_epoch": best_meta.get("epoch"), "selection": f"val {cfg.train.select_metric}",
        "val": best_meta.get("val"),
    }, fingerprint=data.fingerprint, topk=top)
    if not cfg.train.keep_last:  # complete (metrics.json written): the resume state, often 100s of MB, is spent
        dist.on_main((cell / CHECKPOINT_DIR / RESUME_FILE).unlink, missing_ok=True)
    run = [r for r in tr.state.rows if int(r["epoch"]) > (tr.state.resumed_from or 0)]
    return CellResult(cell, metrics, False, wall, excluded, len(run), sum(float(r["seconds"]) for r in run))


def _write_excluded(cell: Path, exclude: set[str] | None, method: RetrievalMethod, test: Any, ranks: Any,
                    cfg: RunConfig, device: torch.device, precision: Any, progress: bool,
                    cache: Any) -> dict[str, Any] | None:
    """metrics_excluded.json beside the standard metrics (eval.exclude), written before metrics.json;
    without eval.exclude an earlier run's file is removed, so it never describes another run."""
    from .evaluate import evaluate_excluded

    if exclude is None:
        (cell / METRICS_EXCLUDED_FILE).unlink(missing_ok=True)
        return None
    rec = evaluate_excluded(method, test, exclude, ranks, cfg, device, precision, progress, image_cache=cache)
    write_json(cell / METRICS_EXCLUDED_FILE, rec)
    return rec


def prepare_cell(cfg: RunConfig, data: DatasetSplits, cell: Path, resume: bool, log: Any) -> None:
    """Check a cell to resume against this config and data (or empty it), and tidy what a kill left."""
    ckpt_dir = cell / CHECKPOINT_DIR
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
        gather=dist.loss_gather(),  # DDP: contrastive losses see the negatives of every rank
    )
    method = create_method(cfg.method, cfg.model, context).to(device)
    if use_channels_last(method, cfg.train, device):
        method = method.to(memory_format=torch.channels_last)
    return method


def check_image_input(method: RetrievalMethod, data: DatasetSplits, log: Any) -> bool:
    """True when the method reads precomputed features (checked here for every split: one-line DataError
    naming a missing or odd file) instead of pixels; then no image cache is built."""
    features = method.image_input()
    if features is None:
        return False
    from ..datasets.features import check_feature_files

    regions, dim = check_feature_files(features, (data.train, data.val, data.test))
    log(f"  image input: {features.option} {features.folder} ({regions} x {dim} per image; "
        "train.image_size, train.augment and train.image_cache do not apply)")
    return True


def _run_extra(tr: Trainer) -> dict[str, Any]:
    """What a trained cell's run.json adds to results.cell.run_record: resume point, weights, world size,
    training time."""
    return {
        "resumed_from_epoch": tr.state.resumed_from,
        "weights": tr.method.weight_provenance(),  # backbone weight tag/file and loaded/missing key counts
        "world_size": dist.world_size(),  # DDP processes; global batch = train.batch_size x this
        "train_seconds": round(sum(float(r.get("seconds") or 0) for r in tr.state.rows), 2),
    }
