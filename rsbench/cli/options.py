"""The command-line options and value parsers that several `bench` commands share, defined once.

Only typer and the standard library are imported here, so that `bench --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError

# ---- where a dataset's files are (bench run, bench score, bench data check/cache) -----------------
DatasetArg = Annotated[str, typer.Argument(help="ucm | sydney | rsicd | rsitmd | synthetic")]
DataRootOpt = Annotated[Path | None, typer.Option(
    "--data-root", help="Dataset folder holding the annotation and images (`bench run` with several "
                        "datasets: a folder holding one sub-folder per dataset).")]
AnnFileOpt = Annotated[Path | None, typer.Option(
    "--ann-file", help="Annotation JSON, or a <name>_precomp folder (one dataset only; overrides the default).")]
ImageDirOpt = Annotated[Path | None, typer.Option(
    "--image-dir", help="Image folder (one dataset only; default: found in the data root).")]
LayoutOpt = Annotated[str, typer.Option("--layout", help="auto | karpathy | precomp | hf_parquet | pir_json | csv | nwpu | precomp_verify")]
ValSeedOpt = Annotated[int, typer.Option("--val-seed", help="Seed of the carved val split (when there is none).")]

# ---- result folders read by the reporting commands -----------------------------------------------
ResultsDirArg = Annotated[Path, typer.Argument(metavar="RESULTS_DIR",
                                               help="Results root holding <dataset>/<method>/seed<k>/ cells.")]
SkipDamagedOpt = Annotated[bool, typer.Option(
    "--skip-damaged", help="Leave out result cells whose files do not read back (each is still named in a "
                           "warning) instead of refusing.")]
LabelOpt = Annotated[list[str] | None, typer.Option(
    "--label", metavar="METHOD=NAME", help="Print METHOD (its folder name) as NAME in tables and figures "
                                          "(repeatable; default: the name the method declares, e.g. VSE++).")]

MAX_SEED = 2**32 - 1  # numpy's seed range; the folder seed<k> must also be found again by status/leaderboard


def split_list(value: str, what: str) -> list[str]:
    """A comma-separated option as a list; an empty one is a user error naming the option."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise UserError(f"--{what} is empty")
    return items


def parse_seeds(value: str) -> list[int]:
    """--seeds: comma-separated integers in numpy's seed range."""
    try:
        seeds = [int(s) for s in split_list(value, "seeds")]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got '{value}'") from None
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise UserError(f"--seeds: {bad[0]} is out of range; seeds are integers from 0 to {MAX_SEED}")
    return seeds
