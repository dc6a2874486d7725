"""Multi-process (DistributedDataParallel) training of one cell, launched by `torchrun` or submitit.

Contract (see docs/cluster.md):
- `setup(device)` reads WORLD_SIZE/RANK/LOCAL_RANK; with WORLD_SIZE > 1 it starts the process group
  (nccl on CUDA, gloo on CPU) and returns this rank's device (cuda:LOCAL_RANK on CUDA).
- `train.batch_size` is PER PROCESS: the global batch is batch_size x world size.
- Rank 0 takes the cell lock, writes every file and evaluates the full split alone (`on_main`); its
  result is broadcast, so the scores equal a single-process evaluation of the same weights.
- Contrastive losses gather explicitly: the engine puts `loss_gather()` (= `gather_batch` under DDP) into
  the MethodContext, and `gather_batch` all-gathers embeddings with gradients, so the negatives span the
  global batch. No module-global state: the losses are told, not switched.
Without WORLD_SIZE > 1 every function here is a no-op and single-process runs are unchanged.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..contracts import Gather, LossOutput, no_gather

T = TypeVar("T")


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when absent or unparsable)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _timeout() -> datetime.timedelta:
    """Collective timeout: rank 0 evaluates alone while the others wait (RSBENCH_DIST_TIMEOUT_MIN, default 120)."""
    return datetime.timedelta(minutes=float(os.environ.get("RSBENCH_DIST_TIMEOUT_MIN", "120")))


def setup(device: torch.device) -> torch.device:
    """Start the process group when launched with WORLD_SIZE > 1; return this rank's device.

    Non-main ranks send stdout to /dev/null (errors still reach stderr) unless RSBENCH_DIST_VERBOSE=1.
    """
    if env_world_size() <= 1 or is_distributed():
        return _rank_device(device) if is_distributed() else device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=_timeout(), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=_timeout())
    atexit.register(teardown)
    if not is_main() and os.environ.get("RSBENCH_DIST_VERBOSE") != "1":
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    return device


def _rank_device(device: torch.device) -> torch.device:
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def teardown() -> None:
    """Close the process group (at exit; no collective, so it cannot hang after a one-rank error)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """End of a job that went well on every rank: wait for all ranks, then close the group.

    Without the barrier a rank that is done first closes its gloo connections while another rank
    is still shutting down, which can abort that rank's process (SIGABRT) after all work is done.
    """
    if is_distributed():
        dist.barrier()
    teardown()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on rank 0 only (the others wait) and return its result, or raise its error, on every rank."""
    if not is_distributed():
        return fn(*args, **kwargs)
    out: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            out = (True, fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 (re-raised on every rank below)
            out = (False, e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}"))
    ok, value = broadcast(out)
    if not ok:
        raise value
    return value


def _picklable(obj: Any) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:  # noqa: BLE001 (any failure means: send a plain copy instead)
        return False
    return True


def acquire_on_main(lock: Any) -> bool:
    """Rank 0 tries the cell lock; every rank gets its answer (the others hold nothing)."""
    return broadcast(bool(lock.acquire()) if is_main() else False)


def sum_across(*values: float) -> tuple[float, ...]:
    """Element-wise sums over ranks (e.g. an epoch's loss total and step count)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return tuple(float(v) for v in t.cpu())


def train_sampler(dataset: Any, seed: int, epoch: int) -> torch.utils.data.DistributedSampler | None:
    """A DistributedSampler shuffled by (seed, epoch), or None when not distributed."""
    if not is_distributed():
        return None
    s = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                                            seed=seed)
    s.set_epoch(epoch)
    return s


class _LossModule(nn.Module):
    """forward(batch) = method.training_loss(batch).loss, so DDP's hooks cover the training step."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method
        self.last_logs: dict[str, torch.Tensor] = {}

    def forward(self, batch: Any) -> torch.Tensor:
        out = self.method.training_loss(batch)
        self.last_logs = out.logs
        return out.loss


def training_step(method: nn.Module, device: torch.device) -> Callable[[Any], Any]:
    """`method.training_loss` itself, or (distributed) the same call through a DDP-wrapped module.

    DDP broadcasts rank 0's weights at construction, averages gradients in backward and syncs buffers
    (BatchNorm running stats) from rank 0 before each forward. Unused parameters are allowed
    (RSBENCH_DDP_FIND_UNUSED=0 turns that search off for speed).
    """
    if not is_distributed():
        return method.training_loss
    find_unused = os.environ.get("RSBENCH_DDP_FIND_UNUSED", "1") != "0"
    ddp = nn.parallel.DistributedDataParallel(
        _LossModule(method), device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused)

    def step(batch: Any) -> LossOutput:
        loss = ddp(batch)
        return LossOutput(loss, ddp.module.last_logs)

    return step


def loss_gather() -> Gather:
    """The Gather a method's losses get (MethodContext.gather): across ranks under DDP, else the identity."""
    return gather_batch if is_distributed() else no_gather


def gather_batch(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Concatenate each tensor over ranks in rank order, keeping gradients (global-batch negatives).

    A collective: every rank calls it in the same training step (losses do, through the DDP step), with
    the same shapes (DistributedSampler + drop_last give equal per-rank batches). Unchanged when not
    distributed.
    """
    if not is_distributed():
        return tensors
    from torch.distributed.nn.functional import all_gather

    out: list[torch.Tensor | None] = []
    for t in tensors:
        if t is None:
            out.append(None)
        elif t.requires_grad:
            with warnings.catch_warnings():  # deprecated in torch 2.x for a private API; still correct
                warnings.simplefilter("ignore", FutureWarning)
                out.append(torch.cat(all_gather(t), dim=0))
        else:
            parts = [torch.empty_like(t) for _ in range(world_size())]
            dist.all_gather(parts, t.contiguous())
            out.append(torch.cat(parts, dim=0))
    return tuple(out)


def all_finite(loss: torch.Tensor) -> bool:
    """True when the loss is finite on every rank (so that all ranks stop together on a divergence)."""
    ok = torch.isfinite(loss.detach()).all()
    if not is_distributed():
        return bool(ok)
    flag = ok.to(torch.float32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)
