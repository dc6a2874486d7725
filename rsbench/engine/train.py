"""Training of one cell: optimiser and scheduler, the epoch loop, selection on val, checkpoints.

Resumable: every epoch's RNG comes from (seed, epoch) and last.pt holds model, optimiser, scheduler,
scaler, best-so-far and the log, so a run killed at any moment and resumed on CPU ends with the same
result as an uninterrupted one. A checkpoint is written at the end of the first epoch that ends
train.checkpoint_every_s after the last one (0: every epoch), after the last epoch and at an early stop;
between two, a better epoch's weights wait in memory. Write order of a checkpoint: last.pt (with those
waiting best weights when they are not the model's), train_log.csv, then best.safetensors, so the log
never shows an epoch that a resume would redo and a resume repairs a best checkpoint that a kill
prevented from being written. The checkpoint is selected on whatever `validate` scores (run_cell
passes the val split: test is never seen here).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import UserError, one_line
from ..io import kill_point, write_text
from ..results.cell import read_run_record
from ..results.layout import CHECKPOINT_DIR, RESUME_FILE, TRAIN_LOG
from . import distributed as dist
from .checkpoint import (
    CheckpointError,
    best_epoch_on_disk,
    check_resume_precision,
    cpu_state,
    load_resume,
    restore_model,
    save_best,
    save_resume,
)
from .device import Precision, auto_workers, make_loader, use_channels_last
from .progress import Bar, format_duration, print_beside_bars, steps_estimate

if TYPE_CHECKING:
    from ..config.schema import RunConfig
    from ..contracts import Batch, DatasetSplits, Split
    from ..methods.base import RetrievalMethod

LOG_FIELDS = ["epoch", "loss", "val_mR", "lr", "seconds"]
ESTIMATE_SKIP, ESTIMATE_STEPS = 2, 10  # a cell's estimate: steps left untimed (start-up), steps timed


class TrainingDiverged(UserError):
    """A non-finite loss or weights: stop, keep the last good checkpoint, say where it happened."""


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 12345) % (2**31 - 1)


def seed_everything(s: int) -> None:
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


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


def log_csv(rows: list[dict[str, Any]]) -> str:
    """train_log.csv's text for the epochs in `rows`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


@dataclass
class TrainState:
    """What last.pt carries besides the model/optimiser/scheduler/scaler tensors."""

    epoch: int = 0  # completed epochs
    best_val: float = -math.inf  # signed: higher is better whatever the metric
    best_epoch: int | None = None
    best_val_metrics: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_evals: int = 0
    early_stopped: bool = False
    resumed_from: int | None = None
    opt_steps: int = 0  # optimiser steps taken (train.warmup_steps counts them)


@dataclass
class UnsavedBest:
    """The best epoch since the last checkpoint; `weights` is a CPU copy once training has moved on from it
    (None while they are still the model's, and on ranks other than 0, which never write)."""

    epoch: int
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor] | None = None


@dataclass
class Trainer:
    """Everything the epoch loop works on, built once per cell by `start_training`."""

    cfg: RunConfig
    method: RetrievalMethod
    device: torch.device
    precision: Precision
    cell: Path
    opt: torch.optim.Optimizer
    sched: Any
    scaler: Any
    state: TrainState
    step: Callable[[Any], Any]  # the training loss (DDP-wrapped under torchrun)
    pairs: Any = None
    collate: Any = None
    normalize: Any = None
    workers: int = 0
    tb: Any = None  # train.tensorboard: rank 0's SummaryWriter (engine.tblog), else None
    estimate_log: Callable[[str], Any] | None = None  # set: print the cell's estimate (first steps timed)
    saved_epoch: int = 0  # the epoch last.pt holds (0: none yet)
    saved_at: float = field(default_factory=time.monotonic)  # when it was written (or training started)
    unsaved_best: UnsavedBest | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.cell / CHECKPOINT_DIR

    @property
    def last_path(self) -> Path:
        return self.ckpt_dir / RESUME_FILE


