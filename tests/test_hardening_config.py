"""Issue 15, part B: bad config values fail at resolution (before any data is loaded), deep JSON,
a 'first line of an error' helper that never fails, `bench score` on odd .npy files, and loss logs
that stay on the device (no host sync per training step)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from rsbench.config.overlay import load_config_file
from rsbench.config.resolve import resolve_config
from rsbench.errors import DataError, UserError

pytestmark = pytest.mark.usefixtures("isolated_cache")


# ---- 1. bad values fail at resolution ------------------------------------------------------------

BAD_VALUES = [
    ("train.select_metric", "bogus", "train.select_metric 'bogus'"),
    ("train.lr", "none", "'lr': 'none' is not a valid float"),
    ("train.epochs", "none", "'epochs': 'none' is not a valid int"),
    ("train.batch_size", "none", "'batch_size': 'none' is not a valid int"),
    ("train.image_size", "none", "'image_size': 'none' is not a valid int"),
    ("train.weight_decay", "nan", "train.weight_decay"),
    ("train.lr", "inf", "train.lr"),
    ("embed_dim", "-1", "embed_dim"),
    ("train.eval_batch_size", "0", "train.eval_batch_size"),
    ("train.patience", "-1", "train.patience"),
    ("train.grad_clip", "-1", "train.grad_clip"),
    ("train.lr_gamma", "-0.5", "train.lr_gamma"),
    ("train.lr_step", "-2", "train.lr_step"),
]


@pytest.mark.parametrize(("key", "value", "expect"), BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_bad_values_fail_at_resolution(key, value, expect):
    with pytest.raises(UserError, match=re.escape(expect)) as info:
        resolve_config("vsepp", "synthetic", overrides={key: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method,key,value", [
    ("clip", "embed_dim", "0"), ("clip", "max_len", "1"), ("clip", "init_temperature", "0"),
    ("openclip", "max_logit_scale", "-1"), ("amfmn", "gamma", "nan"), ("amfmn", "hidden_dim", "0"),
    ("msa", "num_heads", "0"), ("msa", "loss.margin", "-0.1"), ("msa", "text_lr_mult", "-1"),
    ("vsepp", "margin", "-0.2"), ("vsepp", "max_words", "0"),
])
def test_every_method_config_is_validated(method, key, value):
    with pytest.raises(UserError, match=key.split(".")[-1]):
        resolve_config(method, "synthetic", overrides={key: value})


def test_bool_in_config_file_is_not_an_int(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"train": {"epochs": true}}')
    with pytest.raises(UserError, match="epochs.*True is not int"):
        resolve_config("vsepp", "synthetic", file_keys=load_config_file(f))


def test_json_null_in_config_file_refused(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"train": {"lr": null}}')
    with pytest.raises(UserError, match="bad value for 'lr': None is not float"):
        resolve_config("vsepp", "synthetic", file_keys=load_config_file(f))


def test_good_values_still_resolve():
    cfg = resolve_config("vsepp", "synthetic", overrides={"train.select_metric": "i2t_medr", "train.patience": "0",
                                                          "train.grad_clip": "0", "train.num_workers": "-1"})
    assert cfg.train.select_metric == "i2t_medr"
    cfg = resolve_config("clip", "synthetic", overrides={"text_trainable_layers": "-1"})
    assert cfg.model.text_trainable_layers == -1


def test_metric_directions():
    from rsbench.evaluation.metrics import METRIC_DIRECTION, METRIC_KEYS, metric_sign

    assert set(METRIC_DIRECTION) == set(METRIC_KEYS)
    for k in ("i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr"):
        assert metric_sign(k) == -1
    for k in ("mR", "i2t_r1", "t2i_r10"):
        assert metric_sign(k) == 1


def test_run_refuses_bad_value_before_loading_data(tmp_path, capsys, monkeypatch):
    from rsbench.engine import grid

    def no_data(*_a, **_k):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(grid, "load_data", no_data)
    code, _out, err = run_cli(["run", "--methods", "vsepp,clip", "--dataset", "synthetic", "--device", "cpu",
                               "--out", str(tmp_path / "r"), "--set", "clip.train.select_metric=bogus"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "train.select_metric 'bogus'" in err
    assert "i2t_medr" in err  # lists the valid names
    assert not list((tmp_path / "r").rglob("*.json"))


def test_lower_is_better_metric_selects_the_minimum(tiny_synthetic, tmp_path, monkeypatch):
    """Selection on i2t_meanr keeps the epoch with the LOWEST mean rank (fake val values 5, 2, 9)."""
    from rsbench.datasets import load_dataset
    from rsbench.engine import cell as runner

    fake = iter([5.0, 2.0, 9.0])
    real = runner.evaluate

    def evaluate(method, split, *a, **k):
        result = real(method, split, *a, **k)
        if split is data.val:
            result = replace(result, metrics={**result.metrics, "i2t_meanr": next(fake)})
        return result

    monkeypatch.setattr(runner, "evaluate", evaluate)
    data = load_dataset("synthetic", data_root=tiny_synthetic)
    cfg = resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": 3, "batch_size": 8},
                         {"train.sampling": "image", "train.image_size": "32", "backbone": "test_resnet",
                          "embed_dim": "16", "hidden_dim": "16", "word_dim": "8",
                          "train.select_metric": "i2t_meanr"})
    res = runner.run_cell(cfg, data, tmp_path / "cell", torch.device("cpu"), log=lambda *_: None)
    assert res.metrics["selected_epoch"] == 2
    assert res.metrics["val"]["i2t_meanr"] == 2.0


# ---- 2. deeply nested JSON ----------------------------------------------------------------------

def test_deep_json_config_file_is_one_line(tmp_path):
    f = tmp_path / "deep.json"
    f.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(UserError, match="deep.json: cannot parse config .*nested too deeply") as info:
        load_config_file(f)
    assert "\n" not in str(info.value)


def test_deep_toml_config_file_is_one_line(tmp_path):
    f = tmp_path / "deep.toml"
    f.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(UserError, match="deep.toml: cannot parse config .*nested too deeply"):
        load_config_file(f)


def test_deep_json_run_config_via_cli(tmp_path, capsys):
    f = tmp_path / "deep.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    code, _out, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--config", str(f),
                               "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1 and "nested too deeply" in err


def test_deep_json_annotation_file_is_one_line(tmp_path):
    from rsbench.datasets.formats.karpathy import read_karpathy

    f = tmp_path / "dataset.json"
    f.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataError, match="dataset.json: not valid JSON .*nested too deeply"):
        read_karpathy(f)


# ---- 3. first line of an error message ------------------------------------------------------------

@pytest.mark.parametrize(("exc", "expect"), [
    (EOFError(), "EOFError"),
    (ValueError("  \n\n"), "ValueError"),
    (RuntimeError("\nfirst\nsecond"), "first"),
    (OSError("x" * 500), "x" * 500),
])
def test_one_line(exc, expect):
    from rsbench.errors import one_line

    assert one_line(exc) == expect
    assert one_line(exc, 10) == expect[:10]


def test_zero_byte_weights_and_resume_files(tmp_path):
    from rsbench.engine.checkpoint import load_resume
    from rsbench.methods.components.backbones import load_state_dict_file

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.pt: cannot read weights safely \(EOFError\)"):
        load_state_dict_file(empty)
    with pytest.raises(UserError, match=r"empty\.pt: refusing to load resume state.*\(EOFError\)"):
        load_resume(empty)


def _run_tiny(tmp: Path, syn: Path, capsys, *sets: str) -> tuple[int, str]:
    args = ["run", "--methods", "vsepp", "--dataset", "synthetic", "--data-root", str(syn), "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--out", str(tmp / "r"), "--set", "train.image_size=32"]
    for s in sets:
        args += ["--set", s]
    code, _out, err = run_cli(args, capsys)
    return code, err


def test_zero_byte_backbone_weights_via_cli(tmp_path, tiny_synthetic, capsys):
    empty = tmp_path / "w.pt"
    empty.write_bytes(b"")
    code, err = _run_tiny(tmp_path, tiny_synthetic, capsys, "backbone=test_resnet", f"backbone_weights={empty}")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "w.pt: cannot read weights safely (EOFError)" in lines[0]


def test_zero_byte_last_pt_via_cli(tmp_path, tiny_synthetic, capsys):
    sets = ("backbone=test_resnet", "embed_dim=16", "hidden_dim=16", "word_dim=8", "train.sampling=image")
    code, err = _run_tiny(tmp_path, tiny_synthetic, capsys, *sets)
    assert code == 0, err
    cell = next((tmp_path / "r").rglob("seed0"))
    (cell / "metrics.json").unlink()  # looks interrupted: the next run resumes from last.pt
    (cell / "checkpoint" / "last.pt").write_bytes(b"")
    code, err = _run_tiny(tmp_path, tiny_synthetic, capsys, *sets)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "last.pt: refusing to load resume state" in lines[0], err
    assert "(EOFError)" in lines[0]


def test_zero_byte_openclip_checkpoint(tmp_path):
    pytest.importorskip("open_clip")
    from rsbench.methods.components.openclip_tower import load_openclip_weights

    empty = tmp_path / "oc.bin"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"oc\.bin: cannot read weights safely \(EOFError\)"):
        load_openclip_weights(torch.nn.Linear(2, 2), empty)


# ---- 4. bench score on odd .npy files, and --overwrite writes last ----------------------------------

def _score(tmp: Path, syn: Path, sims: Path, capsys, *extra: str) -> tuple[int, str, str]:
    return run_cli(["score", str(sims), "--dataset", "synthetic", "--data-root", str(syn), "--name", "ext",
                    "--out", str(tmp / "r"), *extra], capsys)


@pytest.fixture
def test_shape(tiny_synthetic) -> tuple[int, int]:
    from rsbench.datasets import load_dataset

    sp = load_dataset("synthetic", data_root=tiny_synthetic, verify_images=False).test
    return sp.n_images, sp.n_captions


def _negative_shape_npy(path: Path) -> None:
    np.save(path, np.zeros((2, 3), dtype=np.float32))
    raw = path.read_bytes().replace(b"(2, 3)", b"(-2, 3)")
    path.write_bytes(raw)


@pytest.mark.parametrize("kind", ["big_endian", "longdouble", "negative_shape", "garbage", "text"])
def test_score_odd_npy_is_one_line(kind, tmp_path, tiny_synthetic, test_shape, capsys):
    rng = np.random.default_rng(0)
    sims = tmp_path / "s.npy"
    if kind == "big_endian":
        np.save(sims, rng.standard_normal(test_shape).astype(">f4"))
    elif kind == "longdouble":
        np.save(sims, rng.standard_normal(test_shape).astype(np.longdouble))
    elif kind == "negative_shape":
        _negative_shape_npy(sims)
    elif kind == "garbage":
        sims.write_bytes(b"\x93NUMPY\x01\x00" + b"\xff" * 40)
    else:
        sims.write_text("0.1 0.2\n0.3 0.4\n")
    code, _out, err = _score(tmp_path, tiny_synthetic, sims, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if kind == "big_endian":  # a valid matrix in another byte order: scored like the native one
        native = tmp_path / "n.npy"
        np.save(native, np.load(sims).astype("<f4"))
        assert code == 0, err
        m_be = json.loads(next((tmp_path / "r").rglob("metrics.json")).read_text())
        code, _out, err = _score(tmp_path, tiny_synthetic, native, capsys, "--overwrite")
        assert code == 0, err
        assert json.loads(next((tmp_path / "r").rglob("metrics.json")).read_text())["mR"] == m_be["mR"]
        return
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    if kind == "longdouble":
        assert "float128" in lines[0] or "longdouble" in lines[0]
    if kind == "text":
        assert "pickle" not in lines[0] and "not a .npy file" in lines[0]


def test_score_overwrite_keeps_old_result_when_new_input_is_bad(tmp_path, tiny_synthetic, test_shape, capsys):
    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).standard_normal(test_shape).astype(np.float32))
    assert _score(tmp_path, tiny_synthetic, good, capsys)[0] == 0
    metrics = next((tmp_path / "r").rglob("metrics.json"))
    before = metrics.read_bytes()
    bad = tmp_path / "bad.npy"
    np.save(bad, np.random.default_rng(1).standard_normal(test_shape).astype(np.longdouble))
    code, _out, err = _score(tmp_path, tiny_synthetic, bad, capsys, "--overwrite")
    assert code == 2, err
    assert metrics.read_bytes() == before  # the old, complete cell is intact


def test_score_overwrite_computes_before_clearing(tmp_path, tiny_synthetic, test_shape, capsys, monkeypatch):
    """A failure while ranking (after the input checks) leaves the old cell complete."""
    from rsbench.evaluation import metrics as rm

    good = tmp_path / "good.npy"
    np.save(good, np.random.default_rng(0).standard_normal(test_shape).astype(np.float32))
    assert _score(tmp_path, tiny_synthetic, good, capsys)[0] == 0
    metrics = next((tmp_path / "r").rglob("metrics.json"))
    before = metrics.read_bytes()

    def boom(*_a, **_k):
        raise UserError("ranking failed")

    monkeypatch.setattr(rm, "compute_ranks", boom)
    code, _out, err = _score(tmp_path, tiny_synthetic, good, capsys, "--overwrite")
    assert code == 2 and "ranking failed" in err
    assert metrics.read_bytes() == before


# ---- 5. requires-python is true -------------------------------------------------------------------

def test_toml_reader_fallback_declared():
    import tomllib

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    proj = tomllib.loads(text)["project"]
    low = proj["requires-python"].removeprefix(">=")
    if tuple(int(p) for p in low.split(".")[:2]) < (3, 11):
        assert any(d.replace(" ", "").startswith("tomli") and "python_version<'3.11'" in d.replace(" ", "")
                   .replace('"', "'") for d in proj["dependencies"])
        src = (Path(__file__).resolve().parents[1] / "rsbench" / "config" / "overlay.py").read_text(encoding="utf-8")
        assert "import tomli " in src or "import tomli\n" in src


# ---- 6. loss logs stay on the device --------------------------------------------------------------

class _SyncCounter:
    """Counts Tensor.item / float(tensor) calls (each is a host sync on a GPU) while active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.n, self.active = 0, True
        item, to_float = torch.Tensor.item, torch.Tensor.__float__

        def counted(real):
            def f(t, *a, **k):
                if self.active:
                    self.n += 1
                return real(t, *a, **k)
            return f

        monkeypatch.setattr(torch.Tensor, "item", counted(item))
        monkeypatch.setattr(torch.Tensor, "__float__", counted(to_float))


