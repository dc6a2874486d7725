"""`bench data audit D1 [D2 ...]`: duplicate captions, the R@1 ceiling, near-duplicate images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from .options import DataRootOpt, ImageDirOpt


def audit(
    datasets: Annotated[list[str], typer.Argument(help="Dataset names (one root may hold one folder each).")],
    data_root: DataRootOpt = None,
    image_dir: ImageDirOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.json and audit.md.")] = Path("audit"),
    captions_only: Annotated[bool, typer.Option("--captions-only", help="Skip the image hashes.")] = False,
    max_distance: Annotated[int, typer.Option("--max-distance", min=0, max=32,
                                              help="Largest pHash Hamming distance (of 64 bits) reported.")] = 6,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Hashing processes (0: one per core).")] = 0,
) -> None:
    """Exact duplicate captions and the best reachable t2i R@1; near-duplicate images across splits and datasets."""
    from ..datasets import DataSource, load_dataset
    from ..datasets.audit import format_audit, run_audit

    base = DataSource(datasets[0], data_root=data_root, image_dir=image_dir)
    loaded = []
    for name in datasets:
        src = base.for_dataset(name, several=len(datasets) > 1)
        if captions_only and src.image_dir is None and src.data_root is not None:
            src = replace(src, image_dir=src.data_root)  # captions only: the images need not be there
        loaded.append(load_dataset(src, verify_images=not captions_only, strict=False, warn=lambda line: None))
    result = run_audit(loaded, out, images=not captions_only, max_distance=max_distance, workers=workers or None,
                       progress=lambda msg: typer.echo(msg, err=True))
    typer.echo(format_audit(result), nl=False)
    typer.echo(f"wrote {out / 'audit.json'} and {out / 'audit.md'}")
