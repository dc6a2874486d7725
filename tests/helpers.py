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
