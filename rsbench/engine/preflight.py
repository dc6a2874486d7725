"""Before any cell of a grid starts: can every pretrained weight it needs be had on this machine?

Offline, a cell asking for hub weights used to spend about a minute in retries before failing, and
then the next cell did the same. Here each cell's method declares its weights
(RetrievalMethod.required_weights, see methods/components/weights.py); each is local (a file given,
a filled cache), downloadable (its host answers: one short check per run), or missing. Missing ones
stop the run with one line each, naming the method's cells, the weight and the option that avoids
it, before any cell folder is written. When the hub is unreachable but everything is cached, the
hubs are put offline for the run so that loading from the cache does not wait on the network.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import UserError

if TYPE_CHECKING:
    from ..config.schema import RunConfig
    from ..methods.components.weights import WeightNeed
    from .grid import Grid

Cell = tuple[str, str, int]  # (method, dataset, seed), the keys of Grid.cfgs


def collect_needs(cfgs: Mapping[Cell, RunConfig]) -> dict[tuple[str, WeightNeed], list[Cell]]:
    """(method, weight) -> the cells that need it, in the grid's order."""
    from ..methods.registry import get_method_spec

    needs: dict[tuple[str, WeightNeed], list[Cell]] = {}
    for cell, cfg in cfgs.items():
        for need in get_method_spec(cfg.method).cls.required_weights(cfg.model):
            needs.setdefault((cfg.method, need), []).append(cell)
    return needs


def cells_to_run(grid: Grid) -> dict[Cell, RunConfig]:
    """The grid's cells that will build a model: a complete cell is skipped unless --overwrite (the rule
    of grid.cell_work, which the run's progress line uses too)."""
    from .grid import cell_work, grid_cell

    return {(m, d, s): cfg for (m, d, s), cfg in grid.cfgs.items()
            if cell_work(cfg, grid_cell(grid.out, d, m, s), grid.resume, grid.overwrite) is not None}


def check_weights(grid: Grid) -> None:
    """UserError (one line per missing weight) unless every weight of every cell to run can be had; may put
    the hubs offline for this process and its children (see the module docstring)."""
    from ..methods.components import weights as w

    needs = collect_needs(cells_to_run(grid))
    if not needs:
        return
    offline = w.hubs_offline()
    remote = [n for _, n in needs if not n.local and n.url]
    cached_hub = [n for _, n in needs if n.local and n.hub]
    up = {} if offline else w.reachable([n.url for n in remote + cached_hub])
    missing = [(m, n) for (m, n) in needs if not n.local and (offline or not up.get(w.host_of(n.url), False))]
    if missing:
        lines = [f"{len(missing)} pretrained weight(s) cannot be had on this machine; no cell was started:"]
        lines += [f"  {_missing_line(m, n, needs[(m, n)], offline)}" for m, n in missing]
        raise UserError("\n".join(lines))
    hub_hosts = {w.host_of(n.url) for n in cached_hub}
    if not offline and hub_hosts and not all(up.get(h, False) for h in hub_hosts):
        w.go_offline()
        print(f"note: {', '.join(sorted(hub_hosts))} unreachable; every weight is cached: the hubs are "
              "offline for this run (HF_HUB_OFFLINE=1)", file=sys.stderr, flush=True)


def _missing_line(method: str, need: WeightNeed, cells: list[Cell], offline: str) -> str:
    """'<method> (<cells>): <weight>: <why>; fix: --set <method>.<option> or ...'."""
    datasets = sorted({d for _, d, _ in cells})
    where = f"{method} ({len(cells)} cell{'s' if len(cells) > 1 else ''}: {', '.join(datasets)})"
    if not need.url:
        why = need.missing if need.where in need.what else f"{need.where}: {need.missing}"
    else:
        net = f"offline ({offline}=1)" if offline else f"{urlparse(need.url).netloc} unreachable"
        why = f"not in the {need.where} and {net}"
    fixes = " or ".join(" ".join(f"--set {method}.{kv}" for kv in f.split()) for f in need.fixes)
    return f"{where}: {need.what}: {why}" + (f"; fix: {fixes}" if fixes else "")
