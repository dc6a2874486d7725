"""Cell folders, scanning/merging and the leaderboard; `bench score` / `bench leaderboard` end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli

from rsbench.errors import UserError
from rsbench.evaluation.metrics import METRIC_KEYS, compute_ranks
from rsbench.results.cell import Cell, cell_dir, is_complete, load_cell, write_eval_outputs
from rsbench.results.leaderboard import (
    LEADERBOARD_COLUMNS,
    leaderboard,
    leaderboard_markdown,
    write_leaderboard,
)
from rsbench.results.scan import scan_results

CAP2IMG = np.repeat(np.arange(6), [5, 5, 5, 4, 3, 5]).astype(np.int64)


def make_cell(root: Path, dataset: str, method: str, seed: int, quality: float = 1.0) -> Path:
    """Write a complete cell from a seeded scorer; higher quality -> better ranks."""
    rng = np.random.default_rng(seed + 100 * len(method))
    sims = rng.standard_normal((6, CAP2IMG.size))
    sims[CAP2IMG, np.arange(CAP2IMG.size)] += quality
    i2t, t2i = compute_ranks(sims, CAP2IMG)
    cell = cell_dir(root, dataset, method, seed)
    write_json_config(cell, dataset, method, seed)
    write_eval_outputs(cell, i2t, t2i, CAP2IMG, {"split": "test", "selected_epoch": 3, "val": {"mR": 1.0}})
    return cell


def write_json_config(cell: Path, dataset: str, method: str, seed: int) -> None:
    from rsbench.io import write_json

    write_json(cell / "config.json", {"method": method, "dataset": dataset, "seed": seed, "external": False})


def test_cell_dir() -> None:
    assert cell_dir("out", "rsicd", "vsepp", 2) == Path("out/rsicd/vsepp/seed2")


def test_write_eval_outputs_layout(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, "rsicd", "vsepp", 0)
    assert sorted(p.name for p in cell.iterdir()) == ["config.json", "metrics.json", "ranks.npz"]
    assert not list(cell.glob(".*"))  # no temp files left
    m = json.loads((cell / "metrics.json").read_text())
    assert list(m)[:3] == ["split", "n_images", "n_captions"]
    assert list(m)[3:14] == list(METRIC_KEYS)
    assert list(m)[14:] == ["chance_mR", "recall_curve", "selected_epoch", "val", "dataset", "method", "seed",
                            "fingerprint"]
    assert m["split"] == "test" and m["n_images"] == 6 and m["n_captions"] == CAP2IMG.size
    assert m["selected_epoch"] == 3 and m["val"] == {"mR": 1.0}
    assert m["recall_curve"]["k"] == list(range(1, 101))
    with np.load(cell / "ranks.npz", allow_pickle=False) as z:
        assert set(z.files) == {"i2t_rank", "t2i_rank", "cap2img"}
        assert z["i2t_rank"].dtype == np.int64 and z["i2t_rank"].shape == (6,)
        assert z["t2i_rank"].shape == CAP2IMG.shape
        np.testing.assert_array_equal(z["cap2img"], CAP2IMG)


def test_write_eval_outputs_defaults_and_checks(tmp_path: Path) -> None:
    i2t, t2i = np.array([1, 2]), np.array([1, 1, 2])
    c = np.array([0, 0, 1])
    m = write_eval_outputs(tmp_path / "c", i2t, t2i, c, {})
    assert m["split"] == "test" and m["selected_epoch"] is None and m["val"] is None
    assert m["n_images"] == 2 and m["n_captions"] == 3
    with pytest.raises(ValueError, match="override"):
        write_eval_outputs(tmp_path / "c", i2t, t2i, c, {"mR": 99.0})
    with pytest.raises(ValueError, match="n_images"):
        write_eval_outputs(tmp_path / "c", i2t, t2i, c, {"n_images": 5})


def test_is_complete_and_load_cell(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, "rsitmd", "clip", 4)
    assert is_complete(cell)
    c = load_cell(cell)
    assert (c.dataset, c.method, c.seed) == ("rsitmd", "clip", 4)
    assert c.config["method"] == "clip" and "mR" in c.metrics
    assert c._ranks is not None  # read and checked with the cell: a cell is complete only if they read back
    assert c.ranks["t2i_rank"].shape == CAP2IMG.shape
    (cell / "metrics.json").write_text("{trunc")
    assert not is_complete(cell)
    with pytest.raises(UserError, match="metrics.json: not valid JSON"):
        load_cell(cell)
    (cell / "metrics.json").unlink()
    assert not is_complete(cell)
    assert not is_complete(tmp_path / "nope")


def test_rewrite_marks_incomplete_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While ranks.npz is being rewritten, the old metrics.json must not vouch for it."""
    cell = make_cell(tmp_path, "d", "m", 0)
    from rsbench.results import cell as results

    def failing_write_with(path: Path, writer: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(results, "write_with", failing_write_with)
    with pytest.raises(OSError):
        write_eval_outputs(cell, np.array([1]), np.array([1]), np.array([0]), {})
    assert not is_complete(cell)


def test_scan_results_merges_and_skips(tmp_path: Path) -> None:
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    make_cell(a, "rsicd", "vsepp", 0)
    make_cell(a, "rsicd", "vsepp", 1)
    make_cell(b, "rsicd", "vsepp", 2)
    make_cell(b, "rsitmd", "clip", 0)
    # an incomplete (running) cell and stray files
    (a / "rsicd" / "amfmn" / "seed0").mkdir(parents=True)
    (a / "rsicd" / "amfmn" / "seed0" / "ranks.npz").write_bytes(b"")
    (a / "README.txt").write_text("notes")
    (a / "rsicd" / "notes.md").write_text("x")
    (a / "rsicd" / "vsepp" / "seedx").mkdir()
    (a / "rsicd" / "vsepp" / "seedx" / "metrics.json").write_text("{}")
    (a / "leaderboard.csv").write_text("old")

    merged = tmp_path / "merged"
    shutil.copytree(a, merged)
    shutil.copytree(b, merged, dirs_exist_ok=True)
    cells = scan_results(merged)
    assert [(c.dataset, c.method, c.seed) for c in cells] == [
        ("rsicd", "vsepp", 0),
        ("rsicd", "vsepp", 1),
        ("rsicd", "vsepp", 2),
        ("rsitmd", "clip", 0),
    ]
    assert all(isinstance(c, Cell) for c in cells)
    with pytest.raises(UserError, match="not found"):
        scan_results(tmp_path / "missing")


def test_leaderboard_columns_stats_and_order(tmp_path: Path) -> None:
    for s in range(3):
        make_cell(tmp_path, "rsicd", "weak", s, quality=0.0)
        make_cell(tmp_path, "rsicd", "strong", s, quality=3.0)
    make_cell(tmp_path, "aaa", "single", 0)
    cells = scan_results(tmp_path)
    df = leaderboard(cells)
    assert list(df.columns) == LEADERBOARD_COLUMNS
    assert LEADERBOARD_COLUMNS[:6] == ["dataset", "method", "n_seeds", "mR", "mR_std", "i2t_r1"]
    assert LEADERBOARD_COLUMNS[-4:] == ["t2i_meanr", "t2i_meanr_std", "split", "chance_mR"]
    assert list(df["dataset"]) == ["aaa", "rsicd", "rsicd"]
    assert list(df["method"]) == ["single", "strong", "weak"]
    assert list(df["n_seeds"]) == [1, 3, 3]
    weak = [c.metrics["mR"] for c in cells if c.method == "weak"]
    row = df[df.method == "weak"].iloc[0]
    assert row["mR"] == pytest.approx(np.mean(weak))
    assert row["mR_std"] == pytest.approx(np.std(weak, ddof=1))
    assert math.isnan(df.iloc[0]["mR_std"])  # one seed: no std

    md = leaderboard_markdown(df)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 3
    assert lines[0].startswith("| Dataset | Method | Seeds | mR |")
    assert f"{row['mR']:.2f} ± {row['mR_std']:.2f}" in md
    assert "±" not in lines[2]  # single-seed row shows the mean only

    assert list(leaderboard([]).columns) == LEADERBOARD_COLUMNS
    # cells scored on another split never mix into the test rows
    val_cell = load_cell(cells[0].path)
    val_cell.metrics["split"] = "val"
    assert len(leaderboard([val_cell])) == 0
    assert list(leaderboard([val_cell], split="val")["method"]) == [val_cell.method]


def test_write_leaderboard(tmp_path: Path) -> None:
    make_cell(tmp_path / "r", "rsicd", "vsepp", 0)
    make_cell(tmp_path / "r", "rsicd", "vsepp", 1)
    df = write_leaderboard(tmp_path / "r", tmp_path / "tables")
    csv = pd.read_csv(tmp_path / "tables" / "leaderboard.csv")
    assert list(csv.columns) == LEADERBOARD_COLUMNS
    assert csv["mR"].iloc[0] == pytest.approx(df["mR"].iloc[0])
    md = (tmp_path / "tables" / "leaderboard.md").read_text()
    assert md.startswith("### RSICD (test)") and "| (a) | vsepp |" in md  # the paper table, not the CLI print
    tex = (tmp_path / "tables" / "leaderboard.tex").read_text().splitlines()
    assert tex[0] == f"% made by: bench leaderboard {tmp_path / 'r'} --out {tmp_path / 'tables'}"
    assert tex[1] == "% requires \\usepackage{booktabs,graphicx,array}"
    write_leaderboard(tmp_path / "r")
    assert (tmp_path / "r" / "leaderboard.csv").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no complete result cells"):
        write_leaderboard(tmp_path / "empty")


# ---- CLI ------------------------------------------------------------------------------------------


def _cli_ready() -> bool:
    try:
        import importlib

        for mod in ("rsbench.cli.data", "rsbench.cli.run", "rsbench.datasets"):
            importlib.import_module(mod)
    except ImportError:
        return False
    return True


needs_cli = pytest.mark.skipif(not _cli_ready(), reason="cli_data / cli_run / datasets not written yet")


def fake_karpathy(tmp_path: Path, counts: list[int]) -> Path:
    """A tiny Karpathy-layout annotation: train/val images plus test images with `counts` captions."""
    images = []
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            images.append(
                {"filename": f"{split}_{i}.png", "split": split, "sentences": [{"raw": f"{split} {i}"}] * 5}
            )
    for i, c in enumerate(counts):
        images.append(
            {
                "filename": f"test_{i}.png",
                "split": "test",
                "sentences": [{"raw": f"test image {i} caption {j}"} for j in range(c)],
            }
        )
    ann = tmp_path / "dataset_fake.json"
    ann.write_text(json.dumps({"images": images}))
    (tmp_path / "images").mkdir(exist_ok=True)
    return ann


@needs_cli
def test_cli_score_and_leaderboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts = [5, 5, 3, 5]
    ann = fake_karpathy(tmp_path, counts)
    c2i = np.repeat(np.arange(4), counts)
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((4, c2i.size)).astype(np.float32)
    np.save(tmp_path / "sims.npy", sims)
    base = ["score", str(tmp_path / "sims.npy"), "--dataset", "rsicd", "--ann-file", str(ann)]
    base += ["--image-dir", str(tmp_path / "images"), "--out", str(tmp_path / "res")]

    code, out, err = run_cli([*base, "--name", "ext", "--seed", "1"], capsys)
    assert code == 0, err
    cell = cell_dir(tmp_path / "res", "rsicd", "ext", 1)
    assert is_complete(cell)
    cfg = json.loads((cell / "config.json").read_text())
    assert cfg["method"] == "ext" and cfg["external"] is True and cfg["seed"] == 1
    assert (cell / "run.json").is_file()
    m = json.loads((cell / "metrics.json").read_text())
    i2t, t2i = compute_ranks(sims, c2i)
    with np.load(cell / "ranks.npz") as z:
        np.testing.assert_array_equal(z["i2t_rank"], i2t)
        np.testing.assert_array_equal(z["t2i_rank"], t2i)
    assert f"{m['mR']:.2f}" in out

    # refuses to overwrite a complete cell unless asked
    code, _, err = run_cli([*base, "--name", "ext", "--seed", "1"], capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli([*base, "--name", "ext", "--seed", "1", "--overwrite"], capsys)
    assert code == 0, err

    # .npz with one array works too
    np.savez(tmp_path / "sims2.npz", scores=sims)
    code, _, err = run_cli([*base[:1], str(tmp_path / "sims2.npz"), *base[2:], "--name", "ext2"], capsys)
    assert code == 0, err

    code, out, err = run_cli(["leaderboard", str(tmp_path / "res")], capsys)
    assert code == 0, err
    assert "| ext |" in out and "| ext2 |" in out
    assert (tmp_path / "res" / "leaderboard.csv").is_file()
    code, out, err = run_cli(["leaderboard", str(tmp_path / "res"), "--out", str(tmp_path / "t")], capsys)
    assert code == 0 and (tmp_path / "t" / "leaderboard.md").is_file()


@needs_cli
def test_cli_score_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = fake_karpathy(tmp_path, [5, 5, 3])
    base = ["--dataset", "rsicd", "--ann-file", str(ann), "--image-dir", str(tmp_path / "images")]
    base += ["--name", "ext", "--out", str(tmp_path / "res")]

    def score(arr: object, name: str) -> tuple[int, str]:
        f = tmp_path / name
        if isinstance(arr, np.ndarray):
            np.save(f, arr)
        elif arr is not None:
            f.write_bytes(arr)  # type: ignore[arg-type]
        code, _, err = run_cli(["score", str(f), *base], capsys)
        return code, err

    code, err = score(np.zeros((10, 40)), "wrong.npy")
    assert code == 2
    assert "wrong.npy: shape (10, 40) does not match test split of rsicd (3 images x 13 captions)" in err
    code, err = score(np.zeros((13, 3)), "transposed.npy")
    assert code == 2 and "transposed" in err
    bad = np.zeros((3, 13))
    bad[1, 2] = np.nan
    code, err = score(bad, "nan.npy")
    assert code == 2 and "nan.npy: non-finite score at image 1, caption 2" in err
    code, err = score(np.array([{"a": 1}], dtype=object), "pickled.npy")
    assert code == 2 and "pickled.npy" in err
    code, err = score(None, "missing.npy")
    assert code == 2 and "missing.npy" in err and "not found" in err
    code, err = score(b"garbage", "garbage.npy")
    assert code == 2 and "garbage.npy" in err
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 13)), b=np.zeros((3, 13)))
    code, _, err = run_cli(["score", str(tmp_path / "two.npz"), *base], capsys)
    assert code == 2 and "two.npz" in err and "one array" in err
    assert not (tmp_path / "res").exists() or not scan_results(tmp_path / "res")


