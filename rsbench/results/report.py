"""`bench report`: one self-contained HTML file of a results folder (no network, no CDN).

Per dataset: the leaderboard (the numbers of leaderboard.csv, sortable, mean ± std, seeds, the
significance marks of the LaTeX table, published rows behind a toggle), the recall@K, mR and
training-curve figures, the paired significance matrix, a small retrieval gallery, and the run
metadata of every cell. Figures are embedded as PNG data URIs and CSS/JS are inline, so the file
opens from a results folder copied to another machine. Nothing here computes a number: the
leaderboard, the marks and the tests come from rsbench.results.cell / tables and
rsbench.evaluation.statistics; the figures from results.plots / curves / gallery.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..datasets.catalogue import display_name
from ..errors import UserError
from ..evaluation.metrics import LEADERBOARD_METRICS, METRIC_HEADERS
from .leaderboard import leaderboard
from .scan import complete_cells
from .tables import Table, TableOptions, build_tables

EMBED_DPI = 130  # figures in the page: sharp on screen, a few hundred kB each
GALLERY_QUERIES = 3


def _header(metric: str) -> str:
    """The leaderboard header of a metric with arrows for the directions (I2T R@1 -> I→T R@1)."""
    return METRIC_HEADERS[metric].replace("I2T", "I→T").replace("T2I", "T→I")


e = html.escape


def figure_uri(fig: Any) -> str:
    """A matplotlib figure as a PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=EMBED_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Any, alt: str, wide: bool = False) -> str:
    """An embedded figure; a wide one (the gallery) keeps its natural size in a scrolling box."""
    cls = "figure wide" if wide else "figure"
    img = f'<img class="{cls}" alt="{e(alt)}" src="{figure_uri(fig)}">'
    return f'<div class="scroll">{img}</div>' if wide else img


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _best(df: Any) -> dict[str, float]:
    """Best mean of our rows per column (highest recall, lowest rank), rounded as shown."""
    if len(df) < 2:
        return {}
    return {m: (min if m.endswith(("_medr", "_meanr")) else max)(round(_num(v), 2) for v in df[m])
            for m in LEADERBOARD_METRICS}


def _metric_td(m: str, mean: float, std: float, marks: list[str], best: dict[str, float]) -> str:
    """One number: data-value = the leaderboard.csv value, shown with 2 decimals, marks, ± std."""
    if math.isnan(mean):
        return f'<td data-metric="{m}" data-value=""></td>'
    cls = ' class="best"' if m in best and round(mean, 2) == best[m] else ""
    sup = f"<sup>{e(','.join(marks))}</sup>" if marks else ""
    sd = f' <span class="std">± {std:.2f}</span>' if not math.isnan(std) else ""
    return (f'<td{cls} data-metric="{m}" data-value="{mean!r}" data-std="{"" if math.isnan(std) else repr(std)}">'
            f"{mean:.2f}{sup}{sd}</td>")


def leaderboard_html(ds: str, df: Any, table: Table | None) -> str:
    """The sortable leaderboard of one dataset: our rows (leaderboard.csv), then published rows (hidden)."""
    rows = {r.key: r for r in table.rows} if table else {}
    best = _best(df)
    head = ['<th class="text">Row</th>', '<th class="text">Method</th>', "<th>Seeds</th>",
            '<th class="text">Sel.</th>'] + [f"<th>{e(_header(m))}</th>" for m in LEADERBOARD_METRICS]
    body = []
    for rec in df.to_dict("records"):
        r = rows.get(rec["method"])
        tds = [f'<td class="text" data-value="">{f"({r.letter})" if r else ""}</td>',
               f'<td class="text">{e(r.name if r else rec["method"])}</td>',
               f'<td data-value="{int(rec["n_seeds"])}">{int(rec["n_seeds"])}</td>',
               f'<td class="text">{e(r.selection) if r else ""}</td>']
        tds += [_metric_td(m, _num(rec[m]), _num(rec[f"{m}_std"]), (r.marks.get(m, []) if r else []), best)
                for m in LEADERBOARD_METRICS]
        body.append(f'<tr class="ours" data-method="{e(rec["method"])}">' + "".join(tds) + "</tr>")
    for p in table.published if table else []:
        tds = ['<td class="text" data-value=""></td>', (f'<td class="text" title="{e(p.source)}">{e(p.name)} '
                                                        "(reported)</td>"), '<td data-value=""></td>', f'<td class="text">{e(p.selection)}</td>']
        tds += [f'<td data-value="{p.mean[m]!r}">{p.mean[m]:.2f}</td>' if m in p.mean else '<td data-value=""></td>'
                for m in LEADERBOARD_METRICS]
        body.append('<tr class="published hidden">' + "".join(tds) + "</tr>")
    tid = f"lb-{e(ds)}"
    toggle = ""
    if table and table.published:
        toggle = (f'<label><input type="checkbox" class="toggle-published" data-table="{tid}"> show the '
                  f"{len(table.published)} published rows (numbers copied from papers: their own protocols, "
                  "not re-run, not tested)</label>")
    alpha = f"α = {table.alpha:g}, {table.resamples:,} resamples" if table else ""
    note = ("Recall in %; mean ± std over seeds (sample std); click a column to sort. Bold: best of our rows. "
            "Superscript letters: the rows this one beats significantly (two-sided paired randomisation test "
            f"over test queries, an image and its captions flipped together, Holm over all pairs; {alpha}).")
    return (f"<h3>Leaderboard</h3>{toggle}<div class=\"scroll\"><table id=\"{tid}\" class=\"leaderboard sortable\">"
            f"<thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
            f'<p class="note">{e(note)}</p>')


