"""The `bench` command line. Sub-command groups live in their own modules and are added here.

Every user error (rsbench.errors.UserError) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import UserError

app = typer.Typer(
    name="bench",
    help="rsbench: train, select on validation, evaluate on test, and compare RS image-text retrieval methods.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    """Attach the command groups; each module defines its commands on `app` or a sub-Typer."""
    from . import (
        compare as cli_compare,
        data as cli_data,
        perf as cli_perf,
        report as cli_report,
        run as cli_run,
        status as cli_status,
    )  # noqa: F401

    app.add_typer(cli_data.data_app, name="data")


_registered = False


def _click_modules() -> list:
    """click itself and typer's vendored copy: usage errors may come from either."""
    import importlib

    mods = []
    for name in ("typer._click", "click"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return [m for m in mods if hasattr(m, "exceptions")]


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one-line messages."""
    global _registered
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not _registered:
        _register_commands()
        _registered = True
    try:
        rc = app(args=argv, standalone_mode=False)
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # usage errors (typer ships its own copy of click) etc.
        click_mods = _click_modules()
        if any(isinstance(e, getattr(m.exceptions, "Abort", ())) for m in click_mods):
            typer.echo("aborted", err=True)
            sys.exit(1)
        if any(isinstance(e, m.exceptions.ClickException) for m in click_mods):
            e.show()
            sys.exit(2)
        raise
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":  # `python -m rsbench.cli` (torchrun): commands register on rsbench.cli.app
    from rsbench.cli import main as _main

    _main()
