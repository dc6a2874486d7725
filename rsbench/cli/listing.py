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
            typer.echo(f"    display_name = {spec.display_name(cfg)!r}")
    if verbose:
        _echo_train_keys()


def _echo_train_keys() -> None:
    """The training options every method shares, with their defaults (a preset may change them)."""
    from ..config.overlay import all_keys
    from ..config.schema import TrainConfig

    cfg = TrainConfig()
    typer.echo("training options of every method (defaults; presets override some; --set train.KEY=VALUE):")
    for k in all_keys(cfg):
        typer.echo(f"    train.{k} = {getattr(cfg, k)!r}")


def datasets_cmd() -> None:
    """List the known datasets."""
    from ..datasets import list_datasets

    for info in list_datasets():
        typer.echo(f"{info.name:<10} {info.description}")
