"""The two correctness checks of the GPU check (rsbench.benchmarks.gpu).

resume: an fp16 run with a GradScaler, stopped after epoch 1 and resumed from its last.pt through the
engine's own path (start_training -> resume_state, train_epochs -> save_epoch), must end with the same
resume state (weights, optimiser, scheduler, scaler, counters, log) as the uninterrupted run. Both run
under deterministic algorithms, where the two are expected to agree bitwise (on CPU they always do).
Where a device's kernels are not deterministic even so, the uninterrupted run is repeated: the resumed
run may then differ from it by at most RESUME_NOISE_FACTOR x the repeat's own difference (a resumed run
cannot be closer to the uninterrupted one than a repeat of it is; the factor covers the spread of one
sample), and the scaler state (scale, growth tracker) must still be equal exactly.

ddp: with 2+ CUDA GPUs, a torchrun cell of 2 processes (engine.distributed) and a single-process
evaluation of its selected checkpoint must give the same test ranks and the same top-10 lists and scores
(topk.npz; the scores are expected to be exact, the same weights evaluated by the same code on the same
kind of device, and may differ by DDP_SCORE_TOL, a last-bit difference of another kernel choice).
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESUME_NOISE_FACTOR = 10.0
DDP_SCORE_TOL = 1e-5  # top-10 scores: expected exact; a last-bit difference of another kernel choice is not a bug
CHECK_SET = {"pretrained": False, "train.sampling": "image", "train.keep_last": True}
TINY_CHECK_SET = {**CHECK_SET, "train.image_size": 32, "train.resize": 36, "train.batch_size": 8,
                  "backbone": "test_resnet", "embed_dim": 32, "hidden_dim": 32, "word_dim": 16,
                  "train.num_workers": 0}


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIPPED
    detail: str


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels (warn where there are none) for the two runs compared; restored after."""
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]


def check_config(tiny: bool, epochs: int) -> Any:
    """vsepp's small preset (a short, cheap cell) in fp16, random weights, keep_last."""
    from ..config.resolve import resolve_config

    keys = {**(TINY_CHECK_SET if tiny else CHECK_SET), "train.precision": "fp16", "train.epochs": epochs}
    return resolve_config("vsepp", "synthetic", 0, "small", overrides=keys)


def train_cell(cfg: Any, data: Any, device: torch.device, cell: Path, resume: bool) -> Path:
    """Train `cfg.train.epochs` epochs of a cell as run_cell does (resuming from its last.pt when asked),
    selecting on val; returns last.pt's path. fp16 + GradScaler (pick_precision's CUDA fp16, also on CPU)."""
    from ..engine.cell import build_method
    from ..engine.device import Precision
    from ..engine.evaluate import evaluate
    from ..engine.train import attach_train_data, seed_everything, start_training, train_epochs

    quiet: Callable[[str], None] = lambda _msg: None
    precision = Precision(torch.float16, True)
    seed_everything(cfg.seed)
    method = build_method(cfg, data, device)
    tr = start_training(cfg, method, device, precision, cell, resume, quiet)
    attach_train_data(tr, data.train, None)

    def validate() -> dict[str, Any]:
        metrics, _, _ = evaluate(method, data.val, cfg, device, precision)
        return metrics

    train_epochs(tr, validate, False, quiet)
    return tr.last_path


