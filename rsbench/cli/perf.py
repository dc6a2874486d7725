"""`bench perf`: the performance harness (rsbench.benchmarks.perf) as a bench sub-command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError


def perf(
    quick: Annotated[bool, typer.Option("--quick", help="Shrink every size (about a minute); checks it works.")] = False,
    only: Annotated[str | None, typer.Option("--only", help="Comma list of item numbers (1-6).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report file (default benchmarks/RESULTS.md for a full "
                                             "run of all items; --quick / --only write none unless given).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=0, help="torch intra-op threads for every item but 4 "
                                         "(0: torch's default).")] = 0,
) -> None:
    """Time our fast paths against naive references side by side and print the ratios."""
    from ..benchmarks import perf as harness

    argv = (["--quick"] if quick else []) + (["--only", only] if only else [])
    argv += (["--out", str(out)] if out is not None else []) + (["--threads", str(threads)] if threads else [])
    try:
        code = harness.main(argv)
    except SystemExit as e:  # the harness's own argument errors: one line, exit 2
        if isinstance(e.code, str):
            raise UserError(e.code) from None
        raise
    raise typer.Exit(code)
