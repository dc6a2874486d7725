"""`bench report` (self-contained HTML), `bench gallery` and the training curves, on fake result folders.

The fake folder: a tiny UCM-layout dataset (tests/fakedata.py), and result cells written with the
real writers from planted score matrices over its test split: `perfect` (each caption scores 1 with
its own image, 0 elsewhere), `reversed` (the opposite) and `noisy` (random), three seeds each.
"""

from __future__ import annotations

import csv
import html.parser
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fakedata import make_karpathy

from rsbench.datasets import load_dataset
from rsbench.evaluation.metrics import compute_ranks
from rsbench.evaluation.topk import topk_from_scores
from rsbench.io import write_json, write_text
from rsbench.results.cell import write_eval_outputs
from rsbench.results.curves import plot_training_curves, read_train_log
from rsbench.results.gallery import build_gallery, choose_queries, gallery, load_method_top, tile_hits
from rsbench.results.leaderboard import write_leaderboard
from rsbench.results.report import write_report
from rsbench.results.scan import scan_results

SEEDS = (0, 1, 2)


def _scores(kind: str, cap2img: np.ndarray, n_images: int, seed: int) -> np.ndarray:
    own = (np.arange(n_images)[:, None] == cap2img[None, :]).astype(np.float64)
    rng = np.random.default_rng(seed)
    if kind == "perfect":
        return own
    if kind == "reversed":
        return -own
    return rng.normal(size=own.shape) + 0.8 * own


def _cell(root: Path, method: str, seed: int, sims: np.ndarray, cap2img: np.ndarray) -> None:
    cell = root / "ucm" / method / f"seed{seed}"
    i2t, t2i = compute_ranks(sims, cap2img)
    epochs = range(1, 5)
    rows = ["epoch,loss,val_mR,lr,seconds"] + [f"{e},{2.0 / e + 0.1 * seed:.4f},{20 + 5 * e + seed},0.001,1.5"
                                               for e in epochs]
    write_text(cell / "train_log.csv", "\n".join(rows) + "\n")
    write_json(cell / "run.json", {"versions": {"rsbench": "test", "torch": "2.x"}, "hardware": {"device": "cpu"},
                                   "precision": "fp32", "data": {"fingerprint": "f" * 64}, "wall_s": 12.5,
                                   "finished": "2025-01-01T00:00:00"})
    write_eval_outputs(cell, i2t, t2i, cap2img, {"selected_epoch": 3}, topk=topk_from_scores(sims))


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("report")
    fs = make_karpathy(tmp / "data", "ucm", per_class=12)
    test = load_dataset("ucm", data_root=fs.root).test
    c2i = np.asarray(test.cap2img, dtype=np.int64)
    res = tmp / "results"
    for m in ("perfect", "reversed", "noisy"):
        for s in SEEDS:
            _cell(res, m, s, _scores(m, c2i, test.n_images, s), c2i)
    write_leaderboard(res)
    return {"results": res, "data_root": fs.root, "split": test, "cap2img": c2i, "tmp": tmp}


# ---------------------------------------------------------------------------------------------
# gallery


def test_tile_hits_perfect_and_reversed(grid):
    cells = {(c.method, c.seed): c for c in scan_results(grid["results"])}
    c2i = grid["cap2img"]
    perfect, rev = load_method_top(cells[("perfect", 0)]), load_method_top(cells[("reversed", 0)])
    for q in range(len(c2i)):  # text -> image: the one own image at rank 1, then four misses
        assert tile_hits(perfect.top.t2i_idx[q, :5], q, "t2i", c2i).tolist() == [True] + [False] * 4
        assert not tile_hits(rev.top.t2i_idx[q, :5], q, "t2i", c2i).any()
    for q in range(int(c2i.max()) + 1):  # image -> text: five own captions, all five tiles hits
        assert tile_hits(perfect.top.i2t_idx[q, :5], q, "i2t", c2i).all()
        assert not tile_hits(rev.top.i2t_idx[q, :5], q, "i2t", c2i).any()


