"""Performance harness: our vectorised code against naive references, side by side.

    python -m rsbench.benchmarks.perf [--quick] [--only 1,3] [--out benchmarks/RESULTS.md]
    bench perf [--quick] [--only 1,3] [--out ...]          (the same, as a bench command)

Items (targets from the performance issue):
 1. ranks + metrics of an RSICD-size test set vs the authors' evaluation functions (AMFMN utils.py
    acc_i2t2 / acc_t2i2, per-query argsort; tie-free scores; amfmn_refs.py): equal, >= 30x faster (#20);
    1b: vs our own per-query stable argsort on float32 scores with ties: equal, >= 50x.
 2. AMFMN test scoring + ranks + metrics at RSICD size (1093 x 5465, 256 px, the authors' released sizes:
    ResNet-18 + MVSA, skip-thought GRU 620 -> 2400, soft) vs the authors' procedure (utils.py shard_dis:
    the whole model on every 128 x 128 shard, then acc_i2t2 / acc_t2i2; amfmn_refs.py); both sides timed
    on a subset and scaled (said in the row); ours at auto and at fp32: >= 50x at auto, fp32 scores
    equal. 2b: the soft score kernel alone on precomputed features vs per-pair 128 x 128 shards: >= 10x,
    max |diff| < 1e-5, lower peak memory.
 3. MSCMAT per-scale B x B matrices, forward + backward, vs a per-image MultiheadAttention loop:
    >= 3x faster, same values and gradients.
 4. one data-loading epoch from the ImageCache vs decoding the files: >= 3x faster.
 5. training-step overhead of each method over its encoders' forward + backward (the image backbone
    plus the text encoder, run as the step runs them: fine-tuned towers forward + backward, a frozen
    tower through its per-caption cache): < 25%. The breakdown table also gives the overhead over
    the image backbone alone; MSA fine-tunes a 6-layer transformer text encoder that by itself
    costs more than the small preset's image backbone, so against the image backbone alone no
    implementation of MSA can stay under 25%.
 6. blockwise ranks of 50,000 x 250,000 random 256-d embeddings within 2 GiB peak memory.
 7. SCAN test-set scoring (t2i and i2t, LSE; RSITMD test size, 7x7 grid regions) with the method's
    blockwise, pair-vectorised kernel vs the SCAN authors' evaluation procedure (128 x 128 shards, a
    loop over each shard's captions; references.scan_score_sharded): max |diff| < 1e-4, faster.
 3a, 9, 10. MSA against references that follow the MSA authors' code (benchmarks/msa_refs.py, fp32, same
    weights; docs/fidelity.md says what each mirrors), ours at --precision auto and at fp32, the target
    judged on the auto row: 3a MSCMAT fwd+bwd at the paper's sizes (>= 3x); 9 the training step, batch 32,
    224 px, ResNet-50 + 12-layer BERT (>= 2.5x); 10 the test evaluation at RSITMD size (>= 5x).
 8. AMFMN training step, batch 100 x 256 px, the same sizes and weights on both sides, vs the authors'
    engine.py train step (fp32, their Python-stepped skip-thought GRU with its dropout; amfmn_refs.py):
    ours at auto and at fp32, >= 1.25x at auto, equal fp32 loss (their dropout off for that check).
 11. the README's full synthetic comparison (4 methods x 2 seeds) as `bench run --jobs 2` processes, against
    the same grid at --jobs 1: at most 4 minutes on 2 idle cores (items_grid.py). It runs first, before
    the other items have loaded the cores (its target is an absolute time, not a ratio).

Method. Both sides run in this process on the same inputs, interleaved (ours, ref, ours, ref...)
so that load changes hit both; one warm-up call each, then the median of up to `repeats` calls
(fewer for slow calls, so that a side spends about `budget` seconds; `n` is shown). Ratios are
ref / ours. Peak memory (items 2 and 6) is measured in a fresh subprocess per side: inputs are
built (item 2: the same code runs once on small inputs, so lazy one-time setup is not counted),
the kernel's peak-RSS counter is reset (`/proc/self/clear_refs` = 5), the computation runs once
and VmHWM - VmRSS(before) is the peak it added. A fresh process means neither side inherits the
other's freed heap; for item 2 glibc's mmap threshold is fixed at 64 KiB so that freed tensors
leave RSS (live memory); item 6 reports the whole process's VmHWM with the default allocator.
Item 4 runs with one torch thread, as a DataLoader worker does; `--threads N` sets the others
(default: torch's default). `--quick` shrinks every size (about a minute).
A full run of all items writes the report to benchmarks/RESULTS.md; `--quick` or `--only` write
only where `--out` says.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .harness import Row, fmt_seconds, format_table, load_average, machine_description, torch_threads
from .items_amfmn import child_amfmn, item_amfmn, item_amfmn_step
from .items_grid import item_grid
from .items_msa import item_msa_eval, item_msa_step, item_mscmat
from .items_ranking import child_scale, item_metrics, item_scale, item_scan
from .items_training import item_loading, item_train_step
from .workspace import FULL, QUICK, Workspace

DEFAULT_OUT = Path("benchmarks/RESULTS.md")
ITEMS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
RUN_FIRST = (11,)  # its target is an absolute time on idle cores: it runs before the others load them


# ---- driver ----------------------------------------------------------------------------------------

RUNNERS: dict[int, Callable[[Workspace], list[Row]]] = {
    1: item_metrics, 2: item_amfmn, 3: item_mscmat, 4: item_loading, 5: item_train_step, 6: item_scale,
    7: item_scan, 8: item_amfmn_step, 9: item_msa_step, 10: item_msa_eval, 11: item_grid,
}
CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"amfmn": child_amfmn, "scale": child_scale}


def parse_only(text: str | None) -> list[int]:
    if not text:
        return list(ITEMS)
    try:
        items = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--only: expected item numbers such as 1,3 (from {ITEMS}), got '{text}'") from None
    bad = [i for i in items if i not in ITEMS]
    if bad or not items:
        raise SystemExit(f"--only: no item {bad or text}; choose from {', '.join(map(str, ITEMS))}")
    return items


def load_notes(machine: dict[str, str]) -> list[str]:
    """A warning when the machine was oversubscribed, and which thread setting that calls for."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = float(load_average().split()[0])
    except ValueError:
        return []
    if load <= cpus:
        return []
    threads = torch.get_num_threads()
    return [(f"The machine was oversubscribed (load average {load:.1f} on {cpus} cores; start: "
            f"{machine.get('load average (1/5/15 min) at start', 'n/a')}): absolute times are inflated. "
            f"This run used {threads} torch thread(s). With several threads on a loaded machine every "
            "parallel region waits for descheduled threads, which slows many small torch ops far more than "
            "single-threaded numpy loops; `--threads 1` gives ratios that measure the code, not the scheduler.")]


