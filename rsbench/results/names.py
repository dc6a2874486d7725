"""The printed name of each method of a results folder (tables, figures, report).

A cell's config.json records the name its method declares (`register_method(..., display_name=...)`,
e.g. VSE++, AMFMN (soft)) or the run's `--set display_name=...`; a `--label KEY=NAME` of the
leaderboard / plot / report commands overrides it; cells without one (older cells, `bench score`)
show the method's folder name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import UserError


def method_names(cells: Iterable[Any], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """{method key: printed name} for the methods of `cells` (rsbench.results.cell.Cell)."""
    names: dict[str, str] = {}
    for c in sorted(cells, key=lambda c: (c.method, c.seed)):  # the lowest seed's name wins
        shown = c.config.get("display_name") if isinstance(c.config, dict) else None
        if c.method not in names or (names[c.method] == c.method and isinstance(shown, str) and shown.strip()):
            names[c.method] = shown.strip() if isinstance(shown, str) and shown.strip() else c.method
    for key, name in (overrides or {}).items():
        names[key] = name
    return names


def parse_labels(items: Iterable[str] | None, option: str = "--label") -> dict[str, str]:
    """`KEY=NAME` strings -> {key: name}; UserError naming the option for anything else."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, name = item.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise UserError(f"{option} {item!r}: expected METHOD=NAME, e.g. {option} vsepp=VSE++")
        out[key.strip()] = name.strip()
    return out