HOLDER = """
import sys, time
from rsbench.locks import PathLock
lock = PathLock(sys.argv[1])  # kept referenced: a collected FileLock lets go
assert lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


@needs_cli
def test_cli_score_and_leaderboard_respect_locks(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell or leaderboard another process is writing is not touched: exit 2 naming its pid."""
    import subprocess
    import sys

    from rsbench.locks import lock_path
    from rsbench.results import leaderboard as board

    ann = fake_karpathy(tmp_path, [5, 5, 3])
    np.save(tmp_path / "sims.npy", np.random.default_rng(0).standard_normal((3, 13)).astype(np.float32))
    res = tmp_path / "res"
    args = ["score", str(tmp_path / "sims.npy"), "--dataset", "rsicd", "--ann-file", str(ann),
            "--image-dir", str(tmp_path / "images"), "--name", "ext", "--out", str(res)]
    cell = cell_dir(res, "rsicd", "ext", 0)
    monkeypatch.setattr(board, "LEADERBOARD_WAIT_S", 0.5)  # read at call time
    for held in (lock_path(cell), res / ".leaderboard.lock"):
        held.parent.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(held)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            code, _, err = run_cli(args if held.name != ".leaderboard.lock" else ["leaderboard", str(res)], capsys)
            assert code == 2 and f"another process (pid {holder.pid})" in err, err
            assert len(err.strip().splitlines()) == 1
            if held.name == ".leaderboard.lock":
                assert not (res / "leaderboard.csv").exists()
            else:
                assert not cell.exists()
        finally:
            holder.kill()
            holder.wait()
        code, _, err = run_cli(args if held.name != ".leaderboard.lock" else ["leaderboard", str(res)], capsys)
        assert code == 0, err  # the holder is gone: the lock is free
    assert is_complete(cell) and (res / "leaderboard.csv").is_file()