def _methods_and_batches(tmp_path: Path):
    from rsbench.config.overlay import set_key
    from rsbench.methods import Batch, MethodContext, create_method

    caps = ["a plane at the airport", "many ships in the harbor", "green farmland", "a dense forest"] * 2
    ctx = MethodContext(train_captions=caps, train_cap2img=np.arange(8) // 2, cache_dir=tmp_path)
    configs = {
        "vsepp": {"backbone": "test_resnet", "embed_dim": "16", "hidden_dim": "16", "word_dim": "8"},
        "amfmn": {"embed_dim": "32", "word_dim": "16", "hidden_dim": "16"},
        "msa": {"backbone": "test_resnet", "pretrained": "false", "text_model": "minilm", "embed_dim": "384"},
        "clip": {"backbone": "test_resnet", "pretrained": "false", "embed_dim": "16", "max_len": "16"},
    }
    for name, keys in configs.items():
        cfg = resolve_config(name, "synthetic").model
        for k, v in keys.items():
            set_key(cfg, k, v)
        torch.manual_seed(0)
        m = create_method(name, cfg, ctx)
        size = 64 if name == "amfmn" else 32
        ids = torch.arange(8) // 2
        yield name, m, Batch(images=torch.randn(8, 3, size, size), text=m.tokenizer()(caps), image_ids=ids,
                             caption_ids=torch.arange(8))


def test_training_loss_makes_no_host_sync(tmp_path, monkeypatch):
    for name, method, batch in _methods_and_batches(tmp_path):
        method.train()
        counter = _SyncCounter(monkeypatch)
        out = method.training_loss(batch)
        out.loss.backward()
        counter.active = False
        assert counter.n == 0, f"{name}: {counter.n} .item()/float() calls in one training step"
        assert out.logs and all(isinstance(v, torch.Tensor) and not v.requires_grad for v in out.logs.values()), \
            name
        monkeypatch.undo()


def test_runner_reads_logs_once_per_epoch(tiny_synthetic, tmp_path, monkeypatch):
    """The step loop reads nothing back; the epoch's mean loss and logs are read once, at its end."""
    from rsbench.datasets import load_dataset
    from rsbench.engine import cell as runner

    data = load_dataset("synthetic", data_root=tiny_synthetic)
    counter = _SyncCounter(monkeypatch)
    counter.active = False
    real = runner.evaluate
    steps = {"n": 0}
    real_create = runner.create_method

    def evaluate(*a, **k):
        was, counter.active = counter.active, False
        try:
            return real(*a, **k)
        finally:
            counter.active = was

    def create(*a, **k):
        m = real_create(*a, **k)
        loss = m.training_loss

        def step(batch):
            steps["n"] += 1
            counter.active = True
            return loss(batch)

        m.training_loss = step
        return m

    monkeypatch.setattr(runner, "evaluate", evaluate)
    monkeypatch.setattr(runner, "create_method", create)
    lines: list[str] = []
    cfg = resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": 2, "batch_size": 4},
                         {"train.sampling": "caption", "train.image_size": "32", "backbone": "test_resnet",
                          "embed_dim": "16", "hidden_dim": "16", "word_dim": "8"})
    runner.run_cell(cfg, data, tmp_path / "cell", torch.device("cpu"), log=lines.append)
    counter.active = False
    assert steps["n"] >= 20
    assert counter.n <= 2 * 4, f"{counter.n} host reads over {steps['n']} steps"  # loss + 2 logs + lr, per epoch
    epoch_lines = [ln for ln in lines if ln.strip().startswith("epoch")]
    assert len(epoch_lines) == 2 and all("triplet" in ln and "hardest" in ln for ln in epoch_lines)
    rows = list(csv.DictReader((tmp_path / "cell" / "train_log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["loss"]) > 0 for r in rows)
