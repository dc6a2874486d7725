"""`bench perf`: the performance harness (rsbench.benchmarks.perf) as a bench sub-command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError


def perf(
    quick: Annotated[bool, typer.Option("--quick", help="Shrink every size (about a minute); checks it works.")] = False,
    only: Annotated[str | None, typer.Option("--only", help="Comma list of item numbers (1-10; see benchmarks/RESULTS.md for what each is).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report file (default benchmarks/RESULTS.md for a full "
                                             "run of all items; --quick / --only / --gpu write none unless given).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=0, help="torch intra-op threads for every item but 4 "
                                         "(0: torch's default).")] = 0,
    gpu: Annotated[bool, typer.Option("--gpu", help="Instead: the GPU check (python -m rsbench.benchmarks.gpu): "
                                      "paper presets' step speed, resume and DDP checks, in about 8 minutes.")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="With --gpu: also time torch.compile.")] = False,
) -> None:
    """Time our fast paths against naive references side by side and print the ratios."""
    from ..benchmarks import perf as harness

    if gpu or compile_:
        if not gpu or quick or only or threads:
            raise UserError("--gpu takes only --compile and --out (--compile needs --gpu; --quick, --only and "
                            "--threads are for the CPU harness)")
        from ..benchmarks import gpu as harness  # type: ignore[no-redef]

        argv = ["--compile"] if compile_ else []
    else:
        argv = (["--quick"] if quick else []) + (["--only", only] if only else [])
        argv += ["--threads", str(threads)] if threads else []
    argv += ["--out", str(out)] if out is not None else []
    try:
        code = harness.main(argv)
    except SystemExit as e:  # the harness's own argument errors: one line, exit 2
        if isinstance(e.code, str):
            raise UserError(e.code) from None
        raise
    raise typer.Exit(code)
