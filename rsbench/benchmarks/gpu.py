"""A ready one-command GPU check: training-step speed of each method's paper preset, and two checks.

    python -m rsbench.benchmarks.gpu [--compile] [--out FILE] [--budget 480] [--steps 300]
    bench perf --gpu [--compile] [--out FILE]                      (the same, as a bench command)

On a CUDA machine: for vsepp, amfmn, msa and clip at their `paper` preset (batch size, image size,
optimiser), on synthetic data, a timed run of the engine's own training step per setting (fp32 and bf16
autocast with channels_last, bf16 without it, and with --compile bf16 + channels_last compiled), then
images/s, peak GPU memory and the step split into data wait and compute (rsbench.benchmarks.gpu_steps);
and the checks of rsbench.benchmarks.gpu_checks (an fp16 + GradScaler resume ends equal to an
uninterrupted run; with 2+ GPUs a torchrun DDP cell's test ranks equal a single-process evaluation).
Weights are random (pretrained=false): none can be downloaded on an offline GPU box, and speed does not
depend on them. The whole run keeps to --budget seconds (default 8 minutes): the checks run first, then
each setting gets an equal share of what is left and its measured steps are cut to fit.
The report is a markdown table for benchmarks/RESULTS.md, printed and (--out) written.

On a machine without CUDA it prints one line and exits 0. For tests only (documented in
docs/perf_gpu.md, hidden from --help): `--device cpu --tiny` runs the same logic on CPU with tiny
models, and `--ddp-cpu` runs the DDP check with 2 CPU processes (gloo).
Exit codes: 0 done (or no GPU), 1 a check failed or a setting raised, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .gpu_checks import CheckResult, ddp_check, resume_check
from .gpu_steps import Setting, Timing, setting_share, settings_for, shaped_text_model, time_setting
from .harness import md_row

METHODS = ("vsepp", "amfmn", "msa", "clip")
DEFAULT_BUDGET_S = 480.0
RESERVE_S = 15.0  # kept back from the timing settings for the report and the shutdown of loaders
NO_GPU = "no CUDA GPU visible: the GPU check needs one, nothing to do on this machine"
COLUMNS = ("method", "batch", "px", "precision", "channels_last", "compile", "steps", "img/s", "step ms",
           "data wait ms", "compute ms", "peak GPU MiB", "note")


@dataclass
class Report:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)  # one per setting, in the order they ran
    failed: bool = False  # a setting raised
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rsbench.benchmarks.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--compile", action="store_true", help="Also time bf16 + channels_last under torch.compile.")
    p.add_argument("--out", type=Path, help="Also write the markdown report to this file.")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="Seconds for the whole check (default 480).")
    p.add_argument("--steps", type=int, default=300, help="Measured steps per setting, before the budget cuts them.")
    p.add_argument("--warmup", type=int, default=5, help="Untimed steps per setting (compilation happens here).")
    p.add_argument("--methods", default=",".join(METHODS), help="Comma list of methods (default: %(default)s).")
    p.add_argument("--images", type=int, default=400, help="Synthetic images generated for the run.")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # tests: cpu
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny models and images
    p.add_argument("--ddp-cpu", action="store_true", help=argparse.SUPPRESS)  # tests: the DDP check on 2 CPU ranks
    p.add_argument("--skip-checks", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.budget <= 0 or a.steps < 1 or a.warmup < 0 or a.images < 20:
        p.error("--budget must be > 0, --steps >= 1, --warmup >= 0 and --images >= 20")
    from ..methods.registry import list_methods

    known = {m.name for m in list_methods()}
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in known]
    if bad or not a.methods:
        p.error(f"--methods: unknown method {', '.join(bad) or '(none given)'}")
    return a


def environment(device: torch.device, budget_s: float) -> list[str]:
    """Header lines: the machine, the software and the budget."""
    versions = (f"torch: {torch.__version__}; CUDA (torch build): {torch.version.cuda}; "
                f"cuDNN: {torch.backends.cudnn.version()}; python {platform.python_version()}")
    lines = [f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", versions]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.insert(0, f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), "
                        f"{torch.cuda.device_count()} visible")
    else:
        lines.insert(0, f"device: CPU ({platform.processor() or platform.machine()}; test mode, tiny models)")
    lines.append(f"fp32 arithmetic: matmul precision '{torch.get_float32_matmul_precision()}', cuDNN TF32 "
                 f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'} (torch's defaults; rsbench sets neither)")
    lines.append(f"budget: {budget_s:.0f} s for the whole check (checks first, then an equal share per setting)")
    return lines


def run_notes(tiny: bool, data: Any) -> list[str]:
    """What the rows were measured on: weights, text towers, data."""
    if tiny:
        return [("CPU test mode: test_resnet backbones, a 2-layer BERT text tower, 32 px, batch 8: checks the "
                 "logic, not the speed"), f"data: synthetic, {data.train.n_images} train images at 32 px"]
    weights = ("weights: random (pretrained=false; nothing is downloaded); MSA's text tower has bert-base-uncased's "
               "architecture (12 layers, 768 wide; the shipped MiniLM's uncased WordPiece vocabulary, which is "
               "bert-base-uncased's), CLIP's that of the shipped MiniLM")
    source = (f"data: synthetic, {data.train.n_images} train images generated at 256 px; each method's paper "
              "preset sets its batch size, image size, augmentation and optimiser; DataLoader workers as "
              "`bench run` sizes them; steps after the warm-up, each timed from the previous step's end")
    return [weights, source]


def make_data(work: Path, n_images: int, tiny: bool) -> tuple[Path, Any]:
    """Synthetic images at the largest paper image size (256 px; the transforms resize per preset)."""
    from ..datasets import load_dataset
    from ..datasets.synthetic import generate_synthetic

    root = work / "synthetic"
    generate_synthetic(root, n_images=n_images, image_size=32 if tiny else 256, seed=0)
    return root, load_dataset("synthetic", data_root=root)


def run_checks(args: argparse.Namespace, device: torch.device, work: Path, root: Path, data: Any,
               echo: Any) -> list[CheckResult]:
    """The resume check, then the DDP check (skipped on fewer than 2 GPUs, or on CPU without --ddp-cpu)."""
    checks = []
    for run in (lambda: resume_check(data, device, work, args.tiny), lambda: _ddp(args, device, work, root)):
        try:
            checks.append(run())
        except Exception as e:  # noqa: BLE001 (a check that raised is a failed check, with its message)
            checks.append(CheckResult("check", "FAIL", f"{type(e).__name__}: {str(e)[:200]}"))
        echo(f"check: {checks[-1].status}  {checks[-1].name}: {checks[-1].detail}")
    return checks


def _ddp(args: argparse.Namespace, device: torch.device, work: Path, root: Path) -> CheckResult:
    if device.type == "cpu" and not args.ddp_cpu:
        return CheckResult("DDP (torchrun, 2 processes): test ranks = single-process evaluation", "SKIPPED",
                           "no CUDA GPU (CPU test mode; --ddp-cpu runs it on 2 CPU processes)")
    return ddp_check(root, work, device, args.tiny)


def run_timings(args: argparse.Namespace, device: torch.device, work: Path, data: Any, report: Report,
                t0: float, echo: Any) -> None:
    """Each setting in turn, each with its share of the budget left; a setting that raises is a row."""
    try:
        text: Path | None = shaped_text_model(work / "text-model", args.tiny)
    except Exception as e:  # noqa: BLE001 (only the methods with a text tower need it; their rows will say)
        text = None
        report.notes.append(f"no BERT-shaped text model ({' '.join(str(e).split())[:120]})")
    settings = settings_for(args.methods, args.compile)
    for i, s in enumerate(settings):
        share = setting_share(args.budget, time.perf_counter() - t0, len(settings) - i, RESERVE_S)
        if share <= 0:
            report.rows.append(note_row(s, "skipped: the budget is spent"))
            continue
        try:
            timing = time_setting(s, data, device, work, text, args.tiny, args.warmup, args.steps, share)
        except Exception as e:  # noqa: BLE001 (one setting's error, e.g. out of memory, is its row)
            report.rows.append(note_row(s, f"error: {type(e).__name__}: {' '.join(str(e).split())[:160]}"))
            report.failed = True
        else:
            report.rows.append(timing_row(timing))
        echo(md_row(report.rows[-1]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    device = torch.device("cpu" if args.device == "cpu" else "cuda")
    t0 = time.perf_counter()
    report = Report([f"command: python -m rsbench.benchmarks.gpu {' '.join(argv if argv is not None else sys.argv[1:])}"
                     .rstrip(), *environment(device, args.budget)])
    echo = _echo
    for line in report.header:
        echo(line)
    with tempfile.TemporaryDirectory(prefix="rsbench-gpu-") as tmp:
        work = Path(tmp)
        root, data = make_data(work, args.images, args.tiny)
        report.notes = run_notes(args.tiny, data)
        if not args.skip_checks:
            report.checks = run_checks(args, device, work, root, data, echo)
        run_timings(args, device, work, data, report, t0, echo)
    report.header.append(f"wall time: {time.perf_counter() - t0:.0f} s")
    text = render(report)
    print(text)
    if args.out is not None:
        from ..io import write_text

        write_text(args.out, text)
        echo(f"written: {args.out}")
    return 1 if report.failed or any(c.status == "FAIL" for c in report.checks) else 0


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the report ------------------------------------------------------------------------------------

def _ms(values: list[float]) -> str:
    return f"{1000 * sum(values) / len(values):.1f}" if values else "-"


def timing_row(t: Timing) -> list[str]:
    s = t.setting
    peak = f"{t.peak_bytes / 2**20:.0f}" if t.peak_bytes is not None else "-"
    step = [w + c for w, c in zip(t.waits, t.computes)]
    return [s.method, str(t.batch_size), str(t.image_size), s.precision, _yes(s.channels_last), _yes(s.compile),
            str(t.steps), f"{t.images_per_s:.1f}", _ms(step), _ms(t.waits), _ms(t.computes), peak, t.note]


def note_row(s: Setting, note: str) -> list[str]:
    """The row of a setting that was not timed: skipped or raised."""
    return [s.method, "", "", s.precision, _yes(s.channels_last), _yes(s.compile)] + [""] * 6 + [note]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render(report: Report) -> str:
    """The markdown section for benchmarks/RESULTS.md."""
    lines = ["## GPU check (`python -m rsbench.benchmarks.gpu`)", ""]
    lines += [f"- {h}" for h in report.header]
    lines += [f"- {line}" for line in report.notes]
    lines += ["", md_row(list(COLUMNS)), md_row(["---"] * len(COLUMNS))]
    lines += [md_row(row) for row in report.rows]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [md_row([c.name, c.status, c.detail]) for c in report.checks]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
