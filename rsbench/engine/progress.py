"""Progress and time of a run: the whole-run line between cells, a cell's estimate, bars that end at 100 %.

The remaining time of a grid is computed from the epochs trained so far in this process: seconds per
epoch (their mean) and per-cell overhead (model build, test evaluation; the least seen, as one-time
costs land in the first cell) of the same method on the same dataset,
else of the same method, else of every cell (methods differ by 100x, so the most specific is used).
Skipped, busy and failed cells count as done and add nothing to the rates; cells that will be
skipped (complete) add nothing to the remaining time; a resumed cell adds only its epochs left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

# tqdm's rate is an exponential moving average over display updates (at most one per 0.1 s) with this
# weight on the newest; tqdm's default 0.3 follows the last ~3 updates, so one slow batch (a data
# worker stall, a validation) swings the ETA by 2x. 0.05 averages over ~20 updates.
BAR_SMOOTHING = 0.05


class Bar(tqdm):  # type: ignore[misc]
    """A progress bar cleared when done (leave=False) that draws its last step first, so that it ends at
    100 %: tqdm redraws at most every 0.1 s, and a bar cleared on close never showed its final count."""

    def __init__(self, iterable: Iterable[Any] | None = None, desc: str = "", show: bool = True,
                 **kw: Any) -> None:
        kw.setdefault("smoothing", BAR_SMOOTHING)
        super().__init__(iterable, desc=desc, disable=not show, leave=False, **kw)

    def close(self) -> None:
        if not self.disable and not getattr(self, "_closed", False):
            self._closed = True
            if self.total is not None and self.n >= self.total:
                self.refresh()  # the final count, drawn once before the bar is cleared
        super().close()


def print_beside_bars(log: Callable[[str], Any], msg: str) -> None:
    """One log line while a bar may be on screen: the bars are cleared first and redrawn after."""
    with tqdm.external_write_mode():
        log(msg)


def format_duration(seconds: float) -> str:
    """45s, 2m10s, 1h05m: short enough for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class CellTime:
    """What one cell run in this process took: epochs trained now (not before a resume), their
    seconds (train_log.csv's, validation included) and the cell's wall time."""

    method: str
    dataset: str
    epochs: int
    train_s: float
    wall_s: float


@dataclass(frozen=True)
class CellWork:
    """A cell still to run: its method, dataset and the epochs it will train (0: evaluation only)."""

    method: str
    dataset: str
    epochs: int


def _groups(done: Sequence[CellTime], method: str, dataset: str) -> list[list[CellTime]]:
    """The cells to estimate from, most specific first: same method and dataset, same method, all."""
    return [[c for c in done if (c.method, c.dataset) == (method, dataset)],
            [c for c in done if c.method == method],
            list(done)]


def _overhead(cells: Sequence[CellTime]) -> float:
    """A cell's seconds besides its epochs (build, test evaluation): the least of `cells`, since one-time
    costs (imports, the vocabulary, first-call kernel set-up) land in the run's first cell only."""
    return min(max(0.0, c.wall_s - c.train_s) for c in cells)


def cell_rates(done: Sequence[CellTime], method: str, dataset: str) -> tuple[float, float] | None:
    """(seconds per epoch, seconds per cell besides its epochs) for a cell of `method` on `dataset`,
    each from the most specific group of finished cells that has it; None when no epoch was trained."""
    per_epoch = overhead = None
    for cells in _groups(done, method, dataset):
        epochs = sum(c.epochs for c in cells)
        if per_epoch is None and epochs > 0:
            per_epoch = sum(c.train_s for c in cells) / epochs
        if overhead is None and cells:
            overhead = _overhead(cells)
    if per_epoch is None or overhead is None:
        return None
    return per_epoch, overhead


def eta_seconds(left: Sequence[CellWork], done: Sequence[CellTime]) -> float | None:
    """Seconds the cells `left` will take at the rates of the cells `done`; None when unknown."""
    total = 0.0
    for w in left:
        rates = cell_rates(done, w.method, w.dataset)
        if rates is None:
            if w.epochs > 0 or not done:
                return None
            rates = (0.0, _overhead(done))
        total += rates[1] + w.epochs * rates[0]
    return total


@dataclass
class RunClock:
    """The whole run's progress: cells finished (however they ended) and what the trained ones took."""

    total: int
    parallel: int = 1  # cells run at once (bench run --jobs): the time left is shared among them
    start: float = field(default_factory=time.monotonic)
    finished: int = 0
    done: list[CellTime] = field(default_factory=list)

    def cell_finished(self, took: CellTime | None) -> None:
        """A cell ended; `took` is None when it did not train here (skipped, busy, failed)."""
        self.finished += 1
        if took is not None:
            self.done.append(took)

    def line(self, left: Sequence[CellWork], now: float | None = None) -> str:
        """`[3/8 cells | 2m10s elapsed | ~4m00s left]`, printed between cells."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        parts = [f"{self.finished}/{self.total} cells", f"{format_duration(elapsed)} elapsed"]
        if self.finished < self.total:
            eta = eta_seconds(left, self.done)
            if eta is not None and left:
                eta /= min(self.parallel, len(left))
            parts.append("time left: known after the first trained cell" if eta is None
                         else f"~{format_duration(eta)} left")
        return "[" + " | ".join(parts) + "]"

    def cell_estimate(self, work: CellWork) -> str | None:
        """A cell's estimated time from earlier cells of its method on its dataset in this run, or None."""
        same = [c for c in self.done if (c.method, c.dataset) == (work.method, work.dataset)]
        rates = cell_rates(same, work.method, work.dataset)
        if rates is None and same and work.epochs == 0:
            rates = (0.0, _overhead(same))
        if rates is None:
            return None
        n = len(same)
        return (f"  estimated {format_duration(rates[1] + work.epochs * rates[0])} for {work.epochs} epoch(s) "
                f"and the evaluation (from {n} earlier {work.method} cell{'s' if n > 1 else ''} on "
                f"{work.dataset} in this run)")


def steps_estimate(step_s: float, steps_per_epoch: int, epochs_left: int, first: int, last: int) -> str:
    """The line a cell prints when no earlier cell of its kind ran: training time from timed steps."""
    return (f"  estimated {format_duration(step_s * steps_per_epoch * epochs_left)} of training for "
            f"{epochs_left} epoch(s) (timed over steps {first}-{last} of {steps_per_epoch}; validation "
            "and test not included)")
