"""Train one (method, dataset, seed) cell, select on validation, evaluate on test once.

Honest protocol: the checkpoint is chosen on the val split only; test is scored exactly once,
with the selected weights. Resumable per epoch: every epoch's RNG comes from (seed, epoch) and
last.pt holds model, optimiser, scheduler, scaler, best-so-far and the log, so a run killed at any
moment and resumed on CPU ends with the same result as an uninterrupted one (docs/bad_inputs.md
lists what can differ on GPU). Write order within an epoch: last.pt, train_log.csv, then
best.safetensors (so the log never shows an epoch that a resume would redo); a resume repairs a best checkpoint that the kill prevented from being written.
The caller holds the cell lock (rsbench.locks) while run_cell runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from . import distributed as dist
from .checkpoint import (
    RESUME_FILE,
    CheckpointError,
    best_epoch_on_disk,
    load_best,
    load_resume,
    restore_model,
    save_best,
    save_resume,
)
from ..config.schema import RunConfig, flatten, to_dict
from ..contracts import DatasetSplits, Split
from .device import Precision, auto_workers, pick_precision
from ..errors import UserError
from ..io import kill_point, remove_stale_temp_files, write_json, write_text
from ..methods.base import Batch, MethodContext, RetrievalMethod
from ..methods.registry import create_method
from ..evaluation.metrics import metric_sign

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"  # the data a cell was started on (written before its first epoch)
# Options that change how fast a cell runs, not what it computes: a resumed cell may change them.
# (num_workers changes which random stream feeds the augmentations; see docs/bad_inputs.md.)
IGNORED_ON_RESUME = frozenset({"train.num_workers", "train.eval_batch_size", "train.compile"})


class TrainingDiverged(UserError):
    """A non-finite loss or weights: stop, keep the last good checkpoint, say where it happened."""


class ConfigMismatch(UserError):
    """The cell on disk was started with another config; resuming it would mix two experiments."""


class DataMismatch(UserError):
    """The cell on disk was trained or scored on other data; resuming or skipping it would mislabel a result."""


class TrainingCollapsed(UserError):
    """Training ended finite but meaningless (every score tied, or val mR at or below chance)."""


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


from ..datasets.cache import cache_root  # one cache root for datasets and methods (RSBENCH_CACHE)


def one_line(e: BaseException) -> str:
    """A one-line message for an error; a DataLoader worker's re-raised error carries the worker's
    traceback in its message, of which the last line ('pkg.DataError: file: problem') is kept."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum() and head.split(".")[-1] == type(e).__name__:
        return rest
    return last


# ---- the cell folder -----------------------------------------------------------------------------

def config_record(cfg: RunConfig) -> dict[str, Any]:
    """What config.json holds for a trained cell."""
    return {**to_dict(cfg), "external": False}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old in the cell, new now' for every result-changing key that differs."""
    missing = object()
    a = flatten(old)
    b = flatten(json.loads(json.dumps(new, default=str)))
    out = []
    for k in sorted((set(a) | set(b)) - IGNORED_ON_RESUME):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            out.append(f"{k}: {'(absent)' if va is missing else repr(va)} in the cell, "
                       f"{'(absent)' if vb is missing else repr(vb)} now")
    return out


def check_cell_config(cell: Path, cfg: RunConfig) -> None:
    """Refuse (ConfigMismatch) when the cell's config.json differs from `cfg` in a result-changing key."""
    path = cell / CONFIG_FILE
    if not path.is_file():
        if (cell / "checkpoint" / RESUME_FILE).exists():
            raise ConfigMismatch(f"{cell} has a resume checkpoint but no {CONFIG_FILE}, so its config is "
                                 "unknown; pass --overwrite to discard it and start again")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigMismatch(f"{path}: unreadable config of an existing cell; pass --overwrite to discard "
                             "the cell and start again") from None
    diffs = config_differences(old if isinstance(old, dict) else {}, config_record(cfg))
    if diffs:
        more = f"; and {len(diffs) - 2} more" if len(diffs) > 2 else ""
        raise ConfigMismatch(f"{cell} was started with a different config ({'; '.join(diffs[:2])}{more}); "
                             "pass --overwrite to discard it and start again, or use another --out")