def test_query_choice_is_seeded_and_differ_picks_the_largest_gap():
    assert choose_queries(50, 4, seed=3) == choose_queries(50, 4, seed=3)
    assert choose_queries(50, 4, seed=3) != choose_queries(50, 4, seed=4)
    a = np.ones(20, dtype=np.int64)
    b = np.ones(20, dtype=np.int64)
    b[[4, 11]] = [30, 7]
    assert choose_queries(20, 2, ranks=(a, b)) == [4, 11]
    assert choose_queries(20, 2, query_ids=[7, 3]) == [7, 3]


def test_gallery_writes_png_and_pdf_with_embedded_truetype(grid):
    out = grid["tmp"] / "gal"
    for direction in ("t2i", "i2t"):
        paths, queries = gallery(grid["results"], "ucm", out_dir=out, methods=["perfect", "reversed"], n=2,
                                 direction=direction, data_root=grid["data_root"], differ=True)
        assert [p.name for p in paths] == [f"ucm_gallery_{direction}.png", f"ucm_gallery_{direction}.pdf"]
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
        assert b"/FontFile2" in paths[1].read_bytes()  # TrueType embedded (pdf.fonttype 42), not Type 3
        assert len(queries) == 2


def test_gallery_refuses_other_data(grid, tmp_path):
    from rsbench.errors import UserError

    other = make_karpathy(tmp_path / "other", "ucm", per_class=6)
    with pytest.raises(UserError, match="not the one the cells were scored on"):
        build_gallery(scan_results(grid["results"]), "ucm", data_root=other.root)
    with pytest.raises(UserError, match="unknown method 'nope'"):
        build_gallery(scan_results(grid["results"]), "ucm", methods=["nope"], split=grid["split"])


# ---------------------------------------------------------------------------------------------
# training curves


def test_training_curves_written(grid):
    paths = plot_training_curves(grid["results"], grid["tmp"] / "fig")
    assert [p.name for p in paths] == ["ucm_training.png", "ucm_training.pdf"]
    log = read_train_log(grid["results"] / "ucm" / "noisy" / "seed1" / "train_log.csv")
    assert log["epoch"].tolist() == [1, 2, 3, 4] and log["val_mR"][0] == 26


# ---------------------------------------------------------------------------------------------
# the HTML report


