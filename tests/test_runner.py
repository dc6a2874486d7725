"""The runner's guards, in process: divergence, out of memory, interrupted checkpoint writes, early stop,
config checks, locks, atomic writes, and dirty datasets through `bench run` / `bench data check`."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import make_karpathy, write_image
from helpers import run_cli as main

from rsbench import io as rio
from rsbench.engine.checkpoint import load_resume
from rsbench.errors import DataError, UserError
from rsbench.results.cell import is_complete

TINY_SET = {"train.sampling": "image", "train.image_size": "32", "backbone": "test_resnet", "embed_dim": "32", "hidden_dim": "32",
            "word_dim": "16"}
TINY_ARGS = [a for k, v in TINY_SET.items() for a in ("--set", f"{k}={v}")]


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture(scope="module")
def syn(tiny_synthetic: Path) -> Path:
    return tiny_synthetic


def tiny(epochs: int = 2, **train: object):
    from rsbench.config.resolve import resolve_config

    return resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": epochs, "batch_size": 8},
                          {**TINY_SET, **{f"train.{k}": str(v) for k, v in train.items()}})


def run(cfg, syn: Path, cell: Path, **kw):
    from rsbench.datasets import load_dataset
    from rsbench.engine.cell import run_cell

    return run_cell(cfg, load_dataset("synthetic", data_root=syn), cell, torch.device("cpu"), log=lambda *_: None,
                    **kw)


def same_result(a: Path, b: Path) -> bool:
    """Two metrics.json files hold the same result: equal in every key but the method and dataset names,
    which metrics.json takes from the folders the cells lie in (results.cell.write_eval_outputs)."""
    ja, jb = (json.loads(f.read_text(encoding="utf-8")) for f in (a, b))
    for j in (ja, jb):
        del j["method"], j["dataset"]
    return ja == jb and ja["fingerprint"] is not None


@pytest.fixture(scope="module")
def finished(syn, tmp_path_factory) -> Path:
    """One uninterrupted 2-epoch cell."""
    cell = tmp_path_factory.mktemp("finished") / "seed0"
    os.environ["RSBENCH_CACHE"] = str(cell.parent / "cache")
    try:
        run(tiny(keep_last=True), syn, cell)  # tests copy its resume state
    finally:
        os.environ.pop("RSBENCH_CACHE", None)
    return cell


def patch_loss(monkeypatch, fail_at_call: int, make):
    """Wrap every created method's training_loss: call number `fail_at_call` returns/raises
    make(loss) (or make(loss, method) when make takes two arguments)."""
    from rsbench.engine import cell as runner

    real = runner.create_method
    calls = {"n": 0}

    def create(*a, **k):
        m = real(*a, **k)
        loss = m.training_loss

        def patched(batch):
            calls["n"] += 1
            out = loss(batch)
            if calls["n"] == fail_at_call:
                out.loss = make(out.loss, m) if make.__code__.co_argcount == 2 else make(out.loss)
            return out

        m.training_loss = patched
        return m

    monkeypatch.setattr(runner, "create_method", create)


# ---- training guards ---------------------------------------------------------------------------

@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(syn, tmp_path, monkeypatch):
    from rsbench.engine.train import TrainingDiverged

    patch_loss(monkeypatch, 4, lambda loss: loss * float("nan"))  # 3 steps per epoch: epoch 2, step 1
    cell = tmp_path / "seed0"
    with pytest.raises(TrainingDiverged) as e:
        run(tiny(checkpoint_every_s=0), syn, cell)
    assert str(e.value) == (f"non-finite loss (nan) at epoch 2, step 1; the last good checkpoint (epoch 1) is kept "
                            f"in {cell / 'checkpoint' / 'last.pt'} (try a lower train.lr, now 0.0005)")
    state = load_resume(cell / "checkpoint" / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not is_complete(cell)


@pytest.mark.slow
def test_huge_lr_diverges_with_one_line_through_the_cli(syn, tmp_path, capsys):
    args = ["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "res"), *TINY_ARGS,
            "--set", "train.lr=1e30"]
    code, out, err = main(args, capsys)
    assert code == 2
    assert re.fullmatch(r"error: non-finite loss \((nan|inf|-inf)\) at epoch 1, step \d+; no checkpoint had been "
                        r"written yet \(try a lower train\.lr, now 1e\+30\)\n", err), err
    assert "FAILED" in out and "no leaderboard written" in out
    assert not is_complete(tmp_path / "res" / "synthetic" / "vsepp" / "seed0")


def test_non_finite_weights_are_never_saved_as_last_good(syn, tmp_path, monkeypatch):
    """A finite loss but a model gone non-finite (here a BatchNorm buffer) stops before last.pt is written."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from rsbench.engine.train import TrainingDiverged

    handles = []

    def poison(loss, method):
        bn = next(m for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d))
        handles.append(register_optimizer_step_post_hook(lambda *_: bn.running_mean.fill_(float("nan"))))
        return loss

    patch_loss(monkeypatch, 3, poison)  # after the optimiser step of the last step of epoch 1
    cell = tmp_path / "seed0"
    try:
        with pytest.raises(TrainingDiverged, match=r"^non-finite weights at the end of epoch 1; no checkpoint "
                                                   r"had been written yet \(try a lower train.lr, now 0.0005\)$"):
            run(tiny(epochs=1), syn, cell)
    finally:
        for h in handles:
            h.remove()
    assert not (cell / "checkpoint" / "last.pt").exists()


