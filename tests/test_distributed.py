"""Multi-process training of one cell: torchrun with 2 CPU ranks (gloo) writes the same files as one
process would, and its test ranks equal a single-process evaluation of its checkpoint. Also: the
contrastive loss gathered over ranks has the gradients of the loss over the global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TINY_SET = {"train.sampling": "image", "train.image_size": "32", "backbone": "test_resnet", "embed_dim": "32", "hidden_dim": "32",
            "word_dim": "16"}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK",
                                                            "RSBENCH_TEST_KILL_AT")}
    env.update(RSBENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_equal_single_process_eval(tmp_path: Path, tiny_synthetic: Path) -> None:
    from rsbench.config.resolve import resolve_config
    from rsbench.datasets import load_dataset
    from rsbench.engine.checkpoint import load_best
    from rsbench.engine.device import pick_precision
    from rsbench.engine.evaluate import evaluate
    from rsbench.methods.base import MethodContext
    from rsbench.methods.registry import create_method

    syn = tiny_synthetic
    out = tmp_path / "res"
    sets = [a for k, v in TINY_SET.items() for a in ("--set", f"{k}={v}")]
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "rsbench.cli", "run", "--methods", "vsepp",
           "--dataset", "synthetic", "--data-root", str(syn), "--out", str(out), "--epochs", "1",
           "--batch-size", "8", "--preset", "small", "--device", "cpu", *sets]
    r = subprocess.run(cmd, check=False, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count("run vsepp on synthetic") == 1  # rank 1 prints nothing
    cell = out / "synthetic" / "vsepp" / "seed0"
    assert json.loads((cell / "run.json").read_text())["world_size"] == 2
    assert len((cell / "train_log.csv").read_text().strip().splitlines()) == 2  # header + 1 epoch
    assert not (cell / "failed.json").exists()

    # single process, same checkpoint: identical ranks
    cfg = resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": 1, "batch_size": 8}, TINY_SET)
    data = load_dataset("synthetic", data_root=syn)
    dev = torch.device("cpu")
    ctx = MethodContext(train_captions=data.train.captions, train_cap2img=data.train.cap2img,
                        cache_dir=tmp_path / "cache" / "methods" / data.name, dataset_fingerprint=data.fingerprint,
                        device=dev)
    method = create_method("vsepp", cfg.model, ctx)
    meta = load_best(cell / "checkpoint", method, "vsepp")
    method.load_extra_state_json(meta.get("text_state", {}))
    _, i2t, t2i = evaluate(method, data.test, cfg, dev, pick_precision(cfg.train.precision, dev))
    with np.load(cell / "ranks.npz") as z:
        np.testing.assert_array_equal(z["i2t_rank"], i2t)
        np.testing.assert_array_equal(z["t2i_rank"], t2i)


def _gather_worker(rank: int, world: int, port: int, q: object) -> None:
    """One rank: InfoNCE on its half of the batch through the DDP step wrapper; report the grads."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from rsbench.engine import distributed as dist

    dist.setup(torch.device("cpu"))
    model, x, ids = _gather_problem()
    model.gather = dist.loss_gather()  # as the engine passes it in the MethodContext
    half = x.shape[0] // world
    sl = slice(rank * half, (rank + 1) * half)
    step = dist.training_step(model, torch.device("cpu"))
    loss = step((x[sl], ids[sl])).loss
    loss.backward()
    q.put((rank, float(loss.detach()), [p.grad.numpy().copy() for p in model.parameters()]))  # type: ignore[attr-defined]
    dist.finish()


class _TwoTower(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(6, 4)
        self.b = torch.nn.Linear(6, 4)
        from rsbench.contracts import no_gather

        self.gather = no_gather

    def training_loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> object:
        from rsbench.contracts import LossOutput
        from rsbench.methods.components.contrastive import info_nce

        x, ids = batch
        return LossOutput(info_nce(self.a(x), self.b(x), 10.0, ids, gather=self.gather))


def _gather_problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 6, generator=g)
    ids = torch.tensor([0, 1, 2, 3, 4, 1, 6, 7])  # rows 1 and 5 (on different ranks) show the same image
    return _TwoTower(), x, ids


@pytest.mark.slow
def test_info_nce_gathers_global_batch_with_gradients() -> None:
    import socket

    import torch.multiprocessing as mp

    model, x, ids = _gather_problem()
    ref = model.training_loss((x, ids)).loss
    ref.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_gather_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _, loss, grads in results:
        assert loss == pytest.approx(float(ref.detach()), rel=1e-5)  # every rank: the loss over the global batch
        for g, p in zip(grads, model.parameters()):
            torch.testing.assert_close(torch.from_numpy(g), p.grad, rtol=1e-5, atol=1e-6)  # DDP-averaged = global gradient


def test_single_process_is_unchanged() -> None:
    from rsbench.engine import distributed as dist

    assert not dist.is_distributed() and dist.is_main() and dist.world_size() == 1
    assert dist.train_sampler([1, 2, 3], 0, 0) is None
    assert dist.on_main(lambda a: a + 1, 1) == 2
    t = torch.ones(2, requires_grad=True)
    assert dist.gather_batch(t, None) == (t, None)
    from rsbench.contracts import no_gather

    assert dist.loss_gather() is no_gather  # single process: losses keep the local batch
    assert dist.sum_across(1.0, 2.0) == (1.0, 2.0)
