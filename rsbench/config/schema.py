"""The config schema: TrainConfig and RunConfig, and the checks every resolved value passes.

The dotted-key overlay (`--set`, presets, config files) is config/overlay.py.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, is_dataclass
from typing import Any

from ..contracts import require_above, require_at_least
from ..errors import UserError, suggest
from .overlay import field_map, fill, is_optional, strip_optional


@dataclass
class TrainConfig:
    """Optimisation and data-pipeline settings shared by every method."""

    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int = 256
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 2e-4
    weight_decay: float = 0.0
    lr_step: int = 0  # multiply the lr by lr_gamma every lr_step epochs (0: constant)
    lr_gamma: float = 0.1
    warmup_steps: int = 0  # lr rises linearly over this many optimiser steps, then the schedule (0: off)
    grad_clip: float = 2.0  # max grad norm (0: off)
    image_size: int = 224
    resize: int = 0  # resize before the random crop (0: about image_size * 1.09)
    augment: str = "crop,flip"  # comma list of crop, flip, rotate ('' or 'none': off)
    sampling: str = "caption"  # caption: every caption once per epoch; image: one random caption per image
    num_workers: int = -1  # -1: sized to the machine
    precision: str = "default"  # default = auto (bf16 on a GPU, and on a CPU with native bf16; else fp32) | fp32 | bf16 | fp16
    compile: bool = False
    channels_last: bool = True  # for CNN backbones
    image_cache: bool = False  # decode+resize images once into a memory-mapped uint8 array
    val_every: int = 1
    patience: int = 0  # stop after this many validations without improvement (0: off)
    select_metric: str = "mR"  # validation metric used to select the checkpoint (never test)
    keep_last: bool = False  # keep checkpoint/last.pt (resume state) once the cell is complete
    checkpoint_every_s: float = 60.0  # last.pt + best at the first epoch end this long after the last (0: every epoch)
    tensorboard: bool = False  # per-epoch loss, lr and val metrics in <cell>/tensorboard/ (needs tensorboard)

    def validate(self) -> None:
        """Ranges and choices the runner relies on, checked at resolution so a bad value fails before
        any data is loaded (not after an epoch). The type-level checks are in check_fields()."""
        from ..evaluation.metrics import METRIC_DIRECTION

        require_at_least(self, "train.", {"epochs": 0, "batch_size": 2, "eval_batch_size": 1, "image_size": 16,
                                          "val_every": 1, "num_workers": -1,
                                          "checkpoint_every_s": 0})
        require_above(self, "train.", ("lr",))
        choices = {"optimizer": ("adam", "adamw", "sgd"), "sampling": ("caption", "image"),
                   "precision": PRECISIONS, "select_metric": tuple(METRIC_DIRECTION)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"train.{key} '{getattr(self, key)}'{suggest(getattr(self, key), allowed)} "
                                f"not in {', '.join(allowed)}")
        parse_augment(self.augment)
        check_tensorboard(self.tensorboard)

    @property
    def augments(self) -> frozenset[str]:
        """The training augmentations as a set (what datasets.torchdata.build_transform takes)."""
        return parse_augment(self.augment)


AUGMENTS = ("crop", "flip", "rotate")
PRECISIONS = ("default", "auto", "fp32", "bf16", "fp16")


def parse_augment(augment: str) -> frozenset[str]:
    """'crop,flip' -> {'crop', 'flip'}; '' / 'none' -> empty; unknown names are a UserError.

    The one check of train.augment: run by TrainConfig.validate at resolution, before any data loads.
    """
    items = {a.strip().lower() for a in (augment or "").split(",") if a.strip()}
    items.discard("none")
    bad = items - set(AUGMENTS)
    if bad:
        raise UserError(f"bad train.augment '{augment}': unknown {', '.join(sorted(bad))}; "
                        "use a comma list of crop, flip, rotate (or 'none')")
    return frozenset(items)


def check_tensorboard(on: bool) -> None:
    """train.tensorboard=true needs the package: say so at resolution, not after the data has loaded.
    find_spec does not import it (nothing of tensorboard is loaded while the option is off)."""
    import importlib.util

    if on and importlib.util.find_spec("tensorboard") is None:
        raise UserError("train.tensorboard=true needs the tensorboard package, which is not installed: "
                        "pip install tensorboard (or pip install 'rsbench[tensorboard]')")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _check_field(key: str, value: Any, tp: Any, default: Any) -> None:
    """None only where the type allows it; numbers are finite, not bools, and not negative when the
    default is not (a negative default such as -1 is a sentinel and is the lowest value allowed)."""
    if value is None:
        if not is_optional(tp) and tp is not Any:
            raise UserError(f"{key}: a value is required, got none")
        return
    tp = strip_optional(tp)
    if tp not in (int, float):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{key}: must be a finite number, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        low = min(default, 0)
        if value < low:
            raise UserError(f"{key} must be >= {low:g}, got {value!r}")


def check_fields(obj: Any, prefix: str = "") -> None:
    """Type-level checks of every field of a (nested) config dataclass, then its own validate()."""
    fmap = field_map(obj)
    for name, f in fmap.items():
        value = getattr(obj, name)
        if is_dataclass(value):
            check_fields(value, f"{prefix}{name}.")
        else:
            _check_field(prefix + name, value, f.type, _field_default(f))
    if hasattr(obj, "validate"):
        obj.validate()


@dataclass
class RunConfig:
    """Everything one (method, dataset, seed) cell needs; written as config.json in the cell folder."""

    method: str
    dataset: str
    seed: int = 0
    preset: str = "small"
    train: TrainConfig = field(default_factory=TrainConfig)
    model: Any = None  # the method's own config dataclass
    display_name: str = ""  # `--set display_name=...`: the name tables and figures print ("" = the method's own)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Rebuild a RunConfig from `to_dict(cfg)` (what a submitit job receives)."""
        from ..methods.registry import get_method_spec

        spec = get_method_spec(d["method"])
        return cls(method=d["method"], dataset=d["dataset"], seed=int(d["seed"]), preset=d["preset"],
                   train=fill(TrainConfig(), d.get("train") or {}),
                   model=fill(spec.config_cls(), d.get("model") or {}), display_name=str(d.get("display_name") or ""))
