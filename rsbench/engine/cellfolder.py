"""What the engine records in a cell folder and checks against it before a cell is skipped or resumed.

config.json and data.json say which config and which data a cell was started with: a cell to skip
or resume must match both, or its numbers would be labelled with an experiment they do not come
from. Clearing a cell renames it away first, so a kill never leaves a half-deleted cell under the real
name. File names come from rsbench.results.layout; the failure marker is results.cell's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..io import read_json_object, remove_tree_atomically
from ..results.layout import CHECKPOINT_DIR, CONFIG_FILE, DATA_FILE, RESUME_FILE

if TYPE_CHECKING:
    from ..config.schema import RunConfig
    from ..contracts import DatasetSplits, Split

# Options that change how fast a cell runs, not what it computes: a resumed cell may change them.
# (num_workers changes which random stream feeds the augmentations; see docs/bad_inputs.md.)
IGNORED_ON_RESUME = frozenset({"train.num_workers", "train.eval_batch_size", "train.compile", "display_name",
                               "train.keep_last", "train.tensorboard", "train.checkpoint_every_s"})


class ConfigMismatch(UserError):
    """The cell on disk was started with another config; resuming it would mix two experiments."""


class DataMismatch(UserError):
    """The cell on disk was trained or scored on other data; resuming or skipping it would mislabel a result."""


# ---- the config a cell was started with ----------------------------------------------------------

def config_record(cfg: RunConfig) -> dict[str, Any]:
    """What config.json holds for a trained cell (display_name: the override, else the method's own)."""
    from ..config.overlay import to_dict
    from ..methods.registry import get_method_spec

    shown = cfg.display_name or get_method_spec(cfg.method).display_name(cfg.model)
    return {**to_dict(cfg), "display_name": shown, "external": False}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old in the cell, new now' for every result-changing key that differs."""
    from ..config.overlay import flatten

    missing = object()
    a = _renamed_keys(flatten(old))
    b = flatten(json.loads(json.dumps(new, default=str)))
    out = []
    for k in sorted((set(a) | set(b)) - IGNORED_ON_RESUME):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            out.append(f"{k}: {'(absent)' if va is missing else repr(va)} in the cell, "
                       f"{'(absent)' if vb is missing else repr(vb)} now")
    return out


_OLD_AMP = {"auto": "default", "off": "fp32", "bf16": "bf16", "fp16": "fp16"}


def _renamed_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """Cells written before #20 hold train.amp; its values meant what train.precision's do now."""
    if "train.amp" in flat and "train.precision" not in flat:
        amp = flat.pop("train.amp")
        flat["train.precision"] = _OLD_AMP.get(amp, amp)
    return flat


def check_cell_config(cell: Path, cfg: RunConfig) -> None:
    """Refuse (ConfigMismatch) when the cell's config.json differs from `cfg` in a result-changing key."""
    path = cell / CONFIG_FILE
    if not path.is_file():
        if (cell / CHECKPOINT_DIR / RESUME_FILE).exists():
            raise ConfigMismatch(f"{cell} has a resume checkpoint but no {CONFIG_FILE}, so its config is "
                                 "unknown; pass --overwrite to discard it and start again")
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigMismatch(f"{path}: unreadable config of an existing cell; pass --overwrite to discard "
                             "the cell and start again") from None
    diffs = config_differences(old if isinstance(old, dict) else {}, config_record(cfg))
    if diffs:
        more = f"; and {len(diffs) - 2} more" if len(diffs) > 2 else ""
        raise ConfigMismatch(f"{cell} was started with a different config ({'; '.join(diffs[:2])}{more}); "
                             "pass --overwrite to discard it and start again, or use another --out")


# ---- the data a cell was started on --------------------------------------------------------------

def split_digest(split: Split) -> str:
    """sha256 over a split's image names, captions and caption->image map: which queries it scores."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps([list(split.image_names), list(split.captions),
                         [int(i) for i in split.cap2img]]).encode("utf-8"))
    return h.hexdigest()


def data_record(data: DatasetSplits) -> dict[str, Any]:
    """What data.json holds: the dataset fingerprint, and digests of the val and test splits."""
    return {"dataset": data.name, "fingerprint": data.fingerprint, "val": split_digest(data.val),
            "test": split_digest(data.test)}


def _stored_data(cell: Path) -> dict[str, Any] | None:
    """The data identity recorded in the cell: data.json, else run.json (older or externally scored cells)."""
    from ..results.cell import read_run_record

    rec = read_json_object(cell / DATA_FILE)
    if rec is not None:
        return rec
    fp = ((read_run_record(cell) or {}).get("data") or {}).get("fingerprint")
    return {"fingerprint": fp} if fp else None


def check_cell_data(cell: Path, data: DatasetSplits) -> None:
    """Refuse (DataMismatch) to resume or skip a cell that was started on other data (fingerprint or val split)."""
    old = _stored_data(cell)
    if old is None:
        return
    new = data_record(data)
    for key, what in (("fingerprint", "data fingerprint"), ("val", "val split")):
        if key in old and old[key] != new[key]:
            raise DataMismatch(f"{cell} was started on other data ({what} {str(old[key])[:16]} in the cell, "
                               f"{new[key][:16]} now); pass --overwrite to discard it and start again, "
                               "or use another --out")


# ---- clearing ----------------------------------------------------------------------------------

def clear_cell(cell: Path) -> None:
    """Empty a cell folder (the caller holds its lock; the lock file lives outside the folder).

    io.remove_tree_atomically renames it to a hidden `.seed<k>.trash-*` sibling first, so a kill during
    the delete never leaves a half-deleted cell (say metrics.json without ranks.npz, or last.pt without
    its config.json) under the real name.
    """
    remove_tree_atomically(cell)
    cell.mkdir(parents=True, exist_ok=True)