def _diverged(what: str, epoch: int, step: int | None, saved_epoch: int, last_path: Path,
              lr: float) -> TrainingDiverged:
    """The message: where it happened, which checkpoint is kept, what to try."""
    where = f"epoch {epoch}, step {step}" if step is not None else f"the end of epoch {epoch}"
    kept = (f"the last good checkpoint (epoch {saved_epoch}) is kept in {last_path}" if saved_epoch > 0
            and last_path.is_file() else "no checkpoint had been written yet")
    return TrainingDiverged(f"{what} at {where}; {kept} (try a lower train.lr, now {lr:g})")


def _best_meta(tr: Trainer, epoch: int, val: dict[str, Any] | None) -> dict[str, Any]:
    return {"epoch": epoch, "val": val, "text_state": tr.method.extra_state_json()}


def resume_state(tr: Trainer, log: Callable[[str], Any]) -> TrainState:
    """Restore everything from last.pt; repair a best checkpoint a kill prevented from being written."""
    cfg, last_path = tr.cfg, tr.last_path
    state = load_resume(last_path, cfg.method)
    check_resume_precision(last_path, state, tr.precision.name, cfg.train.precision, tr.device.type,
                           (read_run_record(tr.cell) or {}).get("precision"))
    restore_model(tr.method, state["model"], last_path)
    try:
        tr.opt.load_state_dict(state["optimizer"])
        tr.sched.load_state_dict(state["scheduler"])
        if "scaler" in state and tr.precision.use_scaler:
            tr.scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{last_path}: optimiser/scheduler state does not match this config "
                              f"({one_line(e)[:120]}); pass --no-resume to train this cell from the "
                              "start") from None
    st = TrainState(epoch=int(state["epoch"]), best_val=float(state["best_val"]),
                    best_epoch=state["best_epoch"], best_val_metrics=state.get("best_val_metrics"),
                    rows=list(state["log"]), bad_evals=int(state.get("bad_evals", 0)),
                    early_stopped=bool(state.get("early_stopped")), resumed_from=int(state["epoch"]),
                    opt_steps=int(state.get("opt_steps", 0)))
    on_disk = best_epoch_on_disk(tr.ckpt_dir)
    if st.best_epoch is not None and on_disk != st.best_epoch:
        # killed after last.pt, before best.safetensors: the best weights are the restored ones, or last.pt's copy
        weights = tr.method if st.best_epoch == st.epoch else state.get("best_model")
        if weights is not None and st.best_val_metrics is not None:
            save_best(tr.ckpt_dir, weights, _best_meta(tr, st.best_epoch, st.best_val_metrics), cfg.method)
        else:
            raise CheckpointError(f"{tr.ckpt_dir}: best checkpoint is from epoch {on_disk}, resume state says "
                                  f"{st.best_epoch}; pass --no-resume to train this cell from the start")
    log(f"  resuming {last_path.parent.parent} from epoch {st.epoch}")
    return st


