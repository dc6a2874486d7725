"""The numbers reported in papers (the shipped rsbench/data/published_results.csv), for the tables."""

from __future__ import annotations

import csv
import io
from importlib import resources


def published_results(dataset: str | None = None) -> list[dict[str, str]]:
    """Rows of the shipped published_results.csv (optionally of one dataset, case-insensitive)."""
    text = (resources.files("rsbench") / "data" / "published_results.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    if dataset is not None:
        rows = [r for r in rows if r["dataset"].strip().lower() == dataset.strip().lower()]
    return rows