def test_nan_scores_in_evaluation_are_one_line(syn, tmp_path, monkeypatch):
    from rsbench.engine import cell as runner

    real = runner.create_method

    def create(*a, **k):
        m = real(*a, **k)
        next(x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)).running_mean.fill_(float("nan"))
        return m

    monkeypatch.setattr(runner, "create_method", create)
    with pytest.raises(UserError, match=r"^the model gives NaN scores on the val split \(NaN scores in block "
                                        r"images 0:6 x captions 0:30\); non-finite weights or an fp16 overflow"):
        run(tiny(epochs=0), syn, tmp_path / "seed0")


def test_out_of_memory_in_training_suggests_a_smaller_batch(syn, tmp_path, monkeypatch):
    def oom(_loss):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    patch_loss(monkeypatch, 1, oom)
    with pytest.raises(UserError) as e:
        run(tiny(epochs=1), syn, tmp_path / "seed0")
    assert str(e.value) == ("out of memory on cpu at epoch 1, step 1 with batch size 8; try --set "
                            "train.batch_size=4 (or a smaller train.image_size)")


def test_rank_split_gives_the_top_k_of_the_full_test_matrix(syn):
    """Top-K from the blockwise pass equals the top-K of the whole float32 matrix, ranks those of compute_ranks,
    also when the encoders run in bf16 (scores in bf16 would tie and reorder)."""
    from rsbench.datasets import load_dataset
    from rsbench.engine.cell import build_method
    from rsbench.engine.device import pick_precision
    from rsbench.engine.evaluate import encode_split, rank_split
    from rsbench.evaluation.metrics import compute_ranks
    from rsbench.evaluation.topk import topk_from_scores

    cfg, cpu = tiny(), torch.device("cpu")
    data = load_dataset("synthetic", data_root=syn)
    torch.manual_seed(0)
    method = build_method(cfg, data, cpu)
    prec = pick_precision("bf16", cpu)  # encoders in bf16 (emulated where the CPU lacks it), scores in float32
    i2t, t2i, top = rank_split(method, data.test, cfg, cpu, prec, topk=True)
    full = method.score(*encode_split(method, data.test, cfg, cpu, prec)).numpy()
    ref = topk_from_scores(full)
    ref_i2t, ref_t2i = compute_ranks(full, data.test.cap2img)
    assert i2t.tolist() == ref_i2t.tolist() and t2i.tolist() == ref_t2i.tolist()
    assert np.array_equal(top.i2t_idx, ref.i2t_idx) and np.array_equal(top.t2i_idx, ref.t2i_idx)
    assert top.i2t_idx.shape == (data.test.n_images, 10) and top.t2i_idx.shape == (data.test.n_captions, 6)
    assert rank_split(method, data.val, cfg, cpu, prec)[2] is None  # val: no top-K


