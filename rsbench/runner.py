"""Train one (method, dataset, seed) cell, select on validation, evaluate on test once.

Honest protocol: the checkpoint is chosen on the val split only; test is scored exactly once,
with the selected weights. Resumable per epoch: every epoch's RNG comes from (seed, epoch), so a
resumed run on CPU reproduces an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import load_best, load_resume, restore_model, save_best, save_resume
from .config import RunConfig, to_dict
from .datasets.base import DatasetSplits, Split
from .device import Precision, auto_workers, pick_precision
from .errors import UserError
from .io import write_json, write_text
from .methods.base import Batch, MethodContext, RetrievalMethod
from .methods.registry import create_method


class TrainingDiverged(UserError):
    """A non-finite loss: stop, keep the last good checkpoint, say where it happened."""


@dataclass
class CellResult:
    cell: Path
    metrics: dict[str, Any]
    skipped: bool = False
    wall_s: float = 0.0


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**31 - 1)


def seed_everything(s: int) -> None:
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def cache_root() -> Path:
    import os

    return Path(os.environ.get("RSBENCH_CACHE", Path.home() / ".cache" / "rsbench")).expanduser()


# ---- data ------------------------------------------------------------------------------------

def _loader(dataset: Any, batch_size: int, shuffle: bool, collate: Any, workers: int, device: torch.device,
            seed: int, drop_last: bool = False) -> torch.utils.data.DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=drop_last, generator=g,
        worker_init_fn=_worker_init if workers else None, persistent_workers=False,
    )


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


# ---- evaluation ------------------------------------------------------------------------------

@torch.inference_mode()
def encode_split(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
                 precision: Precision, progress: bool = False, image_cache: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every image and every caption of a split once, in large batches."""
    from tqdm.auto import tqdm

    from .datasets.torchdata import ImageDataset, build_transform

    method.eval()
    mean, std = method.image_mean_std()
    ds = ImageDataset(split, build_transform(cfg.train, mean, std, train=False), cache=image_cache)
    workers = auto_workers(cfg.train.num_workers, device)
    loader = _loader(ds, cfg.train.eval_batch_size, False, None, workers, device, 0)
    feats = []
    for images, _ in tqdm(loader, desc=f"encode {split.name} images", disable=not progress, leave=False):
        images = images.to(device, non_blocking=True)
        if device.type == "cuda" and cfg.train.channels_last and method.is_cnn:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            feats.append(method.encode_images(images).float())
    img = torch.cat(feats)
    tok = method.tokenizer()
    txt_parts = []
    bs = cfg.train.eval_batch_size
    for i in tqdm(range(0, split.n_captions, bs), desc=f"encode {split.name} captions", disable=not progress,
                  leave=False):
        text = {k: v.to(device, non_blocking=True) for k, v in tok(split.captions[i:i + bs]).items()}
        with precision.autocast(device):
            txt_parts.append(method.encode_texts(text).float())
    return img, torch.cat(txt_parts)