def _differences(a: Any, b: Any, key: str = "") -> tuple[list[str], float]:
    """Keys whose values differ, and the largest absolute difference of differing float tensors."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b):
            return [], 0.0
        diff = (a.double() - b.double()).abs().max().item() if a.shape == b.shape and a.numel() else float("inf")
        return [key], diff
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [key or "keys"], float("inf")
        parts = [_differences(a[k], b[k], f"{key}.{k}" if key else str(k)) for k in a]
        return [k for p in parts for k in p[0]], max([p[1] for p in parts], default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        parts = [_differences(x, y, f"{key}[{i}]") for i, (x, y) in enumerate(zip(a, b))]
        return [k for p in parts for k in p[0]], max([p[1] for p in parts], default=0.0)
    if a == b:
        return [], 0.0
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return [key], abs(a - b) if numbers else float("inf")  # counters and floats of the log: their difference


def resume_state_of(path: Path) -> dict[str, Any]:
    """last.pt as compared: the wall-clock seconds of the log rows left out."""
    from ..engine.checkpoint import load_resume

    state = load_resume(path)
    state["log"] = [{k: v for k, v in row.items() if k != "seconds"} for row in state["log"]]
    return state


def resume_check(data: Any, device: torch.device, work: Path, tiny: bool,
                 corrupt: Callable[[Path], None] | None = None) -> CheckResult:
    """Uninterrupted 2 epochs vs 1 epoch + resume; `corrupt` (tests) alters last.pt between the two halves."""
    name = "fp16 + GradScaler: resumed run = uninterrupted run"
    with deterministic():
        ref = train_cell(check_config(tiny, 2), data, device, work / "resume-ref", False)
        half = train_cell(check_config(tiny, 1), data, device, work / "resume-cut", False)
        if corrupt is not None:
            corrupt(half)
        end = train_cell(check_config(tiny, 2), data, device, work / "resume-cut", True)
        a, b = resume_state_of(ref), resume_state_of(end)
        keys, diff = _differences(a, b)
        if not keys:
            return CheckResult(name, "PASS", f"bitwise equal after {len(a['log'])} epochs, {a['opt_steps']} steps "
                               f"(weights, optimiser, scheduler, scaler scale {float(a['scaler']['scale']):g}, log)")
        repeat = resume_state_of(train_cell(check_config(tiny, 2), data, device, work / "resume-rep", False))
    return _judge_noise(name, keys, diff, _differences(a, repeat))


def _judge_noise(name: str, keys: list[str], diff: float, repeat: tuple[list[str], float]) -> CheckResult:
    """Not bitwise equal: a pass only within the noise of a repeated uninterrupted run (module doc)."""
    scaler = [k for k in keys if k.startswith("scaler")]
    keys = scaler + [k for k in keys if k not in scaler]
    shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    noise = repeat[1]
    if not repeat[0]:
        return CheckResult(name, "FAIL", f"differs in {shown} (max |diff| {diff:.3g}) while a repeat of the "
                           "uninterrupted run is bitwise equal: the resume does not restore everything")
    if scaler or diff > RESUME_NOISE_FACTOR * noise:
        return CheckResult(name, "FAIL", f"differs in {shown}: max |diff| {diff:.3g} > {RESUME_NOISE_FACTOR:g} x "
                           f"the repeat's {noise:.3g}" + (" (scaler state differs)" if scaler else ""))
    return CheckResult(name, "PASS", f"within noise: max |diff| {diff:.3g}, a repeat of the uninterrupted run "
                       f"differs by {noise:.3g} (nondeterministic kernels)")


def ddp_check(data_root: Path, work: Path, device: torch.device, tiny: bool) -> CheckResult:
    """torchrun with 2 processes trains one vsepp cell; its test ranks vs a single-process evaluation."""
    name = "DDP (torchrun, 2 processes): test ranks = single-process evaluation"
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and gpus < 2:
        return CheckResult(name, "SKIPPED", f"{gpus} CUDA GPU visible; a DDP cell needs 2 or more")
    keys = {**(TINY_CHECK_SET if tiny else CHECK_SET), "train.epochs": 1}
    sets = [a for k, v in keys.items() for a in ("--set", f"{k}={str(v).lower()}")]
    out = work / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "rsbench.cli", "run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(data_root),
           "--out", str(out), "--preset", "small", "--device", device.type, *sets]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, check=False)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return CheckResult(name, "FAIL", f"torchrun exited {r.returncode}: {tail[:200]}")
    return _compare_ddp_ranks(name, out / "synthetic" / "vsepp" / "seed0", keys, data_root, device)


def _compare_ddp_ranks(name: str, cell: Path, keys: dict[str, Any], data_root: Path,
                       device: torch.device) -> CheckResult:
    """Evaluate the DDP cell's selected checkpoint in this one process and compare the ranks."""
    import numpy as np

    from ..config.resolve import resolve_config
    from ..datasets import load_dataset
    from ..engine.cell import build_method
    from ..engine.checkpoint import load_best
    from ..engine.device import pick_precision
    from ..engine.evaluate import evaluate
    from ..evaluation.topk import read_topk
    from ..results.cell import read_run_record

    cfg = resolve_config("vsepp", "synthetic", 0, "small", overrides=copy.deepcopy(keys))
    data = load_dataset("synthetic", data_root=data_root)
    method = build_method(cfg, data, device)
    meta = load_best(cell / "checkpoint", method, "vsepp")
    method.load_extra_state_json(meta.get("text_state", {}))
    result = evaluate(method, data.test, cfg, device, pick_precision(cfg.train.precision, device), topk=True)
    world = (read_run_record(cell) or {}).get("world_size")
    with np.load(cell / "ranks.npz") as z:
        bad = int((z["i2t_rank"] != result.i2t).sum() + (z["t2i_rank"] != result.t2i).sum())
    saved, top = read_topk(cell / "topk.npz"), result.topk
    score_diff = max(float(np.abs(saved.i2t_score - top.i2t_score).max()),
                     float(np.abs(saved.t2i_score - top.t2i_score).max()))
    same_lists = np.array_equal(saved.i2t_idx, top.i2t_idx) and np.array_equal(saved.t2i_idx, top.t2i_idx)
    n = len(result.i2t) + len(result.t2i)
    if world != 2 or bad or not same_lists or score_diff > DDP_SCORE_TOL:
        return CheckResult(name, "FAIL", f"world_size {world}; {bad} of {n} ranks differ; top-10 lists "
                           f"{'equal' if same_lists else 'differ'}, scores max |diff| {score_diff:.3g}")
    scores = "scores equal" if score_diff == 0 else f"scores within {score_diff:.2g}"
    return CheckResult(name, "PASS", f"world_size 2; all {n} test ranks and the top-10 lists equal, {scores}")
