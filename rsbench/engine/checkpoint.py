"""Checkpoints that never unpickle arbitrary objects.

best: `best.safetensors` (weights; its header metadata also holds the method name, epoch, val
metrics and the method's JSON text state, so weights and their description cannot disagree) and
`best.json` (the same description, for people and tools).
last: `last.pt` resume state (weights, optimiser, scheduler, log, the precision it was trained in...),
read with weights_only=True; a resume in another precision is refused (check_resume_precision).
Both written atomically; a tampered, truncated or foreign file is refused with a one-line error.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, one_line
from ..io import read_json, write_bytes, write_json, write_with

BEST_FILE = "best.safetensors"
BEST_META = "best.json"
BEST_FORMAT = "rsbench-best-v1"
RESUME_FORMAT = "rsbench-resume-v1"


# what torch.load raises on truncated or foreign files (pickle refusals are UnpicklingError)
_LOAD_ERRORS = (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError)


class CheckpointError(UserError):
    """A checkpoint file that cannot be used safely (tampered, truncated, foreign)."""


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights that later training steps do not change (the best so far, kept in memory)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_best(folder: Path, model: torch.nn.Module | dict[str, torch.Tensor], meta: dict[str, Any],
              method: str = "") -> None:
    """Write the selected weights (a module, or a `cpu_state` copy) with their description (`meta`: epoch,
    val, text_state)."""
    from safetensors.torch import save

    header = {"format": BEST_FORMAT, "method": method, "meta": json.dumps(meta)}
    weights = cpu_state(model) if isinstance(model, torch.nn.Module) else model
    write_bytes(folder / BEST_FILE, save(weights, metadata=header))
    write_json(folder / BEST_META, {"method": method, **meta})


def _open_best(path: Path, with_tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = dict(f.metadata() or {})
            names = list(f.keys()) if with_tensors else []
            tensors = {k: f.get_tensor(k) for k in names}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors checkpoint, truncated or corrupt "
                              f"({one_line(e, 160)})") from None
    return header, tensors


def _best_meta(folder: Path, header: dict[str, str], path: Path) -> dict[str, Any]:
    if "meta" in header:
        try:
            meta = json.loads(header["meta"])
        except ValueError:
            raise CheckpointError(f"{path}: unreadable metadata in the checkpoint header") from None
        return meta if isinstance(meta, dict) else {}
    meta = read_json(folder / BEST_META) if (folder / BEST_META).is_file() else {}
    return meta if isinstance(meta, dict) else {}


def best_epoch_on_disk(folder: Path) -> int | None:
    """Epoch recorded with best.safetensors (None when there is none); CheckpointError if unreadable."""
    path = folder / BEST_FILE
    if not path.exists():
        return None
    header, _ = _open_best(path, with_tensors=False)
    epoch = _best_meta(folder, header, path).get("epoch")
    return epoch if isinstance(epoch, int) else None


def load_best(folder: Path, model: torch.nn.Module, method: str = "") -> dict[str, Any]:
    """Load the selected weights into `model` (strictly) and return their description."""
    path = folder / BEST_FILE
    header, state = _open_best(path, with_tensors=True)
    owner = header.get("method")
    if method and owner and owner != method:
        raise CheckpointError(f"{path}: is a checkpoint of method '{owner}', not '{method}'")
    _load_strict(model, state, path)
    return _best_meta(folder, header, path)


def _load_strict(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: model state is not a dict of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "unknown mismatch"
        raise CheckpointError(f"{path}: checkpoint does not match the model ({detail[:200]})") from None


def save_resume(path: Path, state: dict[str, Any], method: str = "") -> None:
    """Write the resume state (tensors and plain containers only, so weights_only can read it)."""
    write_with(path, lambda f: torch.save({"format": RESUME_FORMAT, "method": method, **state}, f))


def load_resume(path: Path, method: str = "") -> dict[str, Any]:
    """Read last.pt with weights_only=True; refuse anything else with a one-line CheckpointError."""
    hint = "delete it, or pass --no-resume to train this cell from the start"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refusing to load resume state: it holds Python objects other than "
                              f"tensors and plain containers (tampered or not written by rsbench); "
                              f"{hint}") from None
    except _LOAD_ERRORS as e:
        raise CheckpointError(f"{path}: refusing to load resume state: truncated or not a torch checkpoint "
                              f"({one_line(e, 120)}); {hint}") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or "model" not in state:
        raise CheckpointError(f"{path}: not an rsbench resume checkpoint; {hint}")
    if method and state.get("method") != method:
        raise CheckpointError(f"{path}: resume state of method '{state.get('method')}', not '{method}'; "
                              f"{hint}")
    return state


def restore_model(model: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    _load_strict(model, state, path)


def check_resume_precision(path: Path, state: dict[str, Any], asked: str, setting: str, device: str,
                           run_precision: str | None = None) -> None:
    """Refuse (one line) to continue a resume state in another precision than it was trained in: the
    resume guarantee holds per precision, and a mixed run matches neither. Where last.pt predates the
    field: run.json's precision, else an explicit train.precision (fp32/bf16/fp16 always give themselves),
    else refuse, since default/auto depend on the machine that wrote it."""
    had, source = state.get("precision"), ""
    if not isinstance(had, str):
        had, source = run_precision, " (recorded in run.json)"
        if had is None and setting in ("fp32", "bf16", "fp16"):
            had, source = setting, ""
    if had is None:
        raise CheckpointError(f"{path}: resume state written before rsbench recorded precisions does not record "
                              f"its precision, and train.precision={setting} gives {asked} on {device} here, "
                              "which may differ; pass --no-resume to train this cell from the start")
    if had != asked:
        raise CheckpointError(f"{path}: resume state trained in {had}{source}, this run asks for {asked} "
                              f"(train.precision={setting} on {device}); a run must end in the precision it "
                              f"started in: resume it where train.precision={setting} gives {had}, or pass "
                              f"--no-resume to train this cell from the start in {asked}")
