"""Performance harness: `python -m rsbench.benchmarks.perf [--quick] [--only N,...] [--out FILE]`.

`perf` times our vectorised code against the naive implementations in `references` (side by side,
same process, same inputs) and records the table in benchmarks/RESULTS.md. `perf` holds the item list,
the report and the entry point; `harness` the measurement and the table; `items_*` the items.
"""
