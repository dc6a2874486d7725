"""Paper-ready leaderboard tables (Markdown and LaTeX/booktabs) with significance marks: rendering only.
rsbench.results.leaderboard scans the folder and writes the files; this module turns cells into text.

One table per dataset of the given cells (cells of the test split). Rows are our methods (mean and std
over seeds of the test metrics), sorted by mR, each labelled with a letter (a, b, c, ...). A
superscript on a value lists the letters of the rows that this row beats significantly on that
metric: paired randomisation test over test queries clustered by image, Holm-corrected over all
pairs of the table, at the stated alpha (see rsbench.evaluation.statistics). The best of our rows per
column is bold. With `with_published`, the numbers reported in papers for the same dataset (the
shipped rsbench/data/published_results.csv) follow under a rule and a "reported" heading; they
are not re-run, not tested and not bolded, and rows whose checkpoint was picked on the test set
carry a dagger explained in a footnote.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..datasets.catalogue import display_name
from ..evaluation.metrics import METRIC_HEADERS, METRICS, TABLE_METRICS, TESTED_METRICS
from ..evaluation.statistics import check_alpha
from .compare import MethodRuns, compare_runs, group_runs
from .published import published_results

_SPECS = {s.name: s for s in METRICS}
_TEST_SELECTED = "test"


@dataclass(frozen=True)
class TableOptions:
    """What the tables show: published rows, the significance level and resampling, one dataset or all."""

    with_published: bool = False
    alpha: float = 0.05
    dataset: str | None = None
    resamples: int = 10_000
    seed: int = 0
    labels: tuple[tuple[str, str], ...] = ()  # (method key, printed name) overrides (`--label KEY=NAME`)

    def __post_init__(self) -> None:
        check_alpha(self.alpha)


@dataclass
class Row:
    name: str
    mean: dict[str, float]
    std: dict[str, float] = field(default_factory=dict)
    n_seeds: int = 0
    selection: str = ""
    letter: str = ""
    marks: dict[str, list[str]] = field(default_factory=dict)  # metric -> letters beaten
    reported: bool = False
    source: str = ""
    key: str = ""  # our rows: the method's folder name (name is what is printed)


@dataclass
class Table:
    dataset: str
    split: str
    n_images: int
    n_captions: int
    rows: list[Row]
    published: list[Row]
    alpha: float
    resamples: int
    chance_mr: float = math.nan  # a random scorer's mR on this split (exact; NaN when the cells have none)
    significance: Any = None  # compare_runs' frame behind the marks (None with one method): the report reuses it


# --------------------------------------------------------------------------------------------
# data


def _letters(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(ord("a") + r) + s
    return s


def _selection(runs: MethodRuns) -> str:
    epochs = [m.get("selected_epoch") for m in runs.metrics.values()]
    return "val" if any(e is not None for e in epochs) else "none"


def _our_rows(lb, runs: dict[str, MethodRuns], names: dict[str, str]) -> list[Row]:
    """Rows of one dataset from rsbench.results.leaderboard (mean/std over seeds), sorted by mR;
    `names`: printed name per method key (rsbench.results.names.method_names)."""
    rows = []
    for rec in lb.to_dict("records"):
        if rec["method"] not in runs:
            continue
        rows.append(
            Row(
                name=names.get(rec["method"], rec["method"]),
                key=rec["method"],
                mean={m: float(rec[m]) for m in TABLE_METRICS},
                std={m: float(rec[f"{m}_std"]) for m in TABLE_METRICS},
                n_seeds=int(rec["n_seeds"]),
                selection=_selection(runs[rec["method"]]),
            )
        )
    rows.sort(key=lambda row: (-round(row.mean["mR"], 2), row.key))
    for i, row in enumerate(rows):
        row.letter = _letters(i)
    return rows


def _published_rows(dataset: str) -> list[Row]:
    rows = []
    for p in published_results(dataset):
        name = p["method"].strip() + (f" ({p['variant'].strip()})" if p.get("variant", "").strip() else "")
        rows.append(
            Row(
                name=name,
                mean={m: float(p[m]) for m in TABLE_METRICS},
                selection=p.get("selection", "").strip(),
                reported=True,
                source=p.get("source", "").strip(),
            )
        )
    rows.sort(key=lambda row: (-row.mean["mR"], row.name))
    return rows


def build_tables(cells: Sequence[Any], lb: Any, opts: TableOptions = TableOptions(), *, split: str = "test",
                 where: str = "results") -> list[Table]:
    """Rows, means/stds (from `lb`, results.leaderboard.leaderboard(cells)) and significance marks for
    each dataset of `cells` (those of `split`)."""
    from .names import method_names

    groups = group_runs(cells, opts.dataset, split, where=where)
    names = method_names(cells, dict(opts.labels))
    tables = []
    for (ds, split_), runs in sorted(groups.items()):
        rows = _our_rows(lb[lb["dataset"] == ds], runs, names)
        sig = None
        if len(rows) > 1:
            sig = compare_runs(ds, split_, runs, TESTED_METRICS, opts.alpha, opts.resamples, opts.seed)
            _mark_significant(rows, sig)
        any_cell = next(iter(runs.values()))
        chance = [float(r.metrics[s]["chance_mR"]) for r in runs.values() for s in r.seeds
                  if isinstance(r.metrics[s].get("chance_mR"), (int, float))]  # fmt: skip
        tables.append(Table(
            dataset=ds, split=split_, n_images=any_cell.n_images,
            n_captions=0 if any_cell.cap2img is None else len(any_cell.cap2img), rows=rows,
            published=_published_rows(ds) if opts.with_published else [], alpha=opts.alpha, resamples=opts.resamples,
            chance_mr=chance[0] if chance else math.nan, significance=sig,
        ))
    return tables


def _mark_significant(rows: list[Row], sig: Any) -> None:
    """Give each row, per metric, the letters of the rows it beats significantly (sorted a, b, ..., aa)."""
    by_name = {r.key: r for r in rows}
    for rec in sig[sig["significant"]].itertuples(index=False):
        win, lose = (rec.method_a, rec.method_b) if rec.diff > 0 else (rec.method_b, rec.method_a)
        by_name[win].marks.setdefault(rec.metric, []).append(by_name[lose].letter)
    for r in rows:
        for m in r.marks:
            r.marks[m].sort(key=lambda s: (len(s), s))


def _best(rows: Sequence[Row]) -> dict[str, float]:
    if len(rows) < 2:
        return {}
    return {m: max(round(r.mean[m], 2) for r in rows) for m in TABLE_METRICS}


def _caption_parts(t: Table) -> tuple[str, str, str]:
    seeds = sorted({r.n_seeds for r in t.rows})
    seed_txt = "/".join(str(s) for s in seeds) + " seeds"
    spread = "one seed per method (no spread)" if seeds == [1] else f"mean@PM@std over {seed_txt}"
    main = (
        f"Image-text retrieval on {display_name(t.dataset)} ({t.split} split: {t.n_images} images, "
        f"{t.n_captions} captions). Recall in %, {spread}; mR is the mean of the six recalls; "
        "bold marks the best of our runs per column."
        + ("" if math.isnan(t.chance_mr) else f" Chance level (a random ranking): mR {t.chance_mr:.2f}.")
    )
    sig = ""
    if len(t.rows) > 1:
        sig = (
            "Superscript letters list the rows that an entry is significantly better than at "
            "@ALPHA@: two-sided paired randomisation (sign-flip) test over test queries, "
            f"an image and its captions flipped together, {t.resamples:,} resamples, "
            "Holm-corrected over all pairs of rows per metric."
        )
    pub = ""
    if t.published:
        pub = (
            "Rows under 'reported' are numbers copied from the papers (their own protocols; not re-run, "
            "not tested, not bolded)."
        )
    return main, sig, pub


# --------------------------------------------------------------------------------------------
# LaTeX

_TEX_ESCAPE = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in s)


@dataclass(frozen=True)
class _Markup:
    """How one table format writes a bold best value, significance marks and the std."""

    bold: str  # str.format fields: {v}
    marks: str  # {marks}
    std: str  # {std}


_TEX = _Markup(bold=r"\textbf{{{v}}}", marks=r"\textsuperscript{{{marks}}}", std=r"{{\scriptsize$\pm${std}}}")
_MD = _Markup(bold="**{v}**", marks="<sup>{marks}</sup>", std=" ± {std}")


def _value(r: Row, m: str, best: dict[str, float], markup: _Markup) -> str:
    """mean (bold if best), then the marks of rows it beats significantly, then ± std."""
    v = f"{r.mean[m]:.2f}"
    if m in best and round(r.mean[m], 2) == best[m]:
        v = markup.bold.format(v=v)
    if r.marks.get(m):  # marks sit on the mean, before the std
        v += markup.marks.format(marks=",".join(r.marks[m]))
    if not math.isnan(r.std.get(m, math.nan)):
        v += markup.std.format(std=f"{r.std[m]:.2f}")
    return v


# graphicx: scale the tabular down to the line width when it is wider (never up), so the table fits a
# one-column article as well as a two-column table*.
_SHRINK_TO_LINE = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"


_WRAP = r">{{\raggedright\arraybackslash}}p{{{w}}}"  # array: a ragged-right paragraph column of width w


def _tex_table(t: Table) -> str:
    with_sel = bool(t.published)
    lead = ["", "Method"] + (["Sel."] if with_sel else [])
    nl = len(lead)
    ncol = nl + len(TABLE_METRICS)
    # with the published rows (long names and selections) the text columns wrap, so that the shrink to
    # the line width stays small enough to read
    colspec = ("l" + (_WRAP.format(w="3.3cm") + _WRAP.format(w="2.1cm") if with_sel else "l")) + "rrr" + "rrr" + "r"
    main, sig, pub = _caption_parts(t)
    caption = " ".join(tex_escape(x) for x in (main, sig, pub) if x)
    caption = caption.replace("@ALPHA@", rf"$\alpha={t.alpha:g}$").replace("@PM@", r"$\pm$")
    caption = re.sub(r"'([^'\s][^']*)'", r"`\1'", caption)  # 'quoted' -> LaTeX quotes
    lines = [
        r"\begin{table*}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption}}}",
        rf"\label{{tab:leaderboard-{_label(t.dataset)}-{_label(t.split)}}}",
        r"\vspace{0.5\baselineskip}",  # the standard classes put no space between a top caption and the rule
        r"\setlength{\tabcolsep}{4pt}",
        _SHRINK_TO_LINE,
        rf"\begin{{tabular}}{{{colspec}}}",
        r"\toprule",
        " & " * (nl - 1)
        + r" & \multicolumn{3}{c}{Image$\to$Text} & \multicolumn{3}{c}{Text$\to$Image} & \\",
        rf"\cmidrule(lr){{{nl + 1}-{nl + 3}}} \cmidrule(lr){{{nl + 4}-{nl + 6}}}",
        " & ".join(lead + [_tex_header(m) for m in TABLE_METRICS]) + r" \\",
        r"\midrule",
    ]
    best = _best(t.rows)
    for r in t.rows:
        cells = [f"({r.letter})", tex_escape(r.name)] + ([tex_escape(r.selection)] if with_sel else [])
        cells += [_value(r, m, best, _TEX) for m in TABLE_METRICS]
        lines.append(" & ".join(cells) + r" \\")
    dagger = False
    if t.published:
        lines += [r"\midrule", rf"\multicolumn{{{ncol}}}{{l}}{{\textit{{reported in papers}}}} \\"]
        for r in t.published:
            test_sel = r.selection.lower() == _TEST_SELECTED
            dagger |= test_sel
            name = tex_escape(r.name) + (r"\textsuperscript{\dag}" if test_sel else "")
            cells = ["", name, tex_escape(r.selection)] + [f"{r.mean[m]:.2f}" for m in TABLE_METRICS]
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]  # closes _SHRINK_TO_LINE
    if dagger:
        lines += [r"\par\smallskip", r"{\footnotesize \textsuperscript{\dag}\,checkpoint selected on test.}"]
    lines.append(r"\end{table*}")
    return "\n".join(lines)


def _tex_header(metric: str) -> str:
    """'R@K' under the direction's multicolumn heading; the metric's own header otherwise (mR)."""
    k = _SPECS[metric].recall_k
    return f"R@{k}" if k is not None else METRIC_HEADERS[metric]


def _label(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-" else "-" for ch in s.lower())


# --------------------------------------------------------------------------------------------
# Markdown


def _md_escape(s: str) -> str:
    return s.replace("|", r"\|").replace("*", r"\*").replace("_", r"\_")


def _md_table(t: Table) -> str:
    with_sel = bool(t.published)
    head = ["", "Method"] + (["Sel."] if with_sel else [])
    head += [METRIC_HEADERS[m].replace("I2T", "I→T").replace("T2I", "T→I") for m in TABLE_METRICS]
    align = ["---", ":---"] + ([":---"] if with_sel else []) + ["---:"] * len(TABLE_METRICS)
    lines = [f"### {display_name(t.dataset)} ({t.split})", "", "| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    best = _best(t.rows)
    for r in t.rows:
        cells = [f"({r.letter})", _md_escape(r.name)] + ([r.selection] if with_sel else [])
        cells += [_value(r, m, best, _MD) for m in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    dagger = False
    if t.published:
        lines.append("| | ***reported in papers*** |" + " |" * (len(head) - 2))
        for r in t.published:
            test_sel = r.selection.lower() == _TEST_SELECTED
            dagger |= test_sel
            cells = ["", _md_escape(r.name) + (" †" if test_sel else ""), r.selection]
            cells += [f"{r.mean[m]:.2f}" for m in TABLE_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
    main, sig, pub = _caption_parts(t)
    caption = " ".join(x for x in (main, sig, pub) if x)
    lines += ["", caption.replace("@ALPHA@", f"α = {t.alpha:g}").replace("@PM@", " ± ")]
    if dagger:
        lines += ["", "† checkpoint selected on test."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# public API


def render_tables(tables: Sequence[Table], command: str = "") -> dict[str, str]:
    """{"md", "tex"} texts; `command`: the command that makes them, a `%` comment atop the .tex."""
    md = "\n\n".join(_md_table(t) for t in tables) + "\n"
    made = f"% made by: {command}\n" if command else ""
    tex = (
        made + "% requires \\usepackage{booktabs,graphicx,array}\n" + "\n\n".join(_tex_table(t) for t in tables) + "\n"
    )
    return {"md": md, "tex": tex}