def start_training(cfg: RunConfig, method: RetrievalMethod, device: torch.device, precision: Precision,
                   cell: Path, resume: bool, log: Callable[[str], Any]) -> Trainer:
    """Optimiser, scheduler and scaler (restored from last.pt on resume); train_log.csv matching last.pt."""
    opt = build_optimizer(method, cfg)
    sched = build_scheduler(opt, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    tr = Trainer(cfg, method, device, precision, cell, opt, sched, scaler, TrainState(), method.training_loss)
    if resume and tr.last_path.exists():
        tr.state = resume_state(tr, log)
        tr.saved_epoch = tr.state.epoch
    if dist.is_main():  # the log says what last.pt holds (a kill may have come between the two writes)
        if tr.state.rows:
            write_text(cell / TRAIN_LOG, log_csv(tr.state.rows))
        else:
            (cell / TRAIN_LOG).unlink(missing_ok=True)
        if cfg.train.tensorboard:
            from .tblog import open_writer

            tr.tb = open_writer(cell, tr.state.resumed_from)
    if cfg.train.compile:
        for child in method.children():
            child.compile()
    tr.step = dist.training_step(method, device)  # DDP-wrapped under torchrun, else unchanged
    return tr


def build_image_cache(data: DatasetSplits, cfg: RunConfig) -> Any:
    """train.image_cache: decode + resize every image once into a memory-mapped array (None when off)."""
    if not cfg.train.image_cache:
        return None
    from ..datasets.cache import ImageCache, train_resize_size

    return ImageCache.build(data, train_resize_size(cfg.train.image_size, cfg.train.resize),
                            fingerprint=data.fingerprint)


def attach_train_data(tr: Trainer, train: Split, cache: Any) -> None:
    """The training pairs, collate and normaliser; images come from `cache` when given."""
    from ..datasets.torchdata import ImageNormalizer, PairDataset, build_transform, make_collate

    t = tr.cfg.train
    tr.normalize = ImageNormalizer(*tr.method.image_mean_std(),
                                   channels_last=use_channels_last(tr.method, t, tr.device))
    transform = build_transform(t.image_size, t.resize, t.augments, train=True)
    loader = None
    if (features := tr.method.image_input()) is not None:  # precomputed features instead of pixels
        from ..datasets.features import feature_loading

        transform, loader, tr.normalize = feature_loading(features)
    tr.pairs = PairDataset(train, transform, sampling=t.sampling, seed=tr.cfg.seed, image_loader=loader,
                           cache=cache)
    tr.collate = make_collate(tr.method.tokenizer())
    tr.workers = auto_workers(t.num_workers, tr.device)


def _add_logs(sums: dict[str, torch.Tensor], logs: dict[str, Any]) -> None:
    """Add one step's LossOutput.logs to the epoch's sums without reading them back to the host."""
    for k, v in logs.items():
        v = torch.as_tensor(v).detach().float()
        sums[k] = sums[k] + v if k in sums else v.clone()


def _weights_finite(method: torch.nn.Module) -> bool:
    """Parameters and float buffers (e.g. BatchNorm running stats) are all finite."""
    return all(bool(torch.isfinite(v).all()) for v in method.state_dict().values()
               if v.is_floating_point())


def optimiser_step(tr: Trainer, batch: Batch, epoch: int, step: int) -> Any:
    """Forward, finite-loss check, backward, clip, step; out of memory becomes a one-line hint."""
    t, device = tr.cfg.train, tr.device
    try:
        batch = batch.to(device, non_blocking=True)
        batch.images = tr.normalize(batch.images)
        with tr.precision.autocast(device):
            out = tr.step(batch)
        loss = out.loss
        if not dist.all_finite(loss):
            raise _diverged(f"non-finite loss ({loss.item()})", epoch + 1, step + 1, tr.saved_epoch, tr.last_path,
                            t.lr)
        tr.opt.zero_grad(set_to_none=True)
        tr.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            tr.scaler.unscale_(tr.opt)
            torch.nn.utils.clip_grad_norm_(tr.method.parameters(), t.grad_clip)
        with warmed_up_lr(tr.opt, warmup_factor(t.warmup_steps, tr.state.opt_steps)):
            tr.scaler.step(tr.opt)
        tr.scaler.update()
        tr.state.opt_steps += 1
    except torch.OutOfMemoryError:
        raise UserError(f"out of memory on {device} at epoch {epoch + 1}, step {step + 1} with batch "
                        f"size {t.batch_size}; try --set train.batch_size={max(2, t.batch_size // 2)} "
                        "(or a smaller train.image_size)") from None
    return out


def warmup_factor(warmup_steps: int, done: int) -> float:
    """The lr factor of optimiser step `done` (0-based) under a linear warm-up of `warmup_steps` steps."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (done + 1) / warmup_steps)


@contextlib.contextmanager
def warmed_up_lr(opt: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """Scale every group's scheduled lr by `factor` for one step, then restore it (the epoch scheduler
    keeps owning the lr, so warm-up and schedule compose and resume needs only the step count)."""
    if factor >= 1.0:
        yield
        return
    scheduled = [g["lr"] for g in opt.param_groups]
    for g, lr in zip(opt.param_groups, scheduled):
        g["lr"] = lr * factor
    try:
        yield
    finally:
        for g, lr in zip(opt.param_groups, scheduled):
            g["lr"] = lr


def _time_steps(tr: Trainer, step: int, steps: int, epochs_left: int, marks: list[float]) -> None:
    """After step `step` (0-based) of the first epoch trained here: time steps ESTIMATE_SKIP+1 to
    ESTIMATE_SKIP+ESTIMATE_STEPS (the first ones pay for start-up) and print the cell's estimate once."""
    if step + 1 not in (ESTIMATE_SKIP, ESTIMATE_SKIP + ESTIMATE_STEPS):
        return
    if tr.device.type == "cuda":  # the steps' kernels are queued: wait for them before reading the clock
        torch.cuda.synchronize(tr.device)
    marks.append(time.perf_counter())
    if len(marks) == 2 and tr.estimate_log is not None:
        step_s = (marks[1] - marks[0]) / ESTIMATE_STEPS
        print_beside_bars(tr.estimate_log, steps_estimate(step_s, steps, epochs_left, ESTIMATE_SKIP + 1,
                                                          ESTIMATE_SKIP + ESTIMATE_STEPS))
        tr.estimate_log = None