def split_digest(split: Split) -> str:
    """sha256 over a split's image names, captions and caption->image map: which queries it scores."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps([list(split.image_names), list(split.captions),
                         [int(i) for i in split.cap2img]]).encode("utf-8"))
    return h.hexdigest()


def data_record(data: DatasetSplits) -> dict[str, Any]:
    """What data.json holds: the dataset fingerprint, and digests of the val and test splits."""
    return {"dataset": data.name, "fingerprint": data.fingerprint, "val": split_digest(data.val),
            "test": split_digest(data.test)}


def _stored_data(cell: Path) -> dict[str, Any] | None:
    """The data identity recorded in the cell: data.json, else run.json (older or externally scored cells)."""
    for name in (DATA_FILE, "run.json"):
        try:
            rec = json.loads((cell / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            if name == DATA_FILE:
                return rec
            fp = (rec.get("data") or {}).get("fingerprint") if isinstance(rec.get("data"), dict) \
                else rec.get("data_fingerprint")
            if fp:
                return {"fingerprint": fp}
    return None


def check_cell_data(cell: Path, data: DatasetSplits) -> None:
    """Refuse (DataMismatch) to resume or skip a cell that was started on other data (fingerprint or val split)."""
    old = _stored_data(cell)
    if old is None:
        return
    new = data_record(data)
    for key, what in (("fingerprint", "data fingerprint"), ("val", "val split")):
        if key in old and old[key] != new[key]:
            raise DataMismatch(f"{cell} was started on other data ({what} {str(old[key])[:16]} in the cell, "
                               f"{new[key][:16]} now); pass --overwrite to discard it and start again, "
                               "or use another --out")


def clear_cell(cell: Path) -> None:
    """Empty a cell folder (the caller holds its lock; the lock file lives outside the folder).

    The folder is first renamed to a hidden `.seed<k>.trash-*` sibling, so a kill during the delete
    never leaves a half-deleted cell (say metrics.json without ranks.npz, or last.pt without its
    config.json) under the real name.
    """
    if cell.exists():
        trash = cell.with_name(f".{cell.name}.trash-{os.getpid()}-{time.time_ns()}")
        os.rename(cell, trash)
    remove_trash(cell)
    cell.mkdir(parents=True, exist_ok=True)


def remove_trash(cell: Path) -> None:
    """Delete what `clear_cell` renamed away, including leftovers of a killed run (lock held)."""
    for old in cell.parent.glob(f".{cell.name}.trash-*"):
        shutil.rmtree(old, ignore_errors=True)


# ---- data ------------------------------------------------------------------------------------

def _loader(dataset: Any, batch_size: int, shuffle: bool, collate: Any, workers: int, device: torch.device,
            seed: int, drop_last: bool = False, sampler: Any = None) -> torch.utils.data.DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        collate_fn=collate, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=drop_last, generator=g,
        worker_init_fn=_worker_init if workers else None, persistent_workers=False,
    )


def _worker_init(worker_id: int) -> None:
    from ..locks import close_inherited_lock_fds

    close_inherited_lock_fds()  # a killed run's cell lock must not live on in its workers
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


# ---- evaluation ------------------------------------------------------------------------------

def use_channels_last(method: RetrievalMethod, train_cfg: Any, device: torch.device) -> bool:
    """channels_last for the model and its input batches: on GPU, for CNNs, unless switched off."""
    return device.type == "cuda" and bool(train_cfg.channels_last) and method.is_cnn


@torch.inference_mode()
def encode_split(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
                 precision: Precision, progress: bool = False, image_cache: Any = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every image and every caption of a split once, in large batches."""
    from tqdm.auto import tqdm

    from ..datasets.torchdata import ImageDataset, ImageNormalizer, build_transform

    method.eval()
    normalize = ImageNormalizer(*method.image_mean_std(), channels_last=use_channels_last(method, cfg.train, device))
    ds = ImageDataset(split, build_transform(cfg.train, train=False), cache=image_cache)
    workers = auto_workers(cfg.train.num_workers, device)
    loader = _loader(ds, cfg.train.eval_batch_size, False, None, workers, device, 0)
    feats = []
    for images, _ in tqdm(loader, desc=f"encode {split.name} images", disable=not progress, leave=False):
        images = normalize(images.to(device, non_blocking=True))
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
    from ..evaluation.metrics import compute_ranks_blockwise

    img, txt = encode_split(method, split, cfg, device, precision, progress, image_cache)
    spread: list[torch.Tensor] = []  # per block max - min, summed at the end (one host sync per split)

    def score_block(i: slice, j: slice) -> torch.Tensor:
        with precision.autocast(device):
            s = method.score(img[i], txt[j]).float()
        spread.append((s.amax() - s.amin()).detach())
        return s

    block_i = 1024 if not method.cross_interaction else 256
    ranks = compute_ranks_blockwise(score_block, split.n_images, split.n_captions, split.cap2img,
                                    block_images=block_i, block_captions=8192)
    if split.n_images * split.n_captions > 1 and spread and float(torch.stack(spread).max()) == 0.0:
        raise TrainingCollapsed(f"the model gives every image-caption pair of the {split.name} split the same "
                                "score (collapsed: diverging weights or a dead embedding); try a lower train.lr")
    return ranks


