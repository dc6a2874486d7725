"""`bench run`, `bench methods`, `bench datasets`: the training grid and what is registered."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import app
from .errors import UserError


def _split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"--{what} is empty")
    return items


def _parse_seeds(value: str) -> list[int]:
    try:
        return [int(s) for s in _split_list(value, "seeds")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{value}'") from None


@app.command()
def run(
    methods: Annotated[str, typer.Option(help="Comma-separated method names (see `bench methods`).")],
    dataset: Annotated[str, typer.Option(help="Comma-separated dataset names (see `bench datasets`).")],
    data_root: Annotated[Optional[Path], typer.Option(help="Dataset folder (with several datasets: a folder "
                                                           "holding one sub-folder per dataset).")] = None,
    ann_file: Annotated[Optional[Path], typer.Option(help="Annotation file (one dataset only).")] = None,
    image_dir: Annotated[Optional[Path], typer.Option(help="Image folder (one dataset only).")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (0 = evaluate without training).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size.")] = None,
    preset: Annotated[str, typer.Option(help="auto (small on synthetic, paper otherwise), small or paper.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results"),
    config: Annotated[Optional[Path], typer.Option(help="TOML/JSON file of options (dotted keys or tables).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override an option: key=value "
                                                                    "(repeatable; prefix 'msa.' to scope).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted cell from its last epoch.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Re-run cells that are already complete.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model parts.")] = False,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bars (default: on a terminal).")] = None,
) -> None:
    """Train each (method, dataset, seed), select on val, evaluate on test, write results/."""
    from .config import load_config_file, parse_set_options
    from .datasets import get_dataset_info, load_dataset
    from .device import pick_device
    from .methods.registry import get_method_spec
    from .results import cell_dir, is_complete, load_cell
    from .runconfig import resolve_config
    from .runner import run_cell

    method_list = _split_list(methods, "methods")
    dataset_list = _split_list(dataset, "dataset")
    seed_list = _parse_seeds(seeds)
    for m in method_list:
        get_method_spec(m)
    for d in dataset_list:
        get_dataset_info(d)
    if (ann_file or image_dir) and len(dataset_list) > 1:
        raise UserError("--ann-file/--image-dir name one dataset's files; run one dataset at a time")
    file_keys = load_config_file(config) if config else {}
    overrides = parse_set_options(set_)
    cli_train = {"epochs": epochs, "batch_size": batch_size, "compile": compile or None}
    # Resolve every config before any training, so a typo fails fast.
    cfgs = {(m, d, s): resolve_config(m, d, s, preset, file_keys, cli_train, overrides)
            for d in dataset_list for m in method_list for s in seed_list}
    dev = pick_device(device)
    show = sys.stderr.isatty() if progress is None else progress
    summary = []
    for d in dataset_list:
        root = data_root
        if data_root is not None and len(dataset_list) > 1 and (data_root / d).is_dir():
            root = data_root / d
        data = load_dataset(d, data_root=root, ann_file=ann_file, image_dir=image_dir)
        typer.echo(f"{d}: train {data.train.n_images} / val {data.val.n_images} / test {data.test.n_images} images "
                   f"on {dev}")
        for m in method_list:
            for s in seed_list:
                cell = cell_dir(out, d, m, s)
                if is_complete(cell) and not overwrite:
                    typer.echo(f"skip {cell} (complete; --overwrite to redo)")
                    summary.append((m, d, s, load_cell(cell).metrics, 0.0, "skipped"))
                    continue
                if overwrite and cell.exists():
                    shutil.rmtree(cell)
                typer.echo(f"run {m} on {d}, seed {s} -> {cell}")
                t0 = time.time()
                res = run_cell(cfgs[(m, d, s)], data, cell, dev, resume=resume, progress=show, log=typer.echo)
                summary.append((m, d, s, res.metrics, time.time() - t0, "done"))
    _print_summary(summary)


def _print_summary(rows: list) -> None:
    typer.echo("")
    typer.echo(f"{'method':<10} {'dataset':<10} {'seed':>4} {'test mR':>8} {'chance':>7} {'val mR':>7} "
               f"{'epoch':>5} {'time':>7}")
    for m, d, s, met, wall, status in rows:
        val = (met.get("val") or {}).get("mR")
        val_s = f"{val:7.2f}" if isinstance(val, (int, float)) else f"{'-':>7}"
        ep = met.get("selected_epoch")
        typer.echo(f"{m:<10} {d:<10} {s:>4} {met['mR']:8.2f} {met.get('chance_mR', float('nan')):7.2f} {val_s} "
                   f"{ep if ep is not None else '-':>5} {wall if status == 'done' else 0:6.0f}s"
                   + ("  (skipped)" if status == "skipped" else ""))


@app.command("methods")
def methods_cmd(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every option.")] = False) -> None:
    """List the registered methods."""
    from .config import all_keys
    from .methods.registry import list_methods

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


@app.command("datasets")
def datasets_cmd() -> None:
    """List the known datasets."""
    from .datasets import list_datasets

    for info in list_datasets():
        typer.echo(f"{info.name:<10} {info.description}")
