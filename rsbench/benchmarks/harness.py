"""Measurement and reporting tools of the perf harness (rsbench.benchmarks.perf): side-by-side timing,
peak memory in a fresh child process, torch threads, the results table and the machine description.

The items (items_*.py) build their comparisons from these; perf.py's docstring says how they measure.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

GIB = 2**30
MIB = 2**20


# ---- measurement helpers -------------------------------------------------------------------------


@dataclass
class Timing:
    """Median wall time of `n` timed calls; `reused`: the only sample is the warm-up call itself."""

    median: float
    n: int
    reused: bool = False

    def __str__(self) -> str:
        return f"{fmt_seconds(self.median)} (n={self.n}{'*' if self.reused else ''})"


def fmt_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1.0:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class _Side:
    """One side of a comparison: warm-up, then up to `repeats` timed calls within `budget_s`.

    A call slower than the whole budget is timed once: its warm-up call is that sample (marked *).
    """

    def __init__(self, fn: Callable[[], Any], repeats: int, budget_s: float):
        self.fn = fn
        warm, self.out = _timed(fn)
        self.reused = warm > budget_s
        self.times = [warm] if self.reused else []
        self.n = 1 if self.reused else max(1, min(repeats, int(budget_s / max(warm, 1e-9))))

    def step(self) -> None:
        if len(self.times) < self.n:
            dt, self.out = _timed(self.fn)
            self.times.append(dt)

    def timing(self) -> Timing:
        return Timing(statistics.median(self.times), self.n, self.reused)


def side_by_side(ours: Callable[[], Any], reference: Callable[[], Any], repeats: int, budget_s: float
                 ) -> tuple[Timing, Timing, Any, Any]:
    """Warm up each side, then interleave timed calls; (ours, ref, ours' result, ref's result)."""
    a, b = _Side(ours, repeats, budget_s), _Side(reference, repeats, budget_s)
    for _ in range(max(a.n, b.n)):
        a.step()
        b.step()
    return a.timing(), b.timing(), a.out, b.out


def time_alone(fn: Callable[[], Any], repeats: int, budget_s: float) -> Timing:
    side = _Side(fn, repeats, budget_s)
    for _ in range(side.n):
        side.step()
    return side.timing()


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in bytes (empty where /proc is missing)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    out = {}
    for key in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
        if m:
            out[key] = int(m.group(1)) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(fn: Callable[[], Any], warmup: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run fn once; its wall time and the RSS peak it added (needs a fresh process to be fair).

    `warmup` (the same code on small inputs) runs first so that one-time lazy initialisation
    (BLAS buffers, kernel selection) is not counted.
    """
    import gc

    if warmup is not None:
        warmup()
    gc.collect()
    reset = reset_peak_rss()
    before = proc_status()
    dt, _ = _timed(fn)
    after = proc_status()
    if not before or not after:
        return {"seconds": dt, "peak_delta": None, "hwm": None, "rss_before": None, "reset": reset}
    return {"seconds": dt, "peak_delta": after["VmHWM"] - before["VmRSS"], "hwm": after["VmHWM"],
            "rss_before": before["VmRSS"], "reset": reset}


# glibc: a fixed mmap threshold (64 KiB) makes every tensor-sized allocation its own mapping, returned
# to the OS when freed, so RSS follows live memory (no freed-but-resident heap hiding a peak). Used
# to compare two algorithms' live memory (item 2); item 6 keeps the default allocator, as users do.
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_child(task: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Run one `--child` task in a fresh interpreter (same torch threads, `env` added to the environment);
    its JSON answer or {'error': ...}."""
    cmd = [sys.executable, "-m", "rsbench.benchmarks.perf", "--threads", str(torch.get_num_threads()),
           "--child", json.dumps(task)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fmt_mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / MIB:.0f} MiB"


# ---- the table ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table. `ok` is the identical-values check (None: no such check)."""

    item: str
    name: str
    ours: str
    reference: str = "-"
    ratio: str = "-"
    memory: str = "-"
    check: str = "-"
    target: str = "-"
    result: str = "-"  # PASS | FAIL | - (no target)
    ok: bool | None = None


COLUMNS = ("#", "item", "ours", "reference", "ratio", "peak memory", "check", "target", "result")


def md_row(cells: Sequence[Any]) -> str:
    """One markdown table row; a '|' inside a cell would split it, so it becomes '/'."""
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def format_table(rows: list[Row]) -> str:
    lines = [md_row(COLUMNS), "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append(md_row((r.item, r.name, r.ours, r.reference, r.ratio, r.memory, r.check, r.target, r.result)))
    return "\n".join(lines)


def verdict(*conditions: bool) -> str:
    return "PASS" if all(conditions) else "FAIL"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_description() -> dict[str, str]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = "n/a"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 2**20:.0f} GiB"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (no GPU in this session)"
    return {
        "CPU": f"{cpu_model()} ({cpus} cores usable, {os.cpu_count()} online)",
        "memory": mem,
        "GPU": gpu,
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)",
        "numpy": np.__version__,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load average (1/5/15 min) at start": load_average(),
    }