@needs_cli
def test_cli_leaderboard_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["leaderboard", str(tmp_path)], capsys)
    assert code == 2 and "no complete result cells" in err
    code, _, err = run_cli(["leaderboard", str(tmp_path / "nope")], capsys)
    assert code == 2 and "not found" in err


# ---- #14: one leaderboard writer, one run.json schema, cell identity, layout, status --------------


def test_bench_run_and_bench_leaderboard_write_the_same_three_files(tmp_path: Path) -> None:
    """Both paths go through results.leaderboard: the same .csv/.md/.tex whichever command ran last."""
    from rsbench.results.leaderboard import update_leaderboard

    root = tmp_path / "r"
    for s in range(2):
        make_cell(root, "rsicd", "weak", s, quality=0.0)
        make_cell(root, "rsicd", "strong", s, quality=3.0)
    write_leaderboard(root)
    first = {s: (root / f"leaderboard.{s}").read_text() for s in ("csv", "md", "tex")}
    assert "<sup>" in first["md"] or "(b)" in first["md"]  # rows lettered for the significance marks
    for s in ("csv", "md", "tex"):
        (root / f"leaderboard.{s}").unlink()
    ok, line = update_leaderboard(root, wait_s=0.5)
    assert ok and "leaderboard.md" in line
    assert {s: (root / f"leaderboard.{s}").read_text() for s in ("csv", "md", "tex")} == first


