"""Timing of the training step for the GPU check (rsbench.benchmarks.gpu): each method's `paper` preset at
its paper batch size and image size, on synthetic data, through the engine's own Trainer and optimiser step
(engine.train: start_training, attach_train_data, the step train_one_epoch runs), so the numbers are those
of `bench run`, not of a copy of it.

A setting is (method, precision, channels_last, compile). Each step is timed in two parts: the data wait
(from the end of the previous step until the DataLoader hands over the next batch) and the compute (the
optimiser step, closed by a device synchronize). The budget: every setting gets an equal share of the
time left; after the warm-up and a few probe steps the measured steps are cut to what fits its share
(`plan_steps`, a pure function).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PROBE_STEPS = 5  # measured steps before the step count is cut to the budget


@dataclass(frozen=True)
class Setting:
    """One timed configuration of one method."""

    method: str
    precision: str  # train.precision: fp32 | bf16
    channels_last: bool
    compile: bool = False


@dataclass
class Timing:
    """What one setting measured (per-step times in seconds)."""

    setting: Setting
    batch_size: int = 0
    image_size: int = 0
    steps: int = 0
    waits: list[float] = field(default_factory=list)
    computes: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    setup_s: float = 0.0
    note: str = ""

    @property
    def images_per_s(self) -> float:
        total = sum(self.waits) + sum(self.computes)
        return self.batch_size * len(self.computes) / total if total > 0 else 0.0


def settings_for(methods: list[str], compile_too: bool) -> list[Setting]:
    """fp32 and bf16 with channels_last (the engine's default for CNNs), bf16 without it; with
    `compile_too`, bf16 + channels_last compiled, last (its compilation time is the least predictable)."""
    rows = [Setting(m, p, cl) for m in methods for p, cl in (("fp32", True), ("bf16", True), ("bf16", False))]
    return rows + ([Setting(m, "bf16", True, True) for m in methods] if compile_too else [])


def setting_share(budget_s: float, elapsed_s: float, settings_left: int, reserve_s: float) -> float:
    """The seconds the next setting may take: an equal part of what is left of the budget after the reserve."""
    return max(0.0, budget_s - elapsed_s - reserve_s) / max(1, settings_left)


def plan_steps(requested: int, done: int, share_s: float, spent_s: float, step_s: float) -> int:
    """How many measured steps a setting runs in all: the `done` probe steps plus as many more as fit
    in what is left of its share at `step_s` seconds each, at most `requested`, never fewer than `done`."""
    if step_s <= 0:
        return max(done, requested)
    more = int(max(0.0, share_s - spent_s) // step_s)
    return max(done, min(requested, done + more))


def timing_overrides(method: str, setting: Setting, text_folder: Path | None, tiny: bool) -> dict[str, Any]:
    """--set keys of a timed cell: random weights (none can be downloaded offline), the setting's precision,
    channels_last and compile; a bert-base-uncased text tower (MSA) from `text_folder`; tiny sizes on CPU."""
    from ..config.overlay import has_key
    from ..methods.registry import get_method_spec

    model = get_method_spec(method).config_cls()
    keys: dict[str, Any] = {"train.precision": setting.precision, "train.channels_last": setting.channels_last,
                            "train.compile": setting.compile}
    for k in ("pretrained", "text_pretrained"):
        if has_key(model, k):
            keys[k] = False
    if text_folder is not None and has_key(model, "text_model") and (tiny or _bert_base_text(method)):
        keys["text_model"] = str(text_folder)
    if tiny:
        keys.update({"train.image_size": 32, "train.resize": 36, "train.batch_size": 8, "train.num_workers": 0})
        tiny_model = {"backbone": "test_resnet", "embed_dim": 32, "hidden_dim": 32, "word_dim": 16, "num_heads": 4}
        keys.update({k: v for k, v in tiny_model.items() if has_key(model, k)})
    return keys


def _bert_base_text(method: str) -> bool:
    """The paper preset's text model is bert-base-uncased (a download): built here from its architecture."""
    from ..methods.registry import get_method_spec

    return get_method_spec(method).presets.get("paper", {}).get("text_model") == "bert-base-uncased"


BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
BERT_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def shaped_text_model(folder: Path, tiny: bool) -> Path:
    """A transformers folder with a BERT-base-shaped config (tiny: a 2-layer BERT) and the shipped MiniLM's
    uncased WordPiece tokenizer (bert-base-uncased's 30,522-token vocabulary), without weights: the
    architecture bert-base-uncased has, built with random weights (text_pretrained=false) offline."""
    import json

    from ..io import write_bytes, write_text
    from ..methods.components.hf_text import minilm_dir, verify_minilm

    src = minilm_dir()
    verify_minilm(src)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    config.update({"architectures": ["BertModel"], "model_type": "bert", **(BERT_TINY if tiny else BERT_BASE)})
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "config.json", json.dumps(config, indent=1))
    for name in TOKENIZER_FILES:
        write_bytes(folder / name, (src / name).read_bytes())
    return folder