class _Page(html.parser.HTMLParser):
    """Collects leaderboard number cells, image sources and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers: list[tuple[str, str, str, str]] = []  # (method, metric, value, std)
        self.urls: list[str] = []
        self.imgs: list[str] = []
        self._method = None
        self._in_lb = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "table":
            self._in_lb = "leaderboard" in (a.get("class") or "")
        if tag == "tr" and self._in_lb:
            self._method = a.get("data-method") if "ours" in (a.get("class") or "") else None
        if tag == "td" and self._method and "data-metric" in a:
            self.numbers.append((self._method, a["data-metric"], a["data-value"], a.get("data-std", "")))


@pytest.fixture(scope="module")
def page(grid) -> tuple[Path, _Page, str]:
    path = write_report(grid["results"], data_root={"ucm": str(grid["data_root"])}, resamples=499)
    text = path.read_text(encoding="utf-8")
    p = _Page()
    p.feed(text)
    return path, p, text


def test_every_leaderboard_number_equals_the_csv(grid, page):
    _, p, _ = page
    with open(grid["results"] / "leaderboard.csv", encoding="utf-8") as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    metrics = [k for k in next(iter(csv_rows.values())) if k not in ("dataset", "method", "n_seeds", "split", "chance_mR")
               and not k.endswith("_std")]
    assert len(p.numbers) == len(csv_rows) * len(metrics) == 3 * 11
    for method, metric, value, std in p.numbers:
        assert float(value) == float(csv_rows[method][metric])
        want_std = csv_rows[method][f"{metric}_std"]
        assert (std == "" and want_std == "") or math.isclose(float(std), float(want_std), rel_tol=0, abs_tol=0)


def test_report_is_self_contained_and_has_every_section(page):
    _, p, text = page
    assert len(p.imgs) == 4  # recall, mR, training curves, gallery
    assert all(src.startswith("data:image/png;base64,") for src in p.imgs)
    assert not [u for u in p.urls if u.startswith(("http:", "https:", "//"))]
    assert not [u for u in p.urls if not u.startswith(("data:", "#"))]  # nothing read from beside the file
    for needle in ("Significance (mR)", "Training curves", "Gallery", "Runs", "toggle-published", "<script>"):
        assert needle in text
    assert "not included" not in text


def test_marks_match_the_latex_table(grid, page):
    """perfect beats both others on mR; the marks in the page are those of rsbench.results.tables."""
    from rsbench.results.leaderboard import leaderboard
    from rsbench.results.tables import TableOptions, build_tables

    cells = scan_results(grid["results"])
    t = build_tables(cells, leaderboard(cells), TableOptions(alpha=0.05, resamples=499))[0]
    _, _, text = page
    for r in t.rows:
        if r.marks.get("mR"):
            assert f"<sup>{','.join(r.marks['mR'])}</sup>" in text
    assert {r.name: r.letter for r in t.rows}["perfect"] == "a"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)")
def test_opens_in_headless_chromium_without_console_errors(page, tmp_path):
    path, _, _ = page
    shot = tmp_path / "report.png"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    res = subprocess.run(base + ["--window-size=1300,2400", f"--screenshot={shot}", path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln and ("Error" in ln or "error" in ln)]
    assert not console, console
    dom = subprocess.run(base + ["--dump-dom", path.resolve().as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert 'data-ready="1"' in dom.stdout  # the page's script ran to its end


def test_training_curve_pdf_embeds_truetype(grid):
    pdf = plot_training_curves(grid["results"], grid["tmp"] / "fig2")[1].read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf


def test_cli_functions_register_and_run(grid, tmp_path):
    """`bench gallery` and `bench report` as cli/app.py registers them."""
    from typer.testing import CliRunner

    from rsbench.cli.app import build_app
    from rsbench.errors import UserError

    app = build_app()
    run = CliRunner().invoke
    res = run(app, ["gallery", str(grid["results"]), "--dataset", "ucm", "--methods", "noisy,perfect",
                    "--query-ids", "3,1", "--data-root", str(grid["data_root"]), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "queries: 3, 1" in res.output and (tmp_path / "ucm_gallery_t2i.pdf").is_file()
    res = run(app, ["report", str(grid["results"]), "--out", str(tmp_path / "r.html"), "--gallery-queries", "0",
                    "--resamples", "99"])
    assert res.exit_code == 0, res.output
    assert "<h3>Gallery</h3>" not in (tmp_path / "r.html").read_text(encoding="utf-8")
    res = run(app, ["gallery", str(grid["results"]), "--dataset", "ucm", "--query-ids", "1,x"])
    assert isinstance(res.exception, UserError) and "--query-ids" in str(res.exception)


def test_gallery_titles_use_the_display_name(grid, tmp_path):
    """A cell whose config.json carries a display name is titled with it, not with its registry key."""
    import shutil

    from rsbench.io import read_json

    src = next(c for c in scan_results(grid["results"]) if c.method == "perfect" and c.seed == 0)
    root = tmp_path / "r"
    shutil.copytree(src.path, root / "ucm" / "perfect" / "seed0")
    cfg_path = root / "ucm" / "perfect" / "seed0" / "config.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    write_json(cfg_path, {**cfg, "method": "perfect", "dataset": "ucm", "seed": 0, "display_name": "Perfect Net"})
    top = load_method_top(next(iter(scan_results(root))))
    assert top.method == "perfect" and top.shown == "Perfect Net"
    fig, _ = build_gallery(list(scan_results(root)), "ucm", n=1, split=grid["split"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles and all(t.startswith("Perfect Net (seed 0)") for t in titles)


def test_significance_matrix_uses_display_names():
    import pandas as pd

    from rsbench.results.report import significance_html

    sig = pd.DataFrame([{"metric": "mR", "method_a": "amfmn", "method_b": "vsepp", "diff": 2.0, "p_holm": 0.01,
                         "significant": True, "ci_low": 1.0, "ci_high": 3.0}])
    html = significance_html(sig, names={"amfmn": "AMFMN (soft)", "vsepp": "VSE++"})
    assert "<th>AMFMN (soft)</th>" in html and "<th>VSE++</th>" in html and ">amfmn<" not in html
    assert "<th>amfmn</th>" in significance_html(sig)  # no names: the registry keys