def test_update_leaderboard_reports_busy_empty_and_damaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rsbench.locks import leaderboard_lock
    from rsbench.results.leaderboard import update_leaderboard

    (tmp_path / "empty").mkdir()
    assert update_leaderboard(tmp_path / "empty", wait_s=0) == (
        True, f"no complete result cells in {tmp_path / 'empty'} yet; no leaderboard written")
    cell = make_cell(tmp_path / "r", "rsicd", "vsepp", 0)
    with leaderboard_lock(tmp_path / "r") as lock:
        assert lock.acquire()
        ok, line = update_leaderboard(tmp_path / "r", wait_s=0)
        assert ok and line.startswith("leaderboard not written: another process is writing it (pid")
    (cell / "ranks.npz").write_bytes(b"")
    ok, line = update_leaderboard(tmp_path / "r", wait_s=0)
    assert not ok and line.startswith("error: leaderboard not written:") and "1 damaged result cell" in line
    assert "ranks.npz: empty file" in capsys.readouterr().err  # the warning names the file
    assert not (tmp_path / "r" / "leaderboard.md").exists()


def test_metrics_json_names_its_cell(tmp_path: Path) -> None:
    cell = cell_dir(tmp_path, "rsicd", "vsepp", 3)
    m = write_eval_outputs(cell, np.array([1, 2]), np.array([1, 2, 1]), np.array([0, 1, 1]), {}, fingerprint="abc")
    on_disk = json.loads((cell / "metrics.json").read_text())
    assert on_disk == m
    assert (m["dataset"], m["method"], m["seed"], m["split"], m["fingerprint"]) == ("rsicd", "vsepp", 3, "test", "abc")
    assert list(m)[3:14] == list(METRIC_KEYS)  # the metrics stay where readers expect them
    with pytest.raises(ValueError, match="may not override"):
        write_eval_outputs(cell, np.array([1]), np.array([1]), np.array([0]), {"seed": 9})
    loose = write_eval_outputs(tmp_path / "x", np.array([1]), np.array([1]), np.array([0]))
    assert (loose["dataset"], loose["method"], loose["seed"], loose["fingerprint"]) == (None, None, None, None)


