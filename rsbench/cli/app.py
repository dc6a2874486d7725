"""The `bench` command line: `build_app` registers every command explicitly; `main` maps errors to exit codes.

The command modules define plain functions and import nothing from here, so importing one has no
side effect. Every user error (rsbench.errors.UserError) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import UserError


def build_app() -> typer.Typer:
    """The Typer app with every command (the `data` group as a sub-app)."""
    from . import compare, data, listing, models, perf, report, report_html, run, status

    app = typer.Typer(
        name="bench",
        help="rsbench: train, select on validation, evaluate on test, and compare RS image-text retrieval methods.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.command("run")(run.run)
    app.command("methods")(listing.methods_cmd)
    app.command("datasets")(listing.datasets_cmd)
    app.command("models")(models.models)
    app.command("score")(report.score)
    app.command("leaderboard")(report.leaderboard)
    app.command("compare")(compare.compare)
    app.command("plot")(compare.plot)
    app.command("report")(report_html.report)
    app.command("gallery")(report_html.gallery)
    app.command("status")(status.status)
    app.command("perf")(perf.perf)
    app.add_typer(data.build_data_app(), name="data")
    return app


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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rc = build_app()(args=argv, standalone_mode=False)
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