def test_finished_cell_has_top_k_agreeing_with_its_ranks(finished):
    """topk.npz is written for the test split; a query ranked first has its own match in first place."""
    from rsbench.evaluation.topk import read_topk

    with np.load(finished / "ranks.npz") as z:
        i2t, t2i, c2i = z["i2t_rank"], z["t2i_rank"], z["cap2img"]
    top = read_topk(finished / "topk.npz", len(i2t), len(t2i))
    firsts = np.flatnonzero(t2i == 1)
    assert firsts.size and (top.t2i_idx[firsts, 0] == c2i[firsts]).all()
    assert all(c2i[top.i2t_idx[i, 0]] == i for i in np.flatnonzero(i2t == 1))
    assert all(c2i[top.i2t_idx[i, 0]] != i for i in np.flatnonzero(i2t > 1))


def test_out_of_memory_in_evaluation_suggests_a_smaller_eval_batch(syn, tmp_path, monkeypatch):
    from rsbench.engine import evaluate as engine_evaluate

    def oom(*_a, **_k):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(engine_evaluate, "rank_split", oom)
    with pytest.raises(UserError, match=r"while evaluating the val split with eval batch size 256; "
                                        r"try --set train.eval_batch_size=128$"):
        run(tiny(epochs=0), syn, tmp_path / "seed0")


def test_failed_cell_goes_on_alone_but_stops_a_distributed_rank(syn, tmp_path, monkeypatch, capsys):
    """One process: the failure is printed, recorded and the grid goes on. Under torchrun the rank
    raises instead, so that it exits and torchrun stops the ranks waiting for it in a collective."""
    from rsbench.datasets import load_dataset
    from rsbench.engine import cell as runner
    from rsbench.engine import distributed as dist
    from rsbench.engine import grid
    from rsbench.results.layout import FAILED_FILE

    def fail(*_a, **_k):
        raise UserError("out of memory on cuda:1 at epoch 1, step 3 with batch size 8")

    monkeypatch.setattr(runner, "run_cell", fail)
    data = load_dataset("synthetic", data_root=syn)
    cell = tmp_path / "res" / "seed0"
    row = grid.run_one_cell(tiny(), data, cell, torch.device("cpu"), True, False, False)
    assert row.status == "failed" and (cell / FAILED_FILE).is_file()
    assert "error: out of memory on cuda:1" in capsys.readouterr().err

    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    monkeypatch.setattr(dist, "acquire_on_main", lambda lock: bool(lock.acquire()))
    with pytest.raises(UserError, match=r"seed0: out of memory on cuda:1 .* \(rank 1; the other ranks are stopped\)$"):
        grid.run_one_cell(tiny(), data, cell, torch.device("cpu"), True, False, False)
    assert (cell / FAILED_FILE).is_file()
    from rsbench.locks import cell_lock

    lock = cell_lock(cell)
    assert lock.acquire()  # released on the way out
    lock.release()


def test_default_synthetic_is_generated_by_the_preparing_rank_only_when_needed(tmp_path):
    """Under torchrun rank 0 runs this before the others load: it generates the default synthetic set
    (and only that: a given data root or another dataset generates nothing)."""
    from rsbench.datasets.source import default_data_root

    cache = tmp_path / "cache"
    assert default_data_root("rsicd", None, None) is None
    assert default_data_root("synthetic", tmp_path / "mine", None) == tmp_path / "mine"
    assert not (cache / "synthetic").exists()
    root = default_data_root("synthetic", None, None)
    made = list((cache / "synthetic").iterdir())
    assert [p.name for p in made] == ["v1_n300_s64_seed0"] and (made[0] / "dataset.json").is_file()
    assert root == made[0]


# ---- interrupted runs (in process) ------------------------------------------------------------

class Killed(BaseException):
    """Stands in for SIGKILL inside the test process."""