def test_run_record_one_schema_and_old_score_records_read_back(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from rsbench.io import write_json
    from rsbench.results.cell import read_run_record, run_record

    data = SimpleNamespace(name="rsicd", fingerprint="f1", ann_file=None, image_dir="/img", notes={"n": 1})
    rec = run_record(data, 12.345, precision="fp32", extra={"source": "s.npy"})
    assert rec["schema"] == 2 and rec["wall_s"] == 12.35 and rec["precision"] == "fp32"
    assert rec["data"] == {"dataset": "rsicd", "fingerprint": "f1", "ann_file": "", "image_dir": "/img",
                           "notes": {"n": 1}}
    assert rec["hardware"]["device"] == "cpu" and "numpy" in rec["versions"] and rec["source"] == "s.npy"
    with pytest.raises(ValueError, match="may not override"):
        run_record(data, 1.0, extra={"wall_s": 3})
    write_json(tmp_path / "run.json", rec)
    assert read_run_record(tmp_path) == json.loads(json.dumps(rec))
    # what `bench score` wrote before the one schema
    write_json(tmp_path / "run.json", {"wall_seconds": 1.5, "data_fingerprint": "f0", "ann_file": "/a.json"})
    old = read_run_record(tmp_path)
    assert old["wall_s"] == 1.5 and old["data"]["fingerprint"] == "f0" and old["data"]["ann_file"] == "/a.json"
    assert "wall_seconds" not in old and "data_fingerprint" not in old
    (tmp_path / "run.json").write_text("{broken")
    assert read_run_record(tmp_path) is None


def test_failure_marker_round_trip(tmp_path: Path) -> None:
    from rsbench.results.cell import clear_failure, read_failure, write_failure

    cell = tmp_path / "d" / "m" / "seed0"
    assert read_failure(cell) is None
    write_failure(cell, ValueError("first line\nsecond"))
    assert read_failure(cell) == "first line"
    assert json.loads((cell / "failed.json").read_text())["type"] == "ValueError"
    (cell / "failed.json").write_text("[")
    assert read_failure(cell) == "unknown error"
    clear_failure(cell)
    assert read_failure(cell) is None


def test_layout_parses_and_finds_cells(tmp_path: Path) -> None:
    from rsbench.locks import cell_of_lock, lock_path
    from rsbench.results.layout import iter_cells, parse_cell

    assert parse_cell(tmp_path / "rsicd" / "clip" / "seed12") == ("rsicd", "clip", 12)
    for bad in ("rsicd/clip/seedx", "rsicd/.trash/seed0", ".tmp/clip/seed0", "rsicd/clip/run0"):
        assert parse_cell(tmp_path / bad) is None
    for rel in ("a/m/seed0", "a/m/seed1", "a/.trash/seed0", "a/m/seedz"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "b" / "m").mkdir(parents=True)
    (tmp_path / "b" / "m" / "seed2").write_text("a file, not a cell")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in iter_cells(tmp_path)) == ["a/m/seed0", "a/m/seed1"]
    cell = tmp_path / "a" / "m" / "seed7"
    assert cell_of_lock(lock_path(cell)) == cell
    assert cell_of_lock(tmp_path / "a" / "m" / "seed7.lock") is None
    assert cell_of_lock(tmp_path / "a" / "m" / ".lock") is None