def train_one_epoch(tr: Trainer, epoch: int, progress: bool) -> tuple[float, dict[str, float]]:
    """One epoch (0-based) from its own seed; the mean loss over all ranks and this rank's mean logs."""
    cfg, t = tr.cfg, tr.cfg.train
    seed_everything(epoch_seed(cfg.seed, epoch))
    if hasattr(tr.pairs, "set_epoch"):
        tr.pairs.set_epoch(epoch)
    drop_last = -(-len(tr.pairs) // dist.world_size()) > t.batch_size  # per-rank share (DDP)
    loader = make_loader(tr.pairs, t.batch_size, True, tr.collate, tr.workers, tr.device,
                         epoch_seed(cfg.seed, epoch), drop_last=drop_last,
                         sampler=dist.train_sampler(tr.pairs, cfg.seed, epoch))
    tr.method.train()
    total, n, log_sums = torch.zeros((), device=tr.device), 0, {}  # summed on the device, read once an epoch
    bar = Bar(loader, f"{cfg.method}/{cfg.dataset}/seed{cfg.seed} epoch {epoch + 1}/{t.epochs}", progress)
    marks: list[float] = []
    for step, batch in enumerate(bar):
        out = optimiser_step(tr, batch, epoch, step)
        if tr.estimate_log is not None:
            _time_steps(tr, step, len(bar), t.epochs - epoch, marks)
        total += out.loss.detach().float()
        _add_logs(log_sums, out.logs)
        n += 1
        if progress and step % 20 == 0:  # reading the loss waits for the GPU: not every step
            bar.set_postfix(loss=f"{float(total) / n:.4f}")
        kill_point(f"step:{epoch + 1}:{step + 1}")  # test-only crash hook
    if not _weights_finite(tr.method):
        raise _diverged("non-finite weights", epoch + 1, None, tr.saved_epoch, tr.last_path, t.lr)
    logs = {k: float(v) / max(n, 1) for k, v in log_sums.items()}  # this rank's epoch means
    total_f, n = dist.sum_across(float(total), n)  # DDP: the epoch's mean loss over all ranks
    return total_f / max(n, 1), logs


def validate_and_select(st: TrainState, val_metrics: dict[str, Any], epoch: int, select: str) -> bool:
    """Keep `epoch` as the best when its val `select` metric improves (in the metric's direction)."""
    from ..evaluation.metrics import metric_sign

    signed = metric_sign(select) * val_metrics[select]
    if signed > st.best_val:
        st.best_val, st.best_epoch, st.best_val_metrics, st.bad_evals = signed, epoch, val_metrics, 0
        return True
    st.bad_evals += 1
    return False


def checkpoint_due(tr: Trainer, epoch: int, stop: bool) -> bool:
    """After the last epoch, an early stop, or once train.checkpoint_every_s have passed since the last
    checkpoint (rank 0's clock decides for every rank: they all take part in the writes)."""
    t = tr.cfg.train
    due = stop or epoch == t.epochs or time.monotonic() - tr.saved_at >= t.checkpoint_every_s
    return bool(dist.broadcast(due))


def save_epoch(tr: Trainer, epoch: int, improved: bool, stop: bool) -> None:
    """Keep an improved epoch as the unsaved best; when a checkpoint is due: last.pt, then train_log.csv, then
    the unsaved best (rank 0 writes)."""
    st, method, name = tr.state, tr.method, tr.cfg.method
    if improved:
        tr.unsaved_best = UnsavedBest(epoch, _best_meta(tr, epoch, st.best_val_metrics))
    best = tr.unsaved_best
    if not checkpoint_due(tr, epoch, stop):
        if best is not None and best.weights is None and dist.is_main():
            best.weights = cpu_state(method)  # training goes on: copy the best weights before they change
        return
    resume = {
        "model": method.state_dict(), "optimizer": tr.opt.state_dict(), "scheduler": tr.sched.state_dict(),
        "scaler": tr.scaler.state_dict(), "epoch": epoch, "best_val": st.best_val,
        "best_epoch": st.best_epoch, "best_val_metrics": st.best_val_metrics, "log": st.rows,
        "bad_evals": st.bad_evals, "early_stopped": stop, "opt_steps": st.opt_steps,
        "precision": tr.precision.name,  # a resume in another precision is refused (check_resume_precision)
    }
    if best is not None and best.weights is not None:
        resume["best_model"] = best.weights  # what a resume writes as best.safetensors if a kill comes first
    dist.on_main(save_resume, tr.last_path, resume, name)
    # after last.pt: the log never shows an epoch a resume would not start after (rank 0 writes)
    dist.on_main(write_text, tr.cell / TRAIN_LOG, log_csv(st.rows))
    if best is not None:
        weights = best.weights if best.weights is not None else method
        dist.on_main(save_best, tr.ckpt_dir, weights, best.meta, name)
    tr.saved_epoch, tr.saved_at, tr.unsaved_best = epoch, time.monotonic(), None


def train_epochs(tr: Trainer, validate: Callable[[], dict[str, Any]], progress: bool,
                 log: Callable[[str], Any]) -> None:
    """The epoch loop; the TensorBoard writer (if any) is closed however it ends."""
    try:
        _epoch_loop(tr, validate, progress, log)
    finally:
        if tr.tb is not None:
            tr.tb.close()


def _epoch_loop(tr: Trainer, validate: Callable[[], dict[str, Any]], progress: bool,
                log: Callable[[str], Any]) -> None:
    """The epoch loop (or, with 0 epochs, the initial weights as the selected checkpoint)."""
    t, st = tr.cfg.train, tr.state
    if t.epochs == 0:  # zero-shot: evaluate the initial weights; nothing is selected on test
        val_metrics = validate()
        if dist.is_main():
            save_best(tr.ckpt_dir, tr.method, _best_meta(tr, 0, val_metrics), tr.cfg.method)
    for epoch in range(t.epochs if st.early_stopped else st.epoch, t.epochs):
        e0 = time.time()
        loss, logs = train_one_epoch(tr, epoch, progress)
        row: dict[str, Any] = {"epoch": epoch + 1, "loss": round(loss, 6), "val_mR": "",
                               "lr": tr.opt.param_groups[0]["lr"]}
        tr.sched.step()
        improved, val_metrics = False, None
        if (epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs:
            val_metrics = validate()
            row["val_mR"] = round(val_metrics[t.select_metric], 4)
            improved = validate_and_select(st, val_metrics, epoch + 1, t.select_metric)
        row["seconds"] = round(time.time() - e0, 2)
        st.rows.append(row)
        stop = bool(t.patience and st.bad_evals >= t.patience)
        if tr.tb is not None:  # before last.pt: a resume purges what a kill left after it (engine.tblog)
            from .tblog import write_epoch

            write_epoch(tr.tb, row, val_metrics)
        save_epoch(tr, epoch + 1, improved, stop)
        if tr.estimate_log is not None:  # an epoch too short to time its steps: estimate from the epoch
            if t.epochs > epoch + 1:
                tr.estimate_log(f"  estimated {format_duration(row['seconds'] * (t.epochs - epoch - 1))} for "
                                f"the {t.epochs - epoch - 1} epoch(s) left (from epoch {epoch + 1}, "
                                "validation included; test not included)")
            tr.estimate_log = None
        log(f"  epoch {epoch + 1}/{t.epochs}  loss {row['loss']:.4f}  val {t.select_metric} {row['val_mR']}  "
            f"({row['seconds']}s)" + "".join(f"  {k} {v:.4g}" for k, v in logs.items()))
        if stop:
            log(f"  early stop: no val improvement in {t.patience} validations")
            break
