"""Precision (#20): `train.precision` / `--precision`, CPU bf16 where the CPU has it natively, channels_last
for CNNs on CPU, and old cells (written with `train.amp`) still resuming under the new key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from rsbench.errors import UserError

CPU = torch.device("cpu")
TINY_SET = {"train.sampling": "image", "train.image_size": "32", "backbone": "test_resnet", "embed_dim": "32",
            "hidden_dim": "32", "word_dim": "16"}

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_native_bf16_is_read_from_the_cpu_flags():
    from rsbench.engine.device import cpu_has_native_bf16

    assert cpu_has_native_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert cpu_has_native_bf16(frozenset({"amx_tile", "amx_bf16"}))
    assert not cpu_has_native_bf16(frozenset({"avx2", "avx512f", "avx512bw"}))  # emulated bf16: slower, not used


@pytest.mark.parametrize("choice,native,expected", [
    ("default", True, "bf16"),  # default = auto: bf16 autocast where the CPU has it natively, as on GPU
    ("default", False, "fp32"),
    ("fp32", True, "fp32"),
    ("auto", True, "bf16"),
    ("auto", False, "fp32"),
    ("bf16", False, "bf16"),  # asked for explicitly: emulated, but honoured
])
def test_precision_on_cpu(choice, native, expected):
    from rsbench.engine.device import pick_precision

    p = pick_precision(choice, CPU, native_bf16=native)
    assert p.name == expected and not p.use_scaler


def test_fp16_on_cpu_is_a_one_line_error():
    from rsbench.engine.device import pick_precision

    with pytest.raises(UserError, match=r"^train.precision=fp16 needs a CUDA device"):
        pick_precision("fp16", CPU, native_bf16=True)


def test_unknown_precision_is_refused_at_resolution():
    from rsbench.config.resolve import resolve_config

    assert resolve_config("vsepp", "synthetic").train.precision == "default"
    with pytest.raises(UserError, match=r"^train.precision 'bf32'.*not in default, auto, fp32, bf16, fp16"):
        resolve_config("vsepp", "synthetic", overrides={"train.precision": "bf32"})


def test_channels_last_for_cnns_on_cpu_too():
    from rsbench.config.schema import TrainConfig
    from rsbench.engine.device import use_channels_last

    class Cnn:
        is_cnn = True

    class Vit:
        is_cnn = False

    assert use_channels_last(Cnn(), TrainConfig(), CPU)
    assert not use_channels_last(Vit(), TrainConfig(), CPU)
    assert not use_channels_last(Cnn(), TrainConfig(channels_last=False), CPU)


def test_a_cell_written_with_train_amp_matches_the_same_setting_under_train_precision():
    """Cells written before the rename hold train.amp: auto meant what `default` means now, off fp32."""
    from rsbench.config.resolve import resolve_config
    from rsbench.engine.cellfolder import config_differences, config_record

    cfg = resolve_config("vsepp", "synthetic")
    old = config_record(cfg)
    old["train"]["amp"] = old["train"].pop("precision").replace("default", "auto")
    assert config_differences(old, config_record(cfg)) == []
    old["train"]["amp"] = "off"
    diffs = config_differences(old, config_record(cfg))
    assert diffs == ["train.precision: 'fp32' in the cell, 'default' now"]


def _run(tmp_path: Path, syn: Path, capsys, *extra: str) -> dict:
    sets = [a for k, v in TINY_SET.items() for a in ("--set", f"{k}={v}")]
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn),
                            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path),
                            *sets, *extra], capsys)
    assert code == 0, err
    cell = tmp_path / "synthetic" / "vsepp" / "seed0"
    return {"run": json.loads((cell / "run.json").read_text()), "metrics": json.loads((cell / "metrics.json").read_text()),
            "config": json.loads((cell / "config.json").read_text())}


def test_cli_precision_bf16_is_recorded_and_deterministic(tmp_path, tiny_synthetic, capsys):
    """--precision bf16 trains under CPU bf16 autocast, says so in run.json, and repeats exactly."""
    a = _run(tmp_path / "a", tiny_synthetic, capsys, "--precision", "bf16")
    b = _run(tmp_path / "b", tiny_synthetic, capsys, "--precision", "bf16")
    assert a["run"]["precision"] == "bf16" and a["config"]["train"]["precision"] == "bf16"
    assert a["metrics"]["mR"] == b["metrics"]["mR"] and a["metrics"]["val"] == b["metrics"]["val"]
    c = _run(tmp_path / "c", tiny_synthetic, capsys, "--precision", "fp32")
    assert c["run"]["precision"] == "fp32"