def timing_config(method: str, setting: Setting, text_folder: Path | None, tiny: bool) -> Any:
    """The resolved RunConfig of a timed cell: the paper preset plus `timing_overrides`."""
    from ..config.resolve import resolve_config

    return resolve_config(method, "synthetic", 0, "paper",
                          overrides=timing_overrides(method, setting, text_folder, tiny))


def endless_batches(tr: Any) -> Iterator[Any]:
    """Training batches epoch after epoch, each epoch seeded and loaded as train_one_epoch loads it
    (drop_last: every batch full, so a compiled step sees one shape)."""
    from ..engine.device import make_loader
    from ..engine.train import epoch_seed, seed_everything

    t, epoch = tr.cfg.train, 0
    if len(tr.pairs) < t.batch_size:
        raise ValueError(f"{len(tr.pairs)} training pairs, fewer than one batch of {t.batch_size}")
    while True:
        seed_everything(epoch_seed(tr.cfg.seed, epoch))
        if hasattr(tr.pairs, "set_epoch"):
            tr.pairs.set_epoch(epoch)
        yield from make_loader(tr.pairs, t.batch_size, True, tr.collate, tr.workers, tr.device,
                               epoch_seed(tr.cfg.seed, epoch), drop_last=True)
        epoch += 1


def build_trainer(cfg: Any, data: Any, device: torch.device, cell: Path) -> Any:
    """The engine's Trainer of this config (method, optimiser, scaler, loader pieces), as run_cell builds it."""
    from ..engine.cell import build_method
    from ..engine.device import pick_precision
    from ..engine.train import attach_train_data, seed_everything, start_training

    seed_everything(cfg.seed)
    precision = pick_precision(cfg.train.precision, device)
    method = build_method(cfg, data, device)
    tr = start_training(cfg, method, device, precision, cell, False, lambda _msg: None)
    attach_train_data(tr, data.train, None)
    tr.method.train()
    return tr


def sync_for(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def run_steps(tr: Any, timing: Timing, warmup: int, requested: int, share_s: float, t_start: float) -> None:
    """Warm-up steps, PROBE_STEPS measured ones, then as many as fit the share (`plan_steps`)."""
    from ..engine.train import optimiser_step  # the step train_one_epoch runs (forward, backward, step)

    sync, batches = sync_for(tr.device), endless_batches(tr)
    target, i = requested, 0
    t_end = time.perf_counter()
    while i < warmup + target:
        batch = next(batches)
        t_got = time.perf_counter()
        optimiser_step(tr, batch, 0, i)
        sync()
        t_done = time.perf_counter()
        if i >= warmup:
            timing.waits.append(t_got - t_end)
            timing.computes.append(t_done - t_got)
        i, t_end = i + 1, t_done
        if i == warmup + min(PROBE_STEPS, requested):
            step_s = statistics.median(w + c for w, c in zip(timing.waits, timing.computes))
            target = plan_steps(requested, i - warmup, share_s, t_done - t_start, step_s)
            if target < requested:
                timing.note = f"steps cut from {requested} to {target} to fit the budget"
    timing.steps = len(timing.computes)


def time_setting(setting: Setting, data: Any, device: torch.device, work: Path, text_folder: Path | None,
                 tiny: bool, warmup: int, requested: int, share_s: float) -> Timing:
    """Build the setting's cell and time its steps; peak device memory from a reset counter (CUDA)."""
    t_start = time.perf_counter()
    cfg = timing_config(setting.method, setting, text_folder, tiny)
    timing = Timing(setting, cfg.train.batch_size, cfg.train.image_size)
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cell = work / "cells" / f"{setting.method}-{setting.precision}-{int(setting.channels_last)}-{int(setting.compile)}"
    tr = build_trainer(cfg, data, device, cell)
    timing.setup_s = time.perf_counter() - t_start
    try:
        run_steps(tr, timing, warmup, requested, share_s, t_start)
        if device.type == "cuda":
            timing.peak_bytes = torch.cuda.max_memory_allocated(device)
    finally:
        del tr
        _free(device)
    return timing


def _free(device: torch.device) -> None:
    """Drop the previous setting's model and optimiser before the next one is measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "torch._dynamo" in sys.modules:  # only once something was compiled (importing it takes seconds)
        torch._dynamo.reset()  # compiled graphs of the previous model
