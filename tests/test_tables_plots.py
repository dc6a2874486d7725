"""Leaderboard tables (rsbench.results.tables) and figures (rsbench.results.plots) from synthetic result folders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from rsbench.results.cell import write_eval_outputs
from rsbench.results.leaderboard import leaderboard_files, write_leaderboard
from rsbench.results.published import published_results
from rsbench.results.tables import TableOptions, tex_escape


def leaderboard_tables(results_dir: Path, **options) -> dict[str, str]:
    """{"md", "tex"} texts as the one leaderboard writer would write them (nothing written)."""
    _, files = leaderboard_files(results_dir, options=TableOptions(**options))
    return {p.suffix[1:]: text for p, text in files.items() if p.suffix in (".md", ".tex")}

FAR = 50


def _ranks(rng, easy, p_easy, p_hard, caps=5):
    n = easy.size
    cap2img = np.repeat(np.arange(n), caps)
    p = np.where(easy, p_easy, p_hard)
    i2t = np.where(rng.random(n) < p, 1 + rng.integers(0, 3, n), FAR)
    t2i = np.where(rng.random(cap2img.size) < p[cap2img], 1 + rng.integers(0, 8, cap2img.size), FAR)
    return i2t, t2i, cap2img


def make_results(root: Path, dataset: str = "rsicd", n: int = 150, seeds=(0, 1, 2)) -> Path:
    """best >> mid >> worst (big planted gaps); open_clip ties with mid (same generator)."""
    rng = np.random.default_rng(0)
    easy = rng.random(n) < 0.5
    spec = {"best": (0.95, 0.6), "mid": (0.7, 0.3), "open_clip": (0.7, 0.3), "worst": (0.4, 0.05)}
    for method, (pe, ph) in spec.items():
        for s in seeds:
            i2t, t2i, cap2img = _ranks(rng, easy, pe, ph)
            extra = {"selected_epoch": None if method == "open_clip" else 4}
            write_eval_outputs(root / dataset / method / f"seed{s}", i2t, t2i, cap2img, extra)
    return root


def balanced_braces(tex: str) -> bool:
    depth = 0
    for m in re.finditer(r"\\.|[{}]", tex):  # skip escaped characters such as \{ \} \%
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("res"))


@pytest.fixture(scope="module")
def tables(results) -> dict[str, str]:
    return leaderboard_tables(results, with_published=True, alpha=0.05, resamples=999)


def _row(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if f"& {name} &" in line or f"| {name} |" in line)


def test_tex_structure_bold_and_marks(tables):
    tex = tables["tex"]
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule"):
        assert rule in tex
    assert balanced_braces(tex)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.count(r"\begin{table*}") == tex.count(r"\end{table*}") == 1
    # rows sorted by mR and lettered: best (a); mid and open_clip tie in distribution (b/c); worst (d)
    best, worst = _row(tex, "best"), _row(tex, "worst")
    assert _row(tex, "mid").startswith(("(b)", "(c)")) and _row(tex, "open\\_clip").startswith(("(b)", "(c)"))
    assert best.startswith("(a)") and worst.startswith("(d)")
    cells = best.rstrip(" \\").split(" & ")
    assert all(c.startswith(r"\textbf{") for c in cells[3:])  # best in every metric column
    assert cells[-1].split("{\\scriptsize")[0].endswith(r"\textsuperscript{b,c,d}")  # mR beats all three
    mid_mr = _row(tex, "mid").rstrip(" \\").split(" & ")[-1]
    assert r"\textsuperscript{d}{\scriptsize$\pm$" in mid_mr  # beats worst, not its twin open_clip
    assert r"\textsuperscript" not in worst
    assert "open\\_clip" in tex  # names are escaped
    assert r"\alpha=0.05" in tex and "Holm" in tex and "randomisation" in tex
    assert r"{\scriptsize$\pm$" in tex  # std over seeds


def test_tex_published_rows(tables):
    tex = tables["tex"]
    body = tex.split(r"\bottomrule")[0]
    ours, reported = body.split(r"\textit{reported in papers}")
    assert "best" in ours and "RemoteCLIP" in reported
    assert "\\midrule\n\\multicolumn{10}{l}{\\textit{reported in papers}} \\\\\n" in tex  # separated
    n_pub = len(published_results("rsicd"))
    assert reported.count(r"\\") == n_pub + 1  # + the heading row
    assert r"PIR\textsuperscript{\dag} & test" in reported  # test-selected: dagger + selection
    assert r"SWAN & val" in reported
    assert "checkpoint selected on test" in tex
    assert r"\textbf" not in reported  # reported rows are never bolded


def test_markdown(tables):
    md = tables["md"]
    assert md.startswith("### RSICD (test)")
    best = _row(md, "best")
    assert "**" in best and best.rstrip(" |").split(" | ")[-1].startswith("**") and "<sup>b,c,d</sup> ± " in best
    assert "***reported in papers***" in md and "PIR †" in md and "† checkpoint selected on test." in md
    header = next(line for line in md.splitlines() if line.startswith("|  | Method"))
    assert all(line.count("|") == header.count("|") for line in md.splitlines() if line.startswith("|"))


def test_without_published_and_write(results, tmp_path):
    texts = leaderboard_tables(results, with_published=False, alpha=0.01, resamples=199)
    assert "reported" not in texts["tex"] and r"\dag" not in texts["tex"]
    assert r"\alpha=0.01" in texts["tex"]
    write_leaderboard(results, tmp_path / "out", options=TableOptions(with_published=True, resamples=199))
    assert (tmp_path / "out" / "leaderboard.tex").read_text().count(r"\toprule") == 1
    assert (tmp_path / "out" / "leaderboard.md").read_text().startswith("### RSICD")
    assert (tmp_path / "out" / "leaderboard.csv").read_text().startswith("dataset,method,n_seeds,mR,")
    with pytest.raises(Exception, match="alpha"):
        TableOptions(alpha=1.5)


def test_tex_escape():
    assert tex_escape("a_b&c%d$e#f{g}h~i^j\\") == (
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}"
    )
    assert balanced_braces(tex_escape("{{{ unbalanced"))


def test_single_method_single_seed(tmp_path):
    root = tmp_path / "r"
    rng = np.random.default_rng(1)
    i2t, t2i, cap2img = _ranks(rng, rng.random(20) < 0.5, 0.8, 0.3)
    write_eval_outputs(root / "synthetic" / "solo" / "seed0", i2t, t2i, cap2img)
    texts = leaderboard_tables(root, with_published=True)
    assert "textsuperscript" not in texts["tex"] and r"\textbf" not in texts["tex"]
    assert balanced_braces(texts["tex"]) and "solo" in texts["md"]


# ---------------------------------------------------------------------------------------------
# plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_written(results, tmp_path):
    from rsbench.results.plots import plot_results

    paths = plot_results(results, tmp_path / "fig")
    names = sorted(p.name for p in paths)
    assert names == ["rsicd_mR.pdf", "rsicd_mR.png", "rsicd_recall.pdf", "rsicd_recall.png"]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000
        assert data.startswith(PNG if p.suffix == ".png" else b"%PDF")
    assert not list((tmp_path / "fig").glob(".*.tmp"))  # atomic writes left no temp files


def test_plot_single_seed_linear_axis_and_cli(tmp_path):
    from typer.testing import CliRunner

    from rsbench.cli.app import build_app

    root = make_results(tmp_path / "r", dataset="rsitmd", n=40, seeds=(0,))
    result = CliRunner().invoke(build_app(), ["plot", str(root), "--no-logx", "--dataset", "rsitmd"])
    assert result.exit_code == 0, result.output
    for stem in ("rsitmd_recall", "rsitmd_mR"):
        for ext in ("png", "pdf"):
            assert (root / "figures" / f"{stem}.{ext}").stat().st_size > 1000


def test_method_colours_stable_and_colour_blind_safe():
    from rsbench.results.plots import OKABE_ITO, method_styles

    a = method_styles(["vsepp", "amfmn", "msa"])
    b = method_styles(["msa", "amfmn", "vsepp", "amfmn"])
    assert a == b
    assert len({s["color"] for s in a.values()}) == 3
    assert all(s["color"] in OKABE_ITO for s in a.values())
    many = method_styles([f"m{i:02d}" for i in range(10)])
    assert len({(s["color"], s["linestyle"]) for s in many.values()}) == 10  # distinct beyond 8


def test_save_figure_embeds_truetype_fonts(tmp_path):
    """Every figure's PDF carries TrueType fonts (editable text, accepted by publishers), never Type 3;
    the rc in force when the figure was built does not matter, only save_figure's."""
    from matplotlib.figure import Figure

    from rsbench.results.plots import save_figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().set_title("R@1 mR")
    paths = save_figure(fig, tmp_path / "fig")
    assert [p.name for p in paths] == ["fig.png", "fig.pdf"]
    pdf = (tmp_path / "fig.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType outlines (Type 42), no Type 3 font


def test_bench_plot_draws_training_curves_and_help_lists_report_and_gallery(tmp_path):
    """`bench plot` adds <dataset>_training.{png,pdf} for cells with a train_log.csv (none without);
    `bench report` and `bench gallery` are registered commands."""
    from typer.testing import CliRunner

    from rsbench.cli.app import build_app
    from rsbench.io import write_text

    root = make_results(tmp_path / "r", dataset="rsitmd", n=40, seeds=(0,))
    result = CliRunner().invoke(build_app(), ["plot", str(root)])
    assert result.exit_code == 0, result.output
    assert not list((root / "figures").glob("*_training.*"))  # no logs (e.g. bench score cells): no figure
    for cell in root.glob("rsitmd/*/seed0"):
        write_text(cell / "train_log.csv", "epoch,loss,val_mR,lr,seconds\n1,2.0,10,0.001,1\n2,1.5,20,0.001,1\n")
    result = CliRunner().invoke(build_app(), ["plot", str(root)])
    assert result.exit_code == 0, result.output
    for ext in ("png", "pdf"):
        assert (root / "figures" / f"rsitmd_training.{ext}").stat().st_size > 1000
        assert f"rsitmd_training.{ext}" in result.output
    help_text = CliRunner().invoke(build_app(), ["--help"]).output
    assert "report" in help_text and "gallery" in help_text


def _runs_of(root: Path, dataset: str):
    from rsbench.results.compare import group_runs
    from rsbench.results.plots import method_styles
    from rsbench.results.scan import complete_cells

    cells = complete_cells(root)
    runs = group_runs(cells, dataset, "test")[(dataset, "test")]
    return runs, method_styles(list(runs))


@pytest.mark.parametrize("logx", [True, False])
def test_recall_axis_stops_at_gallery_and_draws_chance(tmp_path, logx):
    """#21: with 15 test images (75 captions) the K axis stops at the gallery of each direction (75
    captions for image->text, 15 images for text->image), the closed-form chance curve is drawn in
    grey, and y runs past 100 so a curve at 100 % does not sit on the frame."""
    from matplotlib.colors import to_hex

    from rsbench.evaluation.metrics import chance_curve
    from rsbench.results.plots import recall_figure

    root = make_results(tmp_path / "r", dataset="rsitmd", n=15, seeds=(0, 1))
    runs, styles = _runs_of(root, "rsitmd")
    fig = recall_figure(runs, styles, "rsitmd", "test", logx=logx)
    axes = fig.axes[:2]
    c2i = next(iter(runs.values())).cap2img
    for ax, gallery, q in zip(axes, (75, 15), (0, 1)):
        hi = ax.get_xlim()[1]
        assert gallery <= hi <= gallery * 1.15, (q, hi)
        assert ax.get_ylim()[1] > 100
        for line in ax.get_lines():
            assert np.max(line.get_xdata()) <= gallery
        grey = [ln for ln in ax.get_lines() if ln.get_label() == "chance"]
        assert len(grey) == 1
        r, g, b = (int(to_hex(grey[0].get_color())[i:i + 2], 16) for i in (1, 3, 5))
        assert r == g == b  # grey
        k = np.asarray(grey[0].get_xdata())
        np.testing.assert_array_equal(k, np.arange(1, gallery + 1))
        np.testing.assert_allclose(grey[0].get_ydata(), chance_curve(c2i, k)[q])


def test_mr_chart_chance_legend_overlaps_nothing_with_one_method(tmp_path):
    """#21: with one method the chance legend box overlapped the bar's value label; it must overlap
    neither the labels nor the bars."""
    from rsbench.results.plots import mr_figure

    root = tmp_path / "r"
    rng = np.random.default_rng(1)
    i2t, t2i, cap2img = _ranks(rng, rng.random(20) < 0.5, 0.99, 0.99)
    i2t[:], t2i[:] = 1, 1  # mR 100.0: the widest value label, at the top next to the legend
    write_eval_outputs(root / "rsicd" / "solo" / "seed0", i2t, t2i, cap2img)
    runs, styles = _runs_of(root, "rsicd")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = mr_figure(runs, styles, "rsicd", "test")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [lg for ax in fig.axes for lg in ([ax.get_legend()] if ax.get_legend() else [])] + fig.legends
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    ax = fig.axes[0]
    others = [t.get_window_extent(renderer) for t in ax.texts] + [p.get_window_extent(renderer) for p in ax.patches]
    others.append(ax.title.get_window_extent(renderer))
    assert ax.texts and ax.patches
    for o in others:
        assert not box.padded(2).overlaps(o), (box, o)  # not even touching


# ---------------------------------------------------------------------------------------------
# #21: display names


def test_methods_declare_display_names_amfmn_by_variant():
    import dataclasses

    from rsbench.methods.registry import get_method_spec, list_methods

    assert get_method_spec("vsepp").display_name() == "VSE++"
    assert get_method_spec("clip").display_name() == "CLIP"
    assert get_method_spec("msa").display_name() == "MSA"
    amfmn = get_method_spec("amfmn")
    assert amfmn.display_name() == "AMFMN (soft)"
    assert amfmn.display_name(dataclasses.replace(amfmn.config_cls(), variant="fusion")) == "AMFMN (fusion)"
    shown = [m.display_name() for m in list_methods()]
    assert len(set(shown)) == len(shown)  # no two methods print alike
    assert all(m.display is not None for m in list_methods())  # each declares one


def test_cell_config_records_display_name_and_set_overrides_it(tmp_path):
    """config.json carries the printed name (the method's, or `--set display_name=...`); it does not
    change results, so resuming with another name is not a config mismatch."""
    from rsbench.config.resolve import resolve_config
    from rsbench.engine.cellfolder import check_cell_config, config_record
    from rsbench.io import write_json

    cfg = resolve_config("amfmn", "synthetic", overrides={"variant": "fusion"})
    assert config_record(cfg)["display_name"] == "AMFMN (fusion)"
    mine = resolve_config("amfmn", "synthetic", overrides={"display_name": "AMFMN-ours"})
    assert config_record(mine)["display_name"] == "AMFMN-ours"
    write_json(tmp_path / "config.json", config_record(resolve_config("amfmn", "synthetic")))
    check_cell_config(tmp_path, mine)  # no ConfigMismatch


def _cell_with_name(root: Path, method: str, shown: str | None, seed: int = 0, p: float = 0.8) -> None:
    from rsbench.io import write_json

    rng = np.random.default_rng(seed + len(method))
    i2t, t2i, cap2img = _ranks(rng, rng.random(30) < 0.5, p, 0.3)
    cell = root / "rsicd" / method / f"seed{seed}"
    write_eval_outputs(cell, i2t, t2i, cap2img)
    if shown is not None:
        write_json(cell / "config.json", {"method": method, "display_name": shown})


def test_tables_and_figures_print_display_names_label_overrides(tmp_path, capsys):
    from helpers import run_cli
    from typer.testing import CliRunner

    from rsbench.cli.app import build_app
    from rsbench.results.compare import group_runs
    from rsbench.results.names import method_names
    from rsbench.results.plots import method_styles, mr_figure, recall_figure
    from rsbench.results.scan import complete_cells

    root = tmp_path / "r"
    _cell_with_name(root, "vsepp", "VSE++", p=0.9)
    _cell_with_name(root, "amfmn", "AMFMN (soft)", p=0.6)
    _cell_with_name(root, "scored", None, p=0.4)  # `bench score` cell: no config.json, the folder name
    texts = leaderboard_tables(root)
    assert "| VSE++ |" in texts["md"] and "| AMFMN (soft) |" in texts["md"] and "| scored |" in texts["md"]
    assert "| vsepp |" not in texts["md"] and "& VSE++ &" in texts["tex"]
    cells = complete_cells(root)
    runs = group_runs(cells, "rsicd", "test")[("rsicd", "test")]
    names = method_names(cells, {"scored": "Scored model"})
    styles = method_styles(list(runs))
    legend = [t.get_text() for t in recall_figure(runs, styles, "rsicd", "test", names=names).legends[0].get_texts()]
    assert set(legend) == {"VSE++", "AMFMN (soft)", "Scored model", "chance"}
    ticks = [t.get_text() for t in mr_figure(runs, styles, "rsicd", "test", names).axes[0].get_xticklabels()]
    assert ticks == ["VSE++", "AMFMN (soft)", "Scored model"]
    res = CliRunner().invoke(build_app(), ["leaderboard", str(root), "--label", "vsepp=VSE++ (ours)"])
    assert res.exit_code == 0, res.output
    assert "| VSE++ (ours) |" in (root / "leaderboard.md").read_text()
    code, _, err = run_cli(["leaderboard", str(root), "--label", "vsepp"], capsys)
    assert code == 2 and err.strip() == "error: --label 'vsepp': expected METHOD=NAME, e.g. --label vsepp=VSE++"
    assert CliRunner().invoke(build_app(), ["plot", str(root), "--label", "amfmn=A"]).exit_code == 0


# ---------------------------------------------------------------------------------------------
# #21: LaTeX that goes into a paper as it is


def test_tex_one_seed_quotes_command_and_shrink(tmp_path):
    root = tmp_path / "r"
    _cell_with_name(root, "vsepp", "VSE++", p=0.9)
    _cell_with_name(root, "amfmn", "AMFMN (soft)", p=0.6)
    from rsbench.results.leaderboard import leaderboard_files
    from rsbench.results.tables import TableOptions

    _, files = leaderboard_files(root, options=TableOptions(with_published=True, labels=(("vsepp", "VSE++ (x)"),)))
    tex = next(t for p, t in files.items() if p.suffix == ".tex")
    assert tex.splitlines()[0] == f"% made by: bench leaderboard {root} --with-published --label 'vsepp=VSE++ (x)'"
    assert r"\pm" not in tex and "one seed per method" in tex  # no ± claim from one seed
    assert "`reported'" in tex and "'reported'" not in tex
    assert r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%" in tex
    assert tex.index(r"\caption") < tex.index(r"\vspace") < tex.index(r"\toprule")
    assert balanced_braces(tex)


@pytest.mark.skipif(__import__("shutil").which("pdflatex") is None, reason="pdflatex not installed")
def test_tex_compiles_in_one_column_article_without_overfull_boxes(tmp_path, results):
    import subprocess

    from rsbench.io import write_text

    texts = leaderboard_tables(results, with_published=True, resamples=199)
    doc = ("\\documentclass{article}\n\\usepackage{booktabs,graphicx,array}\n\\begin{document}\n"
           + texts["tex"] + "\n\\end{document}\n")
    write_text(tmp_path / "doc.tex", doc)
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert run.returncode == 0, log[-2000:]
    assert "Overfull \\hbox" not in log and (tmp_path / "doc.pdf").stat().st_size > 1000


def test_with_published_on_unpublished_dataset_says_so_and_csv_has_split_and_chance(tmp_path, capsys):
    """#21: `--with-published` on a dataset without published rows says so in one line; the leaderboard
    CSV carries the split and the chance mR, the paper tables the chance level."""
    import csv

    from helpers import run_cli

    from rsbench.evaluation.metrics import chance_metrics

    root = tmp_path / "r"
    rng = np.random.default_rng(2)
    i2t, t2i, cap2img = _ranks(rng, rng.random(12) < 0.5, 0.8, 0.3)
    write_eval_outputs(root / "synthetic" / "solo" / "seed0", i2t, t2i, cap2img)
    code, _, err = run_cli(["leaderboard", str(root), "--with-published"], capsys)
    assert code == 0
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no published rows for synthetic" in notes[0] and "rsicd" in notes[0]
    code, _, err = run_cli(["leaderboard", str(root)], capsys)
    assert code == 0 and "note:" not in err  # without the option: nothing to say
    with open(root / "leaderboard.csv", encoding="utf-8", newline="") as fh:
        row = next(csv.DictReader(fh))
    chance = chance_metrics(cap2img)["chance_mR"]
    assert row["split"] == "test" and float(row["chance_mR"]) == pytest.approx(chance)
    md = (root / "leaderboard.md").read_text()
    assert f"Chance level (a random ranking): mR {chance:.2f}." in md and "(test)" in md
    assert f"mR {chance:.2f}." in (root / "leaderboard.tex").read_text()