def evaluate(method: RetrievalMethod, split: Split, cfg: RunConfig, device: torch.device,
             precision: Precision, progress: bool = False) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from ..evaluation.metrics import metrics_from_ranks

    try:
        i2t, t2i = rank_split(method, split, cfg, device, precision, progress)
    except ValueError as e:
        if not str(e).startswith("NaN scores"):
            raise
        raise UserError(f"the model gives NaN scores on the {split.name} split ({e}); non-finite weights or "
                        "an fp16 overflow (try --set train.amp=bf16 or off)") from None
    except torch.OutOfMemoryError:
        bs = cfg.train.eval_batch_size
        raise UserError(f"out of memory on {device} while evaluating the {split.name} split with eval batch "
                        f"size {bs}; try --set train.eval_batch_size={max(1, bs // 2)}") from None
    kill_point(f"eval:{split.name}")  # test-only crash hook
    return metrics_from_ranks(i2t, t2i), i2t, t2i


# ---- training --------------------------------------------------------------------------------

def build_optimizer(method: RetrievalMethod, cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    groups = method.param_groups(t.lr, t.weight_decay)
    # fused kernels: one pass over all parameters instead of a loop of small ops (on CPU the
    # Adam step of the small presets drops ~6x); needs every parameter float on CPU or CUDA
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)
    return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, fused=fused or None)


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


@dataclass
class _TrainState:
    """What last.pt carries besides the model/optimiser/scheduler/scaler tensors."""

    epoch: int = 0  # completed epochs
    best_val: float = -math.inf
    best_epoch: int | None = None
    best_val_metrics: dict[str, Any] | None = None
    rows: list[dict[str, Any]] | None = None
    bad_evals: int = 0
    early_stopped: bool = False
    resumed_from: int | None = None


def _diverged(what: str, epoch: int, step: int | None, saved_epoch: int, last_path: Path,
              lr: float) -> TrainingDiverged:
    """The message: where it happened, which checkpoint is kept, what to try."""
    where = f"epoch {epoch}, step {step}" if step is not None else f"the end of epoch {epoch}"
    kept = (f"the last good checkpoint (epoch {saved_epoch}) is kept in {last_path}" if saved_epoch > 0
            and last_path.is_file() else "no checkpoint had been written yet")
    return TrainingDiverged(f"{what} at {where}; {kept} (try a lower train.lr, now {lr:g})")