@pytest.mark.slow
def test_kill_between_last_and_best_checkpoint_is_repaired(syn, finished, tmp_path, monkeypatch):
    """last.pt of epoch 1 written, best.safetensors of epoch 1 not: the resume rebuilds best from last.pt."""
    from rsbench.engine import train

    def die(*_a, **_k):
        raise Killed

    monkeypatch.setattr(train, "save_best", die)
    cell = tmp_path / "seed0"
    with pytest.raises(Killed):
        run(tiny(checkpoint_every_s=0), syn, cell)
    monkeypatch.undo()
    assert load_resume(cell / "checkpoint" / "last.pt")["epoch"] == 1
    assert not (cell / "checkpoint" / "best.safetensors").exists()
    run(tiny(), syn, cell)
    assert same_result(cell / "metrics.json", finished / "metrics.json")
    with np.load(cell / "ranks.npz") as a, np.load(finished / "ranks.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_checkpoint_is_due_after_the_interval_the_last_epoch_or_an_early_stop():
    from types import SimpleNamespace

    from rsbench.engine.train import checkpoint_due

    def tr(every: float, ago: float) -> SimpleNamespace:
        train = SimpleNamespace(epochs=10, checkpoint_every_s=every)
        return SimpleNamespace(cfg=SimpleNamespace(train=train), saved_at=time.monotonic() - ago)

    assert not checkpoint_due(tr(60, 30), 3, stop=False)
    assert checkpoint_due(tr(20, 30), 3, stop=False)
    assert checkpoint_due(tr(0, 0), 3, stop=False)  # 0: every epoch
    assert checkpoint_due(tr(60, 30), 10, stop=False)  # the last epoch
    assert checkpoint_due(tr(60, 30), 3, stop=True)  # an early stop


@pytest.mark.slow
def test_a_best_epoch_between_checkpoints_waits_in_memory_and_survives_a_kill(syn, tmp_path, monkeypatch):
    """With checkpoints rarer than epochs, the best epoch's weights are copied before training moves on; the one
    checkpoint (after the last epoch) carries them in last.pt, a kill before best.safetensors is repaired from
    there, and the cell ends as one that wrote a checkpoint every epoch."""
    from safetensors.torch import load_file

    from rsbench.engine import train

    real_select, real_save_resume, real_save_best = train.validate_and_select, train.save_resume, train.save_best

    def only_epoch_1_improves(st, val, epoch, metric):
        if epoch == 1:
            return real_select(st, val, epoch, metric)
        st.bad_evals += 1
        return False

    def die(*_a, **_k):
        raise Killed

    monkeypatch.setattr(train, "validate_and_select", only_epoch_1_improves)
    every = tmp_path / "every" / "seed0"
    run(tiny(3, checkpoint_every_s=0), syn, every)
    written: list[int] = []
    monkeypatch.setattr(train, "save_resume", lambda p, s, n: (written.append(s["epoch"]), real_save_resume(p, s, n)))
    monkeypatch.setattr(train, "save_best", die)
    cell = tmp_path / "rare" / "seed0"
    with pytest.raises(Killed):
        run(tiny(3, checkpoint_every_s=1e9), syn, cell)
    state = load_resume(cell / "checkpoint" / "last.pt")
    assert written == [3] and state["best_epoch"] == 1 and "best_model" in state
    assert not (cell / "checkpoint" / "best.safetensors").exists()
    monkeypatch.setattr(train, "save_best", real_save_best)
    run(tiny(3, checkpoint_every_s=1e9), syn, cell)
    assert written == [3]  # nothing left to train: no new checkpoint
    assert same_result(cell / "metrics.json", every / "metrics.json")
    a, b = (load_file(str(c / "checkpoint" / "best.safetensors")) for c in (every, cell))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cell / "metrics.json").read_text())["selected_epoch"] == 1


