"""Grid-level options: `data.*` and `eval.*` keys take one value per run, not one per cell.

They say which data the grid loads (`data.val_split`) and what else is measured on test
(`eval.exclude`), so they never enter a cell's config.json: the data fingerprint (data.json)
records the val split, and the exclusion is written beside the standard metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, suggest

GRID_KEYS = ("data.val_split", "eval.exclude")
GRID_GROUPS = ("data", "eval")


@dataclass(frozen=True)
class GridOptions:
    """The grid-level values of one `bench run` (None: not given)."""

    val_split: Path | None = None
    exclude: Path | None = None


def _is_grid_key(key: str) -> bool:
    return key.partition(".")[0] in GRID_GROUPS


def _file_value(key: str, value: Any, where: str) -> Path | None:
    """A path option: the file must exist (relative paths are taken from the current folder)."""
    text = str(value).strip() if value is not None else ""
    if not text or text.lower() in ("none", "null"):
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"{key}={text} (in {where}): file not found")
    return path


def split_grid_keys(file_keys: dict[str, Any], overrides: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, Any], GridOptions]:
    """(cell file keys, cell --set keys, the grid options): `--set` wins over the config file;
    an unknown `data.*`/`eval.*` key is a one-line error with a suggestion."""
    values: dict[str, tuple[Any, str]] = {}
    for keys, where in ((file_keys, "config file"), (overrides, "--set")):
        for k, v in keys.items():
            if not _is_grid_key(k):
                continue
            if k not in GRID_KEYS:
                raise UserError(f"unknown option '{k}' in {where}{suggest(k, GRID_KEYS)}; "
                                f"grid-level options: {', '.join(GRID_KEYS)}")
            values[k] = (v, where)
    opts = GridOptions(**{k.partition(".")[2]: _file_value(k, *values[k])
                          for k in values})
    rest = ({k: v for k, v in file_keys.items() if not _is_grid_key(k)},
            {k: v for k, v in overrides.items() if not _is_grid_key(k)})
    return rest[0], rest[1], opts
