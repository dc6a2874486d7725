"""`zoo:<name>` methods: each published checkpoint of components/zoo_catalogue.py as its own method.

`bench run --methods zoo:remoteclip-vit-b-32 --set weights_dir=DIR` builds the entry's architecture with
the entry's activation, input size and mean/std, loads DIR/<its file> (checked at resolution, before any
data is loaded: a missing file is a one-line error naming what to download from where), and records
file, sha256, activation and preprocessing in run.json. Zero-shot by default (--epochs 0 in both
presets); fine-tune with the RET-2 recipe (tower_method.RET2_FINETUNE) through --epochs/--set or preset ret2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..contracts import require_above
from .base import MethodContext
from .components.clip_tower import build_zoo_tower
from .components.contrastive import check_same_image_mode
from .components.tower_method import RET2_FINETUNE, TowerMethod, set_temperature
from .components.weights import WeightNeed, local_path
from .components.zoo_catalogue import ZooEntry, find_weights, get_entry, zoo_entries
from .registry import register_method


@dataclass
class ZooConfig:
    """Options of every `zoo:*` method: where the weights are, and the fine-tuning loss's options."""

    weights_dir: str = ""  # folder holding the entry's file (see `bench models`)
    prompt: str = ""  # e.g. "a satellite image of" prepended to every caption ('' = off)
    same_image: str = "mask"  # mask | positive
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    strict: bool = True  # refuse a file with missing/unexpected/mis-shaped keys
    zoo_entry: ClassVar[str] = ""

    def validate(self) -> None:
        """Checked at resolution: the file must be there before any data is loaded."""
        require_above(self, "model.", ("max_logit_scale",))
        check_same_image_mode(self.same_image)
        find_weights(get_entry(self.zoo_entry), self.weights_dir)


class ZooMethod(TowerMethod):
    """Base of the generated zoo:* classes; `entry` is set per class."""

    config_cls: ClassVar[type] = ZooConfig
    entry: ClassVar[ZooEntry]

    @classmethod
    def required_weights(cls, config: ZooConfig) -> list[WeightNeed]:
        # checked at resolution (ZooConfig.validate): here only declared
        return [local_path(str(find_weights(get_entry(config.zoo_entry), config.weights_dir)), "weights_dir")]

    def __init__(self, config: ZooConfig, context: MethodContext):
        super().__init__(config, context)
        self.tower = build_zoo_tower(self.entry, config.weights_dir, config.strict)
        set_temperature(self.tower, config.learn_temperature)

    def image_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.entry.mean, self.entry.std  # the entry decides (the authors' preprocessing)

    def weight_provenance(self) -> dict[str, Any]:
        rec = self.tower.provenance()
        rec.update({"zoo": self.entry.name, "arch": self.entry.arch, "resize": self.entry.resize,
                    "mean": list(self.entry.mean), "std": list(self.entry.std),
                    "sha256_published": self.entry.sha256})
        return {"tower": rec}


def _presets(entry: ZooEntry) -> dict[str, dict[str, Any]]:
    zero_shot = {"train.epochs": 0, "train.batch_size": 64, "train.image_size": entry.image_size}
    return {"small": dict(zero_shot), "paper": dict(zero_shot),
            "ret2": {**RET2_FINETUNE, "train.image_size": entry.image_size}}


def _register(entry: ZooEntry) -> None:
    cfg_cls = type(f"ZooConfig_{entry.name}", (ZooConfig,), {"zoo_entry": entry.name, "__doc__": ZooConfig.__doc__})
    cls = type(f"Zoo_{entry.name}", (ZooMethod,), {"entry": entry, "config_cls": cfg_cls})
    register_method(entry.method_name, f"{entry.family} checkpoint {entry.files[0]} ({entry.arch or entry.loader}, "
                    f"{entry.activation}, {entry.image_size} px); zero-shot unless --epochs", _presets(entry),
                    display_name=f"{entry.family} ({entry.name})")(cls)


for _entry in zoo_entries():
    _register(_entry)


def resolve_zoo_method(name: str, weights_dir: str | Path) -> tuple[str, dict[str, Any]]:
    """`zoo:<entry>` + a weights folder -> (method name, --set overrides scoped to it); file checked now."""
    entry = get_entry(name)
    find_weights(entry, weights_dir)
    return entry.method_name, {f"{entry.method_name}.weights_dir": str(weights_dir)}