def _resume(method: RetrievalMethod, opt: torch.optim.Optimizer, sched: Any, scaler: Any,
            precision: Precision, cfg: RunConfig, last_path: Path, ckpt_dir: Path, log: Any) -> _TrainState:
    """Restore everything from last.pt; repair a best checkpoint a kill prevented from being written."""
    state = load_resume(last_path, cfg.method)
    restore_model(method, state["model"], last_path)
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if "scaler" in state and precision.use_scaler:
            scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{last_path}: optimiser/scheduler state does not match this config "
                              f"({one_line(e)[:120]}); pass --no-resume to train this cell from the "
                              "start") from None
    st = _TrainState(epoch=int(state["epoch"]), best_val=float(state["best_val"]),
                     best_epoch=state["best_epoch"], best_val_metrics=state.get("best_val_metrics"),
                     rows=list(state["log"]), bad_evals=int(state.get("bad_evals", 0)),
                     early_stopped=bool(state.get("early_stopped")), resumed_from=int(state["epoch"]))
    on_disk = best_epoch_on_disk(ckpt_dir)
    if st.best_epoch is not None and on_disk != st.best_epoch:
        if st.best_epoch == st.epoch and st.best_val_metrics is not None:
            # killed after last.pt, before best.safetensors: the restored weights are the best ones
            save_best(ckpt_dir, method, {"epoch": st.epoch, "val": st.best_val_metrics,
                                         "text_state": method.extra_state_json()}, cfg.method)
        else:
            raise CheckpointError(f"{ckpt_dir}: best checkpoint is from epoch {on_disk}, resume state says "
                                  f"{st.best_epoch}; pass --no-resume to train this cell from the start")
    log(f"  resuming {last_path.parent.parent} from epoch {st.epoch}")
    return st


def _add_logs(sums: dict[str, torch.Tensor], logs: dict[str, Any]) -> None:
    """Add one step's LossOutput.logs to the epoch's sums without reading them back to the host."""
    for k, v in logs.items():
        v = torch.as_tensor(v).detach().float()
        sums[k] = sums[k] + v if k in sums else v.clone()


def _weights_finite(method: torch.nn.Module) -> bool:
    """Parameters and float buffers (e.g. BatchNorm running stats) are all finite."""
    return all(bool(torch.isfinite(v).all()) for v in method.state_dict().values()
               if v.is_floating_point())