@pytest.mark.slow
def test_early_stopped_cell_is_not_trained_further_on_resume(syn, finished, tmp_path):
    cell = tmp_path / "seed0"
    shutil.copytree(finished, cell)
    (cell / "metrics.json").unlink()
    last = cell / "checkpoint" / "last.pt"
    state = load_resume(last)
    state.update(epoch=1, log=state["log"][:1], early_stopped=True, best_epoch=1)
    torch.save(state, last)
    meta = json.loads((cell / "checkpoint" / "best.json").read_text())
    from safetensors.torch import load_file, save_file

    header = {"format": "rsbench-best-v1", "method": "vsepp", "meta": json.dumps({**meta, "epoch": 1})}
    save_file(load_file(str(cell / "checkpoint" / "best.safetensors")), str(cell / "checkpoint" / "best.safetensors"),
              metadata=header)
    lines: list[str] = []
    from rsbench.datasets import load_dataset
    from rsbench.engine.cell import run_cell

    run_cell(tiny(), load_dataset("synthetic", data_root=syn), cell, torch.device("cpu"), log=lines.append)
    assert not any("epoch 2/2" in ln for ln in lines), lines
    assert json.loads((cell / "metrics.json").read_text())["selected_epoch"] == 1


def test_config_differences_ignore_speed_only_options():
    from rsbench.engine.cellfolder import config_differences, config_record

    a = config_record(tiny())
    b = json.loads(json.dumps(a))
    b["train"].update(num_workers=7, eval_batch_size=17, compile=True)
    assert config_differences(a, b) == []
    b["train"]["lr"] = 1.0
    b["model"]["embed_dim"] = 8
    assert config_differences(b, a) == ["model.embed_dim: 8 in the cell, 32 now",
                                        "train.lr: 1.0 in the cell, 0.0005 now"]


# ---- locks, atomic writes ---------------------------------------------------------------------

def test_cell_lock_is_exclusive_and_names_its_holder(tmp_path):
    from rsbench.locks import cell_lock, lock_path

    cell = tmp_path / "res" / "ds" / "m" / "seed0"
    a, b = cell_lock(cell), cell_lock(cell)
    assert a.acquire()
    assert lock_path(cell) == cell.parent / ".seed0.lock" and not cell.exists()
    assert not b.acquire()
    assert b.describe_owner() == f"pid {os.getpid()}"
    a.release()
    assert b.acquire()
    b.release()


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    rio.write_json(target, {"old": 1})

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rio.os, "fsync", full)
    with pytest.raises(rio.WriteError, match=r"metrics.json: cannot write \(No space left on device\); "
                                             r"the previous version, if any, is unchanged"):
        rio.write_json(target, {"new": 2})
    with pytest.raises(rio.WriteError):  # torch.save wraps the OSError in a RuntimeError
        rio.write_with(tmp_path / "x.pt", lambda f: torch.save({"a": torch.zeros(10)}, f))
    assert json.loads(target.read_text()) == {"old": 1}
    assert rio.stale_temp_files(tmp_path) == []


def test_written_files_follow_the_umask_and_kill_hook_is_inert(tmp_path):
    rio.write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == rio._FILE_MODE
    rio.kill_point("write:a.txt")  # RSBENCH_TEST_KILL_AT unset: nothing happens
    (tmp_path / ".a.txt.abc.tmp").write_text("half")
    assert rio.remove_stale_temp_files(tmp_path) == 1 and (tmp_path / "a.txt").read_text() == "x"