def significance_html(sig: Any, metric: str = "mR", names: dict[str, str] | None = None) -> str:
    """Method x method matrix of the paired difference (row - column) in `metric`, Holm-significant cells coloured;
    methods are labelled with `names` (display names) where given."""
    if sig is None or not len(sig):
        return ""
    sig = sig[sig["metric"] == metric]
    methods = sorted(set(sig["method_a"]) | set(sig["method_b"]))
    cell: dict[tuple[str, str], tuple[float, float, bool, float, float]] = {}
    for r in sig.itertuples(index=False):
        cell[(r.method_a, r.method_b)] = (r.diff, r.p_holm, bool(r.significant), r.ci_low, r.ci_high)
        cell[(r.method_b, r.method_a)] = (-r.diff, r.p_holm, bool(r.significant), -r.ci_high, -r.ci_low)
    shown = names or {}
    head = "<th></th>" + "".join(f"<th>{e(shown.get(m, m))}</th>" for m in methods)
    rows = []
    for a in methods:
        tds = [f'<th class="text">{e(shown.get(a, a))}</th>']
        for b in methods:
            if a == b:
                tds.append('<td class="diag">–</td>')
                continue
            d, p, s, lo, hi = cell[(a, b)]
            cls = ("win" if d > 0 else "loss") if s else ""
            tds.append(f'<td class="{cls}" title="95% CI [{lo:+.2f}, {hi:+.2f}], Holm p = {p:.4g}">'
                       f"{d:+.2f}<br><span class=\"muted\">p={p:.3g}</span></td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return ("<h3>Significance (mR)</h3><table class=\"sig-matrix\"><thead><tr>" + head + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table><p class=\"note\">Cell = mR of the row method minus the column "
            "method (points), with the Holm-corrected p of the paired randomisation test; green: row "
            "significantly better, red: significantly worse. Hover for the bootstrap interval. All seven "
            "metrics: <code>bench compare RESULTS --metric all</code>.</p>")


def _run_record(cell: Any) -> tuple[dict[str, Any], str]:
    """run.json of a cell (either schema) and a problem note ('' when it read back or is absent)."""
    from ..io import read_json

    f = Path(cell.path) / "run.json"
    if not f.is_file():
        return {}, "no run.json"
    try:
        rec = read_json(f)
    except UserError as err:
        return {}, str(err)
    return (rec, "") if isinstance(rec, dict) else ({}, f"{f}: not a JSON object")


