"""train.warmup_steps: linear warm-up per optimiser step, then the epoch schedule; exact on resume (#16)."""

from __future__ import annotations

import pytest
import torch
from test_runner import run, tiny

from rsbench import io as rio

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _record_lrs(monkeypatch) -> list[float]:
    """The lr of the first param group at every optimiser step."""
    from rsbench.engine import train

    lrs: list[float] = []
    real = train.build_optimizer

    def build(method, cfg):
        opt = real(method, cfg)
        opt.register_step_pre_hook(lambda o, args, kwargs: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(train, "build_optimizer", build)
    return lrs


def test_warmup_lr_of_the_first_steps_and_exact_resume(tiny_synthetic, tmp_path, monkeypatch):
    lrs = _record_lrs(monkeypatch)
    cfg = tiny(epochs=3, lr=1e-3, warmup_steps=5, lr_step=2, lr_gamma=0.5, keep_last=True,  # last.pt read below
               checkpoint_every_s=0)  # a checkpoint after epoch 1, which the kill in epoch 2 resumes from
    run(cfg, tiny_synthetic, tmp_path / "a")
    full = list(lrs)
    per_epoch = len(full) // 3
    assert per_epoch >= 2 and len(full) == 3 * per_epoch
    want = [1e-3 * min(1.0, (i + 1) / 5) * (0.5 if i >= 2 * per_epoch else 1.0) for i in range(len(full))]
    assert full == pytest.approx(want, rel=1e-9)
    assert full[0] == pytest.approx(2e-4) and full[4] == pytest.approx(1e-3)
    # killed in epoch 2 (inside the warm-up), resumed from last.pt: the same lr at every step
    lrs.clear()

    def hook(name: str) -> None:
        if name == f"step:2:{per_epoch - 1}":
            raise KeyboardInterrupt

    monkeypatch.setattr(rio, "_kill_hook", hook)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tiny_synthetic, tmp_path / "b")
    monkeypatch.setattr(rio, "_kill_hook", None)
    first = lrs[:per_epoch]
    lrs.clear()
    run(cfg, tiny_synthetic, tmp_path / "b")
    assert first + lrs == pytest.approx(full, rel=1e-9)
    assert torch.load(tmp_path / "b/checkpoint/last.pt", weights_only=True)["opt_steps"] == len(full)


def test_no_warmup_keeps_the_schedule():
    from rsbench.engine.train import warmup_factor

    assert [warmup_factor(0, s) for s in (0, 1, 50)] == [1.0, 1.0, 1.0]
    assert [warmup_factor(4, s) for s in (0, 1, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]
