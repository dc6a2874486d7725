"""Helpers shared by the test modules: the `bench` entry point in process, and a few training steps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `bench <args>` through rsbench.cli.main (UserError -> exit 2)."""
    from rsbench.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def fit_one_batch(method: Any, batch: Any, opt: torch.optim.Optimizer, steps: int) -> list[tuple[float, dict[str, float]]]:
    """`steps` optimiser steps of method.training_loss on one batch: each step's (loss, logs)."""
    history = []
    for _ in range(steps):
        out = method.training_loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append((out.loss.item(), {k: float(v) for k, v in out.logs.items()}))
    return history


def shared_data(sub: str) -> Path:
    """`<repo>/../shared/<sub>` (the shared captions and specs next to the checkout), found from here.

    Missing: the test FAILS when CI=true (a real-data test must not pass silently by skipping
    there), and skips with the path in the reason elsewhere.
    """
    path = Path(__file__).resolve().parents[1].parent / "shared" / sub
    if not path.exists():
        msg = f"shared data not found: {path} (expected ../shared next to the repository root)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


# A tiny open_clip architecture (vision: width 32, 2 layers, patch 16 on 32 px; text: width 32, 2 layers,
# 16 tokens) for tests that build, save and reload open_clip towers.
TINY_OPENCLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def one_caption_context(tmp_path: Path) -> Any:
    """A MethodContext with one training caption: enough for methods whose towers need no vocabulary."""
    import numpy as np

    from rsbench.methods.base import MethodContext

    return MethodContext(train_captions=["a plane"], train_cap2img=np.zeros(1, dtype=np.int64), cache_dir=tmp_path)


def paired_step(model: Any, captions: list[str], size: int = 64) -> Any:
    """One training loss on 8 pairs (4 random images, each twice, with consecutive captions), backwarded."""
    import torch

    from rsbench.contracts import Batch

    images = torch.randn(4, 3, size, size).repeat_interleave(2, 0)
    batch = Batch(images=images, text=model.tokenizer()(captions), image_ids=torch.arange(8) // 2,
                  caption_ids=torch.arange(8))
    out = model.training_loss(batch)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    return out



def sigint_reaches_children() -> None:
    """Call before starting a `bench` process a test sends Ctrl-C. A suite started in the background
    (`nohup ... &`) runs with SIGINT ignored, and a child inherits an ignored signal across exec (Python then
    installs no KeyboardInterrupt); a handled one is reset to the default instead."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def start_bench(argv: list[str], env: dict[str, str], wait: bool) -> Any:
    """A `bench` command in a real process: waited for (CompletedProcess, 10 min at most), or left running
    (Popen, its output piped) for a test that signals or kills it."""
    import subprocess

    if not wait:
        sigint_reaches_children()
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
