"""`bench models`: the checkpoint zoo (every `zoo:<name>` method), what each needs and where to get it."""

from __future__ import annotations

from typing import Annotated

import typer


def models(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Source, licence, preprocessing, "
                                                                        "published numbers.")] = False) -> None:
    """List the known CLIP-family checkpoints (run one with --methods zoo:<name> --set weights_dir=DIR)."""
    from ..methods.components.zoo_catalogue import zoo_entries

    typer.echo(f"{'method':<30} {'architecture':<24} {'activation':<18} {'px':>4}  file")
    for e in zoo_entries():
        typer.echo(f"{e.method_name:<30} {e.arch or e.loader:<24} {e.activation:<18} {e.image_size:>4}  {e.files[0]}")
        if verbose:
            typer.echo(f"    from: {e.source}   licence: {e.license}   init: {e.init}")
            typer.echo(f"    preprocessing: {e.resize}; mean {e.mean} std {e.std}   sha256: {e.sha256 or 'not published'}")
            for dataset, mr, selection in e.published:
                typer.echo(f"    published: {dataset} mR {mr:.2f} (selection: {selection})")
