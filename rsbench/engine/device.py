"""Device, mixed precision and loader sizing: the GPU fast path with safe CPU defaults."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is visible (try --device auto or cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"unknown device '{name}'; choose from: auto, cpu, cuda, cuda:N")
    return torch.device(name)


@dataclass
class Precision:
    """How the forward passes run: autocast dtype (None = fp32) and whether a GradScaler is needed."""

    dtype: torch.dtype | None
    use_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device) -> Any:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """AVX512-BF16 or AMX-BF16: where CPU bf16 autocast pays (without them bf16 is emulated and slower)."""
    return bool(NATIVE_BF16_FLAGS & (_cpu_flags() if flags is None else flags))


def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[-1].split())
    return frozenset()


def pick_precision(precision: str, device: torch.device, native_bf16: bool | None = None) -> Precision:
    """train.precision -> autocast dtype. default = auto: bf16 on a GPU that has it (else fp16 + GradScaler)
    and on a CPU with native bf16 (AMX / avx512_bf16: 2-3x faster backbones there), else fp32;
    fp32 forces full precision; bf16 / fp16 force that dtype (fp16 only on CUDA)."""
    if precision == "fp32":
        return Precision(None, False)
    if device.type != "cuda":
        if precision == "fp16":
            raise UserError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
        if precision in ("auto", "default") and not (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
            return Precision(None, False)
        return Precision(torch.bfloat16, False)
    if precision == "bf16" or (precision != "fp16" and torch.cuda.is_bf16_supported()):
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, e.g. a SLURM or taskset limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads(workers: int, processes: int = 1) -> int:
    """torch intra-op threads when --threads is not given: this process's share of the usable cores
    (`processes` DDP ranks share them) minus its DataLoader workers, at least 1. CPU results depend on
    the thread count (float sums in another order), so it is set, and recorded, rather than left to torch."""
    return max(1, usable_cpus() // max(1, processes) - workers)


def auto_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers sized to the machine: most cores on GPU runs, none on a small CPU box."""
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 2 else min(4, cpus // 2)


def use_channels_last(method: Any, train_cfg: Any, device: torch.device) -> bool:
    """channels_last for the model and its input batches: for CNNs (on GPU and CPU), unless switched off."""
    return bool(train_cfg.channels_last) and method.is_cnn


def make_loader(dataset: Any, batch_size: int, shuffle: bool, collate: Any, workers: int, device: torch.device,
                seed: int, drop_last: bool = False, sampler: Any = None) -> torch.utils.data.DataLoader:
    """A DataLoader whose shuffling and worker RNGs come from `seed` (so a resumed epoch repeats itself)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        collate_fn=collate, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=drop_last, generator=g,
        worker_init_fn=_worker_init if workers else None, persistent_workers=False,
    )


def _worker_init(worker_id: int) -> None:
    import random

    import numpy as np

    from ..locks import close_inherited_lock_fds

    close_inherited_lock_fds()  # a killed run's cell lock must not live on in its workers
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)