def test_disk_full_during_a_run_is_one_line(syn, tmp_path, capsys, monkeypatch):
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("last.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(rio.os, "replace", replace)
    args = ["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "res"), *TINY_ARGS]
    code, _, err = main(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert re.fullmatch(r"error: \S+/checkpoint/last\.pt: cannot write \(No space left on device\); the previous "
                        r"version, if any, is unchanged\n", err), err
    assert rio.stale_temp_files(tmp_path / "res" / "synthetic" / "vsepp" / "seed0" / "checkpoint") == []


# ---- dirty datasets, user-facing ---------------------------------------------------------------

def test_worker_traceback_becomes_one_line():
    from rsbench.errors import one_line

    e = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                  '  File "x.py", line 1, in f\nrsbench.errors.DataError: /d/img.png: corrupt or truncated image (x)\n')
    assert one_line(e) == "/d/img.png: corrupt or truncated image (x)"
    assert one_line(UserError("plain message")) == "plain message"


@pytest.mark.slow
def test_corrupt_images_in_run_and_check(syn, tmp_path, capsys):
    """A truncated image and a non-image: `bench run` stops with one line naming the file (here raised
    in a DataLoader worker); `bench data check` lists both."""
    root = tmp_path / "syn"
    shutil.copytree(syn, root)
    ann = json.loads((root / "dataset.json").read_text())
    first = {im["split"]: im["filename"] for im in reversed(ann["images"])}
    truncated, garbage = root / "images" / first["val"], root / "images" / first["train"]
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage.write_bytes(b"this is not an image")
    args = ["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(root), "--epochs", "0",
            "--device", "cpu", "--out", str(tmp_path / "res"), *TINY_ARGS, "--set", "train.num_workers=1"]
    code, _, err = main(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert err == f"error: {truncated.resolve()}: corrupt or truncated image (image file is truncated)\n", err
    code, _, err = main(["data", "check", "synthetic", "--data-root", str(root)], capsys)
    assert code == 1 and "Traceback" not in err
    assert f"error: {truncated.resolve()}: corrupt or truncated image (image file is truncated)" in err
    assert f"error: {garbage.resolve()}: not a readable image (unknown format or corrupt header)" in err


@pytest.mark.slow
def test_odd_tiffs_train_and_check(tmp_path, capsys):
    """16-bit (1- and 3-band), 4-band 16-bit and 8-bit greyscale TIFFs: checked clean, train end to end."""
    fs = make_karpathy(tmp_path / "sydney", "sydney")
    write_image(fs.image_dir / fs.splits["train"][0], np.random.default_rng(0), 32, "grey16")
    code, out, err = main(["data", "check", "sydney", "--data-root", str(fs.root)], capsys)
    assert code == 0, err
    assert "no problems found" in out
    assert all(m in out for m in ("I;16", "L x", "RGB (16-bit)", "RGB (16-bit, 4 bands)")), out
    args = ["run", "--methods", "vsepp", "--dataset", "sydney", "--data-root", str(fs.root), "--preset", "small",
            "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "res"), *TINY_ARGS]
    code, out, err = main(args, capsys)
    assert code == 0, err
    assert is_complete(tmp_path / "res" / "sydney" / "vsepp" / "seed0")


def test_image_cache_is_passed_to_the_loaders_not_attached_to_the_shared_splits(syn, tmp_path, monkeypatch):
    """train.image_cache: training and every evaluation read the cache, and the Split objects (shared by
    the cells of a grid) are left as they were, so the next cell cannot inherit this cell's cache."""
    from rsbench.datasets import load_dataset
    from rsbench.datasets.cache import ImageCache
    from rsbench.engine.cell import run_cell

    reads = {"n": 0}
    real_get = ImageCache.get

    def counted(self, row):
        reads["n"] += 1
        return real_get(self, row)

    monkeypatch.setattr(ImageCache, "get", counted)
    data = load_dataset("synthetic", data_root=syn)
    run_cell(tiny(epochs=1, image_cache="true"), data, tmp_path / "seed0", torch.device("cpu"),
             log=lambda *_: None)
    assert all(s.image_cache is None for s in (data.train, data.val, data.test))
    # one validation and one test evaluation read each of their images once; training reads more on top
    assert reads["n"] > data.val.n_images + data.test.n_images


def test_complete_cell_drops_its_resume_state_unless_keep_last(syn, tmp_path):
    """#21: last.pt (resume state, 100s of MB per real cell) is removed once metrics.json is written;
    train.keep_last=true keeps it. The best checkpoint and every result file stay."""
    from rsbench.results.cell import is_complete
    from rsbench.results.scan import scan_results

    dropped, kept = tmp_path / "r" / "synthetic" / "vsepp" / "seed0", tmp_path / "k" / "synthetic" / "vsepp" / "seed0"
    run(tiny(1), syn, dropped)
    run(tiny(1, keep_last=True), syn, kept)
    assert not (dropped / "checkpoint" / "last.pt").exists() and (kept / "checkpoint" / "last.pt").is_file()
    for cell in (dropped, kept):
        assert is_complete(cell) and (cell / "checkpoint" / "best.safetensors").is_file()
    assert same_result(dropped / "metrics.json", kept / "metrics.json")
    assert [c.method for c in scan_results(tmp_path / "r")] == ["vsepp"]