def metadata_html(cells: list) -> str:
    """One row per cell: versions, hardware, data fingerprint, wall time, selected epoch."""
    head = ["Method", "Seed", "Selected epoch", "Wall (s)", "Train (s)", "Device", "Precision", "rsbench",
            "torch", "Data fingerprint", "Finished"]
    rows, fps = [], set()
    for c in sorted(cells, key=lambda c: (c.method, c.seed)):
        rec, problem = _run_record(c)
        data = rec.get("data") if isinstance(rec.get("data"), dict) else {}
        fp = str(data.get("fingerprint") or rec.get("data_fingerprint") or "")
        fps.add(fp) if fp else None
        hw = rec.get("hardware") if isinstance(rec.get("hardware"), dict) else {}
        ver = rec.get("versions") if isinstance(rec.get("versions"), dict) else {}
        wall = rec.get("wall_s", rec.get("wall_seconds", ""))
        vals = [c.method, c.seed, c.metrics.get("selected_epoch"), wall, rec.get("train_seconds", ""),
                hw.get("gpu") or hw.get("device", ""), rec.get("precision", ""), ver.get("rsbench", ""),
                ver.get("torch", ""), fp[:12], rec.get("finished", problem)]
        rows.append("<tr>" + "".join(
            f'<td class="text"{f" title={chr(34)}{e(fp)}{chr(34)}" if i == 9 else ""}>'
            f"{'' if v is None else e(str(v))}</td>" for i, v in enumerate(vals)) + "</tr>")
    warn = ""
    if len(fps) > 1:
        warn = (f'<p class="warn">The cells of this dataset were run on {len(fps)} different data fingerprints: '
                "their numbers are not comparable.</p>")
    return ("<h3>Runs</h3>" + warn + '<div class="scroll"><table class="sortable meta"><thead><tr>'
            + "".join(f'<th class="text">{h}</th>' for h in head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></div><p class=\"note\">From each cell's run.json and metrics.json; hover a "
            "fingerprint for all of it. Full versions and the command line are in run.json.</p>")


def _try(what: str, make: Callable[[], str]) -> str:
    """A section, or one line saying why it is missing (a report never fails for one figure)."""
    try:
        return make()
    except UserError as err:
        return f'<p class="note">{e(what)} not included: {e(str(err))}</p>'


def figures_html(ds: str, cells: list, runs: dict, styles: dict) -> str:
    """Recall@K, mR and training-curve figures of one dataset as embedded PNGs."""
    from .curves import collect_logs, curves_figure
    from .names import method_names
    from .plots import mr_figure, recall_figure

    names = method_names(cells)
    parts = ["<h3>Recall@K and mR</h3>", _img(recall_figure(runs, styles, ds, "test", names=names), f"{ds} recall@K"),
             _img(mr_figure(runs, styles, ds, "test", names), f"{ds} mR")]
    logs = collect_logs([c for c in cells if c.dataset == ds]).get(ds)
    parts.append("<h3>Training curves</h3>")
    parts.append(_img(curves_figure(logs, styles, ds, names), f"{ds} training curves") if logs else
                 '<p class="note">No cell of this dataset has a train_log.csv (zero-shot or scored cells).</p>')
    return "".join(parts)


def gallery_html(ds: str, cells: list, data_root: str | Path | None, n: int, seed: int) -> str:
    """A few text -> image queries of every method (the `bench gallery` figure)."""
    from .gallery import build_gallery

    fig, queries = build_gallery(cells, ds, n=n, seed=seed, data_root=data_root)
    cmd = f"bench gallery RESULTS --dataset {ds} --queries 8 --direction i2t"
    return ("<h3>Gallery</h3>" + _img(fig, f"{ds} gallery", wide=True) + f'<p class="note">Test captions {queries} '
            f"(drawn with seed {seed}), one cell per method (its lowest seed). More, or image → text: "
            f"<code>{e(cmd)}</code>.</p>")


def dataset_html(ds: str, cells: list, table: Table | None, sig: Any, styles: dict, opts: dict[str, Any]) -> str:
    """The section of one dataset."""
    from .compare import group_runs
    from .names import method_names

    mine = [c for c in cells if c.dataset == ds]
    runs = group_runs(mine, ds, "test")[(ds, "test")]
    size = f"test split: {table.n_images} images, {table.n_captions} captions" if table else ""
    parts = [f'<section id="ds-{e(ds)}"><h2>{e(display_name(ds))} <span class="muted">{e(size)}</span></h2>',
             leaderboard_html(ds, leaderboard(mine), table),
             figures_html(ds, mine, runs, styles), significance_html(sig, names=method_names(mine))]
    if opts["gallery_queries"] > 0:
        parts.append(_try("Gallery", lambda: gallery_html(ds, mine, opts["data_root"].get(ds, opts["data_root"].get("")),
                                                          opts["gallery_queries"], opts["seed"])))
    parts.append(metadata_html(mine))
    return "".join(parts) + "</section>"


def build_report(results_dir: str | Path, dataset: str | None = None, data_root: dict[str, str] | None = None,
                 alpha: float = 0.05, resamples: int = 10_000, seed: int = 0, skip_damaged: bool = False,
                 gallery_queries: int = GALLERY_QUERIES) -> str:
    """The whole HTML page (a string). data_root: {dataset: folder} for the gallery images ('' = any)."""
    from .. import __version__
    from .plots import method_styles
    from .report_template import CSS, JS

    cells = complete_cells(results_dir, skip_damaged)
    options = TableOptions(with_published=True, alpha=alpha, dataset=dataset, resamples=resamples, seed=seed)
    tables = {t.dataset: t for t in build_tables(cells, leaderboard(cells), options, where=str(results_dir))}
    styles = method_styles([c.method for c in cells])
    opts = {"data_root": data_root or {}, "gallery_queries": gallery_queries, "seed": seed}
    sections = []
    for ds, table in sorted(tables.items()):  # the tables' own significance tests (run once, not again here)
        sections.append(dataset_html(ds, cells, table, table.significance, styles, opts))
    nav = " ".join(f'<a href="#ds-{e(ds)}">{e(display_name(ds))}</a>' for ds in sorted(tables))
    title = f"rsbench report: {Path(results_dir).resolve().name}"
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f"<header><h1>{e(title)}</h1><p class=\"muted\">{len(cells)} complete cells, written {stamp} by "
            f"rsbench {e(__version__)}. Test split only; every number comes from the cells' metrics.json and "
            f"ranks.npz (the same as leaderboard.csv).</p><nav>{nav}</nav></header>"
            + "".join(sections) + f"<script>{JS}</script></body></html>\n")


def write_report(results_dir: str | Path, out: str | Path | None = None, **kw: Any) -> Path:
    """Write the report (default <results_dir>/report.html) atomically; returns its path."""
    from ..io import write_text

    path = Path(out) if out is not None else Path(results_dir) / "report.html"
    page = build_report(results_dir, **kw)
    write_text(path, page)
    return path
