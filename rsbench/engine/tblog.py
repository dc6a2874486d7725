"""train.tensorboard: the per-epoch scalars of train_log.csv (and every val metric) as TensorBoard events.

Steps are 1-based epochs. Rank 0 writes, into <cell>/tensorboard/. A resumed cell opens its writer with
purge_step = the first epoch it trains, so events of epochs a kill left after last.pt are hidden and
TensorBoard shows each epoch once. The package is imported only when the option is on (checked at
config resolution: config.schema.TrainConfig.validate).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..results.layout import TENSORBOARD_DIR


def open_writer(cell: Path, resumed_from: int | None) -> Any:
    """A SummaryWriter on <cell>/tensorboard/ (purging epochs > `resumed_from` when resuming)."""
    from torch.utils.tensorboard import SummaryWriter

    purge = resumed_from + 1 if resumed_from is not None else None
    return SummaryWriter(log_dir=str(cell / TENSORBOARD_DIR), purge_step=purge)


def write_epoch(writer: Any, row: dict[str, Any], val_metrics: dict[str, Any] | None) -> None:
    """One epoch: train/loss and train/lr (the train_log.csv row), val/<metric> for every numeric val metric."""
    step = int(row["epoch"])
    writer.add_scalar("train/loss", float(row["loss"]), step)
    writer.add_scalar("train/lr", float(row["lr"]), step)
    for k, v in (val_metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            writer.add_scalar(f"val/{k}", float(v), step)
    writer.flush()  # an epoch's events are on disk before its last.pt (a kill loses nothing a resume keeps)
