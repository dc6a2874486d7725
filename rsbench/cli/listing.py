"""`bench methods` and `bench datasets`: what is registered."""

from __future__ import annotations

from typing import Annotated

import typer


def methods_cmd(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every option.")] = False) -> None:
    """List the registered methods."""
    from ..config.overlay import all_keys
    from ..methods.registry import list_methods

    for spec in list_methods():
        typer.echo(f"{spec.name:<10} {spec.description}")
        if verbose:
            cfg = spec.config_cls()
            for k in all_keys(cfg):
                v = cfg
                for part in k.split("."):
                    v = getattr(v, part)
                typer.echo(f"    {k} = {v!r}")
            for p, overlay in spec.presets.items():
                typer.echo(f"    preset {p}: " + ", ".join(f"{k}={v}" for k, v in overlay.items()))


def datasets_cmd() -> None:
    """List the known datasets."""
    from ..datasets import list_datasets

    for info in list_datasets():
        typer.echo(f"{info.name:<10} {info.description}")