def test_lock_probe_sees_a_holder_and_leaves_no_trace(tmp_path: Path) -> None:
    from rsbench.locks import PathLock, is_held

    path = tmp_path / "x" / ".seed0.lock"
    assert not is_held(path) and not path.exists()  # probing creates nothing
    holder, other = PathLock(path), PathLock(path)
    assert not other.probe()
    assert holder.acquire()
    assert other.probe() and holder.probe() and is_held(path)
    holder.release()
    assert not other.probe() and not is_held(path)


def test_scan_status_states(tmp_path: Path) -> None:
    from rsbench.locks import PathLock, lock_path
    from rsbench.results.cell import write_failure
    from rsbench.results.scan import record_jobs, scan_status

    done = make_cell(tmp_path, "d", "m", 0)
    write_failure(cell_dir(tmp_path, "d", "m", 1), "boom")
    resumable = cell_dir(tmp_path, "d", "m", 2)
    (resumable / "checkpoint").mkdir(parents=True)
    (resumable / "checkpoint" / "last.pt").write_bytes(b"x")
    (resumable / "train_log.csv").write_text("epoch,loss\n1,0.5\n2,0.4\n")
    (resumable / "config.json").write_text("{}")
    cell_dir(tmp_path, "d", "m", 3).mkdir(parents=True)
    record_jobs(tmp_path, [(cell_dir(tmp_path, "d", "m", 5), "job42")], "slurm", tmp_path / "logs")
    running = PathLock(lock_path(cell_dir(tmp_path, "d", "m", 4)))
    assert running.acquire()
    try:
        rows = scan_status(tmp_path)
    finally:
        running.release()
    got = [(r.seed, r.state, r.job) for r in rows]
    assert got == [(0, "done", ""), (1, "failed", ""), (2, "incomplete", ""), (3, "started", ""),
                   (4, "running", ""), (5, "queued", "job42")]
    assert rows[0].detail == f"test mR {load_cell(done).metrics['mR']:.2f}"
    same = " (with the options and data it was started with; others need --overwrite)"
    assert rows[1].detail == "boom" and rows[2].detail == "interrupted after epoch 2, will resume" + same
    assert rows[3].detail == "no epoch finished yet, will start over"  # no config.json: any options start it
    (cell_dir(tmp_path, "d", "m", 3) / "config.json").write_text("{}")  # other options are refused (#21)
    assert scan_status(tmp_path)[3].detail == "no epoch finished yet, will start over" + same
    (resumable / "config.json").unlink()  # `bench run` refuses such a cell: status must not promise a resume
    assert scan_status(tmp_path)[2].detail == ("interrupted after epoch 2, but its config is unknown (no "
                                               "config.json): `bench run` refuses it without --overwrite")


