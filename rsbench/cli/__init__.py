"""The `bench` command line: thin Typer commands; nothing in rsbench imports this package.

`main` is forwarded lazily, so the console script `rsbench.cli:main` and `python -m rsbench.cli` keep
working without importing a single command at package import.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Console entry point (see rsbench.cli.app.main)."""
    from .app import main as _main

    _main(argv)