@torch.inference_mode()
def rank_split(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
               precision: Precision, progress: bool = False, image_cache: Any = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-query 1-based ranks for both directions, scoring blockwise (bounded memory)."""
    from .metrics import compute_ranks_blockwise

    img, txt = encode_split(method, split, cfg, device, precision, progress, image_cache)

    def score_block(i: slice, j: slice) -> torch.Tensor:
        with precision.autocast(device):
            return method.score(img[i], txt[j]).float()

    block_i = 1024 if not method.cross_interaction else 256
    return compute_ranks_blockwise(score_block, split.n_images, split.n_captions, split.cap2img,
                                   block_images=block_i, block_captions=8192)


def evaluate(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
             precision: Precision, progress: bool = False) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from .metrics import metrics_from_ranks

    i2t, t2i = rank_split(method, split, cfg, device, precision, progress)
    return metrics_from_ranks(i2t, t2i), i2t, t2i


# ---- training --------------------------------------------------------------------------------

def build_optimizer(method: RetrievalMethod, cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    groups = method.param_groups(t.lr, t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig) -> torch.optim.lr_scheduler.LRScheduler:
    t = cfg.train
    if t.lr_step > 0:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.lr_step, gamma=t.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


LOG_FIELDS = ["epoch", "loss", "val_mR", "lr", "seconds"]


def _log_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def run_cell(cfg: RunConfig, data: DatasetSplits, cell: Path, device: torch.device, *, resume: bool = True,
             progress: bool = False, log: Any = print) -> CellResult:
    """Train, select on val, evaluate on test; write the cell folder (see docs/DESIGN.md)."""
    from tqdm.auto import tqdm

    from .datasets.torchdata import PairDataset, build_transform, make_collate
    from .results import write_eval_outputs

    t0 = time.time()
    cell.mkdir(parents=True, exist_ok=True)
    ckpt_dir = cell / "checkpoint"
    t = cfg.train
    seed_everything(cfg.seed)
    precision = pick_precision(t.amp, device)
    context = MethodContext(
        train_captions=data.train.captions, train_cap2img=data.train.cap2img,
        cache_dir=cache_root() / "methods" / data.name, dataset_fingerprint=data.fingerprint, device=device,
    )
    method = create_method(cfg.method, cfg.model, context).to(device)
    if device.type == "cuda" and t.channels_last and method.is_cnn:
        method = method.to(memory_format=torch.channels_last)
    write_json(cell / "config.json", {**to_dict(cfg), "external": False})

    opt = build_optimizer(method, cfg)
    sched = build_scheduler(opt, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    start_epoch, best_val, best_epoch, rows, bad_evals = 0, -math.inf, None, [], 0
    last_path = ckpt_dir / "last.pt"
    if resume and last_path.exists():
        state = load_resume(last_path)
        restore_model(method, state["model"], last_path)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if "scaler" in state and precision.use_scaler:
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_val, best_epoch = state["epoch"], state["best_val"], state["best_epoch"]
        rows, bad_evals = list(state["log"]), state.get("bad_evals", 0)
        log(f"  resuming {cell} from epoch {start_epoch}")

    train_step = method.training_loss
    if t.compile:
        for child in method.children():
            child.compile()

    mean, std = method.image_mean_std()
    pairs = PairDataset(data.train, build_transform(t, mean, std, train=True), sampling=t.sampling, seed=cfg.seed)
    collate = make_collate(method.tokenizer())
    workers = auto_workers(t.num_workers, device)
    select = t.select_metric

    if t.epochs == 0:  # zero-shot: evaluate the initial weights; nothing is selected on test
        val_metrics, _, _ = evaluate(method, data.val, cfg, device, precision, progress)
        save_best(ckpt_dir, method, {"epoch": 0, "val": val_metrics, "text_state": method.extra_state_json()})
        best_epoch = 0

    for epoch in range(start_epoch, t.epochs):
        e0 = time.time()
        seed_everything(epoch_seed(cfg.seed, epoch))
        if hasattr(pairs, "set_epoch"):
            pairs.set_epoch(epoch)
        drop_last = len(pairs) > t.batch_size
        loader = _loader(pairs, t.batch_size, True, collate, workers, device, epoch_seed(cfg.seed, epoch),
                         drop_last=drop_last)
        method.train()
        total, n = 0.0, 0
        bar = tqdm(loader, desc=f"{cfg.method}/{cfg.dataset}/seed{cfg.seed} epoch {epoch + 1}/{t.epochs}",
                   disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            batch: Batch = batch.to(device, non_blocking=True)
            if device.type == "cuda" and t.channels_last and method.is_cnn:
                batch.images = batch.images.contiguous(memory_format=torch.channels_last)
            try:
                with precision.autocast(device):
                    out = train_step(batch)
                loss = out.loss
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                        f"last good checkpoint kept in {ckpt_dir} (try a lower train.lr)")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if t.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(method.parameters(), t.grad_clip)
                scaler.step(opt)
                scaler.update()
            except torch.OutOfMemoryError:
                raise UserError(f"GPU out of memory at epoch {epoch + 1}, step {step + 1} with batch size "
                                f"{t.batch_size}; try --set train.batch_size={max(2, t.batch_size // 2)}") from None
            total += loss.item()
            n += 1
            bar.set_postfix(loss=f"{total / n:.4f}")
        lr = opt.param_groups[0]["lr"]
        sched.step()
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": round(total / max(n, 1), 6), "val_mR": "", "lr": lr}
        if (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs:
            val_metrics, _, _ = evaluate(method, data.val, cfg, device, precision, progress)
            row["val_mR"] = round(val_metrics[select], 4)
            if val_metrics[select] > best_val:
                best_val, best_epoch, bad_evals = val_metrics[select], epoch + 1, 0
                save_best(ckpt_dir, method, {"epoch": epoch + 1, "val": val_metrics,
                                             "text_state": method.extra_state_json()})
            else:
                bad_evals += 1
        row["seconds"] = round(time.time() - e0, 2)
        rows.append(row)
        write_text(cell / "train_log.csv", _log_csv(rows))
        save_resume(last_path, {
            "model": method.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch + 1, "best_val": best_val, "best_epoch": best_epoch,
            "log": rows, "bad_evals": bad_evals,
        })
        log(f"  epoch {epoch + 1}/{t.epochs}  loss {row['loss']:.4f}  val {select} {row['val_mR']}  "
            f"({row['seconds']}s)")
        if t.patience and bad_evals >= t.patience:
            log(f"  early stop: no val improvement in {t.patience} validations")
            break

    best_meta = load_best(ckpt_dir, method)
    method.load_extra_state_json(best_meta.get("text_state", {}))
    test_metrics, i2t, t2i = evaluate(method, data.test, cfg, device, precision, progress)
    wall = time.time() - t0
    write_json(cell / "run.json", run_record(cfg, data, device, precision, wall))
    metrics = write_eval_outputs(cell, i2t, t2i, data.test.cap2img, {
        "split": "test", "n_images": data.test.n_images, "n_captions": data.test.n_captions,
        "selected_epoch": best_meta.get("epoch"), "selection": f"val {select}", "val": best_meta.get("val"),
        "wall_s": round(wall, 2),
    })
    return CellResult(cell, metrics, False, wall)


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
    hw = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": __import__("os").cpu_count(),
          "device": str(device)}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
        hw["cuda"] = torch.version.cuda
    return {
        "versions": versions, "hardware": hw, "precision": precision.name,
        "data": {"dataset": data.name, "fingerprint": data.fingerprint, "ann_file": str(data.ann_file or ""),
                 "image_dir": str(data.image_dir), "notes": json.loads(json.dumps(data.notes, default=str))},
        "wall_s": round(wall, 2), "command": sys.argv, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