def _write_with_topk(cell: Path, top: object | None) -> None:
    """A cell of the seeded scorer, with the given top-K (or none)."""
    rng = np.random.default_rng(7)
    sims = rng.standard_normal((6, CAP2IMG.size))
    i2t, t2i = compute_ranks(sims, CAP2IMG)
    write_eval_outputs(cell, i2t, t2i, CAP2IMG, {}, topk=top)


def test_topk_written_between_ranks_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """topk.npz is written after ranks.npz and before metrics.json (which vouches for both), and reads back."""
    from rsbench.evaluation.topk import read_topk, topk_from_scores
    from rsbench.results import cell as results

    sims = np.random.default_rng(7).standard_normal((6, CAP2IMG.size))
    top = topk_from_scores(sims)
    order: list[str] = []
    real_with, real_json, real_topk = results.write_with, results.write_json, results.write_topk
    monkeypatch.setattr(results, "write_with", lambda p, w: (order.append(Path(p).name), real_with(p, w)))
    monkeypatch.setattr(results, "write_topk", lambda p, t: (order.append(Path(p).name), real_topk(p, t)))
    monkeypatch.setattr(results, "write_json", lambda p, d: (order.append(Path(p).name), real_json(p, d)))
    cell = cell_dir(tmp_path, "d", "m", 0)
    _write_with_topk(cell, top)
    assert order == ["ranks.npz", "topk.npz", "metrics.json"]
    back = read_topk(cell / "topk.npz", n_images=6, n_captions=CAP2IMG.size)
    assert np.array_equal(back.t2i_idx, top.t2i_idx) and np.array_equal(back.i2t_idx, top.i2t_idx)
    assert is_complete(cell)


def test_topk_missing_is_fine_damaged_is_damaged_stale_is_removed(tmp_path: Path) -> None:
    """Older cells have no topk.npz (complete, no gallery); a damaged one makes the cell damaged; a rewrite
    without top-K does not leave an earlier run's topk.npz behind."""
    from rsbench.evaluation.topk import topk_from_scores
    from rsbench.results.cell import cell_damage

    cell = cell_dir(tmp_path, "d", "m", 0)
    _write_with_topk(cell, topk_from_scores(np.random.default_rng(7).standard_normal((6, CAP2IMG.size))))
    assert is_complete(cell)
    (cell / "topk.npz").write_bytes(b"PK\x03\x04 truncated")
    assert not is_complete(cell)
    damage = cell_damage(cell)
    assert damage is not None and "topk.npz" in damage
    with pytest.raises(UserError, match="topk.npz"):
        load_cell(cell)
    _write_with_topk(cell, None)  # rewritten by a writer that keeps no top-K
    assert not (cell / "topk.npz").exists() and is_complete(cell)
    wrong = topk_from_scores(np.random.default_rng(1).standard_normal((5, CAP2IMG.size)))  # 5 images, not 6
    with pytest.raises(ValueError, match="top-K"):
        _write_with_topk(cell, wrong)