def run_cell(cfg: RunConfig, data: DatasetSplits, cell: Path, device: torch.device, *, resume: bool = True,
             progress: bool = False, log: Any = print) -> CellResult:
    """Train, select on val, evaluate on test; write the cell folder (see docs/DESIGN.md).

    resume=True continues from checkpoint/last.pt if present (refusing a cell whose config.json
    differs); resume=False empties the cell first. The caller holds the cell's lock.
    """
    from tqdm.auto import tqdm

    from ..datasets.torchdata import ImageNormalizer, PairDataset, build_transform, make_collate
    from ..results.cell import write_eval_outputs

    t0 = time.time()
    ckpt_dir = cell / "checkpoint"
    last_path = ckpt_dir / RESUME_FILE
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
    t = cfg.train
    seed_everything(cfg.seed)
    precision = pick_precision(t.amp, device)
    context = MethodContext(
        train_captions=data.train.captions, train_cap2img=data.train.cap2img,
        cache_dir=cache_root() / "methods" / data.name, dataset_fingerprint=data.fingerprint, device=device,
    )
    method = create_method(cfg.method, cfg.model, context).to(device)
    if use_channels_last(method, t, device):
        method = method.to(memory_format=torch.channels_last)
    if dist.is_main():
        write_json(cell / CONFIG_FILE, config_record(cfg))
        write_json(cell / DATA_FILE, data_record(data))

    opt = build_optimizer(method, cfg)
    sched = build_scheduler(opt, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    st = _TrainState(rows=[])
    if resume and last_path.exists():
        st = _resume(method, opt, sched, scaler, precision, cfg, last_path, ckpt_dir, log)
    rows = st.rows if st.rows is not None else []
    if dist.is_main():  # the log says what last.pt holds (a kill may have come between the two writes)
        if rows:
            write_text(cell / "train_log.csv", _log_csv(rows))
        else:
            (cell / "train_log.csv").unlink(missing_ok=True)

    train_step = method.training_loss
    if t.compile:
        for child in method.children():
            child.compile()
    train_step = dist.training_step(method, device)  # DDP-wrapped under torchrun, else unchanged

    cache = None  # train.image_cache: decode + resize every image once into a memory-mapped array
    if t.image_cache:
        from ..datasets.cache import ImageCache, train_resize_size

        cache = ImageCache.build(data, train_resize_size(t.image_size, t.resize), fingerprint=data.fingerprint)
    for split in (data.train, data.val, data.test):  # the splits are shared by the cells of a run: reset
        split.image_cache = cache
    normalize = ImageNormalizer(*method.image_mean_std(), channels_last=use_channels_last(method, t, device))
    pairs = PairDataset(data.train, build_transform(t, train=True), sampling=t.sampling,
                        seed=cfg.seed)
    collate = make_collate(method.tokenizer())
    workers = auto_workers(t.num_workers, device)
    select = t.select_metric

    if t.epochs == 0:  # zero-shot: evaluate the initial weights; nothing is selected on test
        val_metrics, _, _ = dist.on_main(evaluate, method, data.val, cfg, device, precision, progress)
        if dist.is_main():
            save_best(ckpt_dir, method, {"epoch": 0, "val": val_metrics,
                                         "text_state": method.extra_state_json()}, cfg.method)

    first = t.epochs if st.early_stopped else st.epoch
    for epoch in range(first, t.epochs):
        e0 = time.time()
        seed_everything(epoch_seed(cfg.seed, epoch))
        if hasattr(pairs, "set_epoch"):
            pairs.set_epoch(epoch)
        drop_last = -(-len(pairs) // dist.world_size()) > t.batch_size  # per-rank share (DDP)
        loader = _loader(pairs, t.batch_size, True, collate, workers, device, epoch_seed(cfg.seed, epoch),
                         drop_last=drop_last, sampler=dist.train_sampler(pairs, cfg.seed, epoch))
        method.train()
        total, n, log_sums = torch.zeros((), device=device), 0, {}  # summed on the device, read once an epoch
        bar = tqdm(loader, desc=f"{cfg.method}/{cfg.dataset}/seed{cfg.seed} epoch {epoch + 1}/{t.epochs}",
                   disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            try:
                batch: Batch = batch.to(device, non_blocking=True)
                batch.images = normalize(batch.images)
                with precision.autocast(device):
                    out = train_step(batch)
                loss = out.loss
                if not dist.all_finite(loss):
                    raise _diverged(f"non-finite loss ({loss.item()})", epoch + 1, step + 1, epoch, last_path,
                                    t.lr)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if t.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(method.parameters(), t.grad_clip)
                scaler.step(opt)
                scaler.update()
            except torch.OutOfMemoryError:
                raise UserError(f"out of memory on {device} at epoch {epoch + 1}, step {step + 1} with batch "
                                f"size {t.batch_size}; try --set train.batch_size={max(2, t.batch_size // 2)} "
                                "(or a smaller train.image_size)") from None
            total += loss.detach().float()
            _add_logs(log_sums, out.logs)
            n += 1
            if progress and step % 20 == 0:  # reading the loss waits for the GPU: not every step
                bar.set_postfix(loss=f"{float(total) / n:.4f}")
            kill_point(f"step:{epoch + 1}:{step + 1}")  # test-only crash hook
        if not _weights_finite(method):
            raise _diverged("non-finite weights", epoch + 1, None, epoch, last_path, t.lr)
        logs = {k: float(v) / max(n, 1) for k, v in log_sums.items()}  # this rank's epoch means
        total, n = dist.sum_across(float(total), n)  # DDP: the epoch's mean loss over all ranks
        lr = opt.param_groups[0]["lr"]
        sched.step()
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": round(total / max(n, 1), 6), "val_mR": "",
                               "lr": lr}
        improved = False
        if (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs:
            val_metrics, _, _ = dist.on_main(evaluate, method, data.val, cfg, device, precision, progress)
            row["val_mR"] = round(val_metrics[select], 4)
            if metric_sign(select) * val_metrics[select] > st.best_val:  # best_val: signed, higher is better
                st.best_val, st.best_epoch, st.best_val_metrics, st.bad_evals = \
                    metric_sign(select) * val_metrics[select], epoch + 1, val_metrics, 0
                improved = True
            else:
                st.bad_evals += 1
        row["seconds"] = round(time.time() - e0, 2)
        rows.append(row)
        stop = bool(t.patience and st.bad_evals >= t.patience)
        dist.on_main(save_resume, last_path, {
            "model": method.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch + 1, "best_val": st.best_val,
            "best_epoch": st.best_epoch, "best_val_metrics": st.best_val_metrics, "log": rows,
            "bad_evals": st.bad_evals, "early_stopped": stop,
        }, cfg.method)
        # after last.pt: the log never shows an epoch a resume would not start after (rank 0 writes)
        dist.on_main(write_text, cell / "train_log.csv", _log_csv(rows))
        if improved:
            dist.on_main(save_best, ckpt_dir, method, {"epoch": epoch + 1, "val": st.best_val_metrics,
                                                       "text_state": method.extra_state_json()}, cfg.method)
        log(f"  epoch {epoch + 1}/{t.epochs}  loss {row['loss']:.4f}  val {select} {row['val_mR']}  "
            f"({row['seconds']}s)" + "".join(f"  {k} {v:.4g}" for k, v in logs.items()))
        if stop:
            log(f"  early stop: no val improvement in {t.patience} validations")
            break

    best_meta = load_best(ckpt_dir, method, cfg.method)
    method.load_extra_state_json(best_meta.get("text_state", {}))
    if t.epochs > 0:
        check_not_collapsed(best_meta.get("val"), data.val, t.lr)
    _, i2t, t2i = dist.on_main(evaluate, method, data.test, cfg, device, precision, progress)
    wall = time.time() - t0
    record = run_record(cfg, data, device, precision, wall)
    record["resumed_from_epoch"] = st.resumed_from
    record["weights"] = method.weight_provenance()  # backbone weight tag/file and loaded/missing key counts
    record["world_size"] = dist.world_size()  # DDP processes; global batch = train.batch_size x this
    record["train_seconds"] = round(sum(float(r.get("seconds") or 0) for r in rows), 2)
    dist.on_main(write_json, cell / "run.json", record)
    metrics = dist.on_main(write_eval_outputs, cell, i2t, t2i, data.test.cap2img, {
        "split": "test", "n_images": data.test.n_images, "n_captions": data.test.n_captions,
        "selected_epoch": best_meta.get("epoch"), "selection": f"val {select}", "val": best_meta.get("val"),
    })
    return CellResult(cell, metrics, False, wall)


# Below this many val images, a weak but real model lands under chance by noise alone (6 images:
# chance mR is 61, and 2 epochs of a tiny test model give 56), so only tied scores count there.
COLLAPSE_MIN_VAL_IMAGES = 20


def check_not_collapsed(val: dict[str, Any] | None, val_split: Split, lr: float) -> None:
    """TrainingCollapsed when the selected checkpoint's val mR is at or below chance: a trained model
    that ranks no better than a random one is a failed run, not a result (e.g. a finite divergence)."""
    from ..evaluation.metrics import chance_metrics

    mr = (val or {}).get("mR")
    if not isinstance(mr, (int, float)) or val_split.n_images < COLLAPSE_MIN_VAL_IMAGES:
        return
    chance = float(chance_metrics(np.asarray(val_split.cap2img))["chance_mR"])
    if mr <= chance:
        raise TrainingCollapsed(f"training collapsed: the selected checkpoint's val mR {mr:.2f} is at or below "
                                f"chance ({chance:.2f}); try a lower train.lr (now {lr:g}) or more epochs")


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