METHOD_NOTE = (
    "Ratios are reference / ours, timed side by side in one process (warm-up, then the median of n "
    "interleaved calls; n=1* means a single call slower than the time budget, timed without a separate "
    "warm-up); item 5's ratio is the step's overhead over its encoders' forward+backward (image backbone + text encoder as the step runs them). Peak memory: a "
    "fresh subprocess per side, VmHWM reset before the computation (see rsbench/benchmarks/perf.py). On a "
    "shared machine absolute times are inflated; ratios are what count.")


def render_report(rows: list[Row], ws: Workspace, machine: dict[str, str], argv: list[str], wall: float) -> str:
    head = ["# rsbench performance results", "",
            "`" + " ".join(["python -m rsbench.benchmarks.perf", *argv]) + "`", "",
            *[f"- {k}: {v}" for k, v in machine.items()],
            f"- load average (1/5/15 min) at end: {load_average()}",
            f"- harness wall time: {fmt_seconds(wall)}", "",
            METHOD_NOTE, "", format_table(rows), ""]
    notes = [f"- {n}" for n in [*load_notes(machine), *ws.notes]]
    tail = (["Notes:", "", *notes, ""] if notes else []) + [s + "\n" for s in ws.extra_sections]
    return "\n".join(head + tail).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rsbench.benchmarks.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="shrink every size (about a minute)")
    p.add_argument("--only", help=f"comma list of item numbers ({', '.join(map(str, ITEMS))})")
    p.add_argument("--out", type=Path, help=f"report file (default {DEFAULT_OUT} for a full run of all items; "
                   "--quick / --only write no file unless --out is given)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads for every item but 4 (default: torch's default)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    with torch_threads(args.threads if args.threads > 0 else torch.get_num_threads()):
        if args.child:
            task = json.loads(args.child)
            print(json.dumps(CHILDREN[task["task"]](task)), flush=True)
            return 0
        return run(args, list(sys.argv[1:] if argv is None else argv))


def run(args: argparse.Namespace, argv_shown: list[str]) -> int:
    """Run the chosen items, print the report and write it where asked; 1 if a value check failed."""
    items = parse_only(args.only)
    out = args.out if args.out is not None else (DEFAULT_OUT if not args.quick and not args.only else None)
    machine = machine_description()
    t0 = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rsbench-perf-") as tmp:
        old_cache = os.environ.get("RSBENCH_CACHE")
        os.environ["RSBENCH_CACHE"] = str(Path(tmp) / "rsbench-cache")  # never touch the user's cache
        try:
            ws = Workspace(QUICK if args.quick else FULL, Path(tmp))
            for item in sorted(items, key=lambda i: i not in RUN_FIRST):  # stable: the others in order
                t_item = time.perf_counter()
                new = RUNNERS[item](ws)
                rows += new
                print(format_table(new).split("\n", 2)[2] + f"   [{fmt_seconds(time.perf_counter() - t_item)}]",
                      flush=True)
        finally:
            if old_cache is None:
                os.environ.pop("RSBENCH_CACHE", None)
            else:
                os.environ["RSBENCH_CACHE"] = old_cache
    rows.sort(key=lambda r: int(re.match(r"\d+", r.item).group()))  # the table in item order (stable)
    report = render_report(rows, ws, machine, argv_shown, time.perf_counter() - t0)
    print("\n" + report, flush=True)
    if out is not None:
        from ..io import write_text

        write_text(out, report)
        print(f"wrote {out}")
    return 1 if any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
