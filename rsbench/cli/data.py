"""`bench data check / synth / cache`: inspect a dataset copy, generate the synthetic set, build the image cache.

Exit codes: 0 fine (warnings, e.g. empty train captions, are printed as `warning: <file>: ...`); 1 the data has problems (each printed as `error: <file>: <problem>` on stderr);
2 user-input errors (missing folder, unknown dataset), raised as UserError for the main CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .audit import audit
from .options import AnnFileOpt, DataRootOpt, DatasetArg, ImageDirOpt, LayoutOpt, ValSeedOpt


def build_data_app() -> typer.Typer:
    """The `bench data` group: check, synth, cache."""
    data_app = typer.Typer(
        help="Check a dataset copy, generate the synthetic dataset, build the decoded-image cache.",
        no_args_is_help=True,
        add_completion=False,
    )
    data_app.command("check")(check_cmd)
    data_app.command("synth")(synth_cmd)
    data_app.command("cache")(cache_cmd)
    data_app.command("audit")(audit)
    return data_app


def check_cmd(
    dataset: DatasetArg,
    data_root: DataRootOpt = None,
    ann_file: AnnFileOpt = None,
    image_dir: ImageDirOpt = None,
    layout: LayoutOpt = "auto",
    val_seed: ValSeedOpt = 0,
) -> None:
    """Read every caption and decode every image once; print per-split counts and all problems."""
    from ..datasets import DataSource, check_dataset
    from ..datasets.check import format_report

    source = DataSource(dataset, data_root, ann_file, image_dir, layout, val_seed)
    report = check_dataset(source, progress=lambda msg: typer.echo(msg, err=True))
    typer.echo(format_report(report))
    for w in report.warnings:
        typer.echo(f"warning: {w.line}", err=True)
    if report.problems:
        for p in report.problems:
            typer.echo(f"error: {p.line}", err=True)
        # SystemExit, not typer.Exit: the main CLI runs click with standalone_mode=False, where
        # typer.Exit would be turned into a return value and the process would exit 0.
        sys.exit(1)


def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder (dataset.json + images/).")],
    n_images: Annotated[int, typer.Option("--n-images", min=1)] = 300,
    image_size: Annotated[int, typer.Option("--image-size", min=8)] = 64,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Generate the synthetic dataset (Karpathy-style JSON + PNG images) into OUT."""
    from ..datasets.synthetic import generate_synthetic

    ann = generate_synthetic(out, n_images=n_images, image_size=image_size, seed=seed)
    typer.echo(f"wrote {ann} ({n_images} images, {image_size}px, seed {seed}); "
               f"use: bench data check synthetic --data-root {out}")


def cache_cmd(
    dataset: DatasetArg,
    data_root: DataRootOpt = None,
    ann_file: AnnFileOpt = None,
    image_dir: ImageDirOpt = None,
    layout: LayoutOpt = "auto",
    methods: Annotated[str | None, typer.Option(
        "--methods", help="Build the cache(s) these methods train from (comma-separated, as `bench run "
                          "--methods`): their train.image_size and train.resize on this dataset under --preset.")] = None,
    preset: Annotated[str, typer.Option(help="The methods' preset, as in `bench run` (auto: small on synthetic, "
                                             "paper otherwise).")] = "auto",
    image_size: Annotated[int | None, typer.Option(
        "--image-size", help="Training image size (train.image_size); overrides the methods' own.")] = None,
    resize: Annotated[int, typer.Option("--resize", help="train.resize with --image-size (0: round(image_size * "
                                                         "1.09)).")] = 0,
    val_seed: ValSeedOpt = 0,
) -> None:
    """Decode and resize every image once into $RSBENCH_CACHE/images (used with train.image_cache=true), at the
    size `bench run` trains from: the methods' (--methods) or --image-size's."""
    from ..datasets import DataSource, load_dataset
    from ..datasets.cache import ImageCache

    sizes = cache_sizes(dataset, methods, preset, image_size, resize)
    ds = load_dataset(DataSource(dataset, data_root, ann_file, image_dir, layout, val_seed))
    step = max(1, (ds.train.n_images + ds.val.n_images + ds.test.n_images) // 20)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            typer.echo(f"  {done}/{total}", err=True)

    for size, users in sizes.items():
        cache = ImageCache.build(ds, size, fingerprint=ds.fingerprint, progress=progress)
        state = "reused" if cache.reused else "built"
        typer.echo(f"{state} {cache.data_path} ({len(cache)} images, {size}x{size})"
                   + (f" for {', '.join(users)}" if users else ""))


def cache_sizes(dataset: str, methods: str | None, preset: str, image_size: int | None,
                resize: int) -> dict[int, list[str]]:
    """Cache resolution -> the methods training from it. Why from the resolved configs: the trainer looks the
    cache up by train_resize_size(train.image_size, train.resize), which the method's preset sets per
    dataset (64 px on the synthetic set, 224-256 px on real data); a cache of another size is never read."""
    from ..datasets.cache import train_resize_size
    from ..errors import UserError

    if methods is None:
        if image_size is None:
            raise UserError("bench data cache: say which size to build: --methods M,... (the size they train "
                            "at on this dataset) or --image-size N")
        return {train_resize_size(image_size, resize): []}
    from ..config.resolve import resolve_config
    from .options import split_list

    over = {} if image_size is None else {"train.image_size": image_size, "train.resize": resize}
    sizes: dict[int, list[str]] = {}
    for m in split_list(methods, "methods"):
        t = resolve_config(m, dataset, preset=preset, overrides=over).train
        sizes.setdefault(train_resize_size(t.image_size, t.resize), []).append(m)
    return sizes
