"""The `openclip` method: a tiny architecture from a JSON config, safe checkpoint loading, tokenizer."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from helpers import TINY_OPENCLIP, fit_one_batch, one_caption_context

from rsbench.errors import UserError
from rsbench.methods.base import Batch

pytest.importorskip("open_clip")

TINY = TINY_OPENCLIP


_ctx = one_caption_context


def _write_config(folder: Path, name: str, cfg: dict) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _method(tmp_path: Path, **kw):
    from rsbench.methods.openclip import OpenClipConfig, OpenClipMethod

    return OpenClipMethod(OpenClipConfig(**kw), _ctx(tmp_path))


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    """A tiny architecture config file and a random-weights checkpoint of it (plain state dict)."""
    import open_clip

    folder = tmp_path_factory.mktemp("oc")
    cfg_path = _write_config(folder, "rsb-test-tiny", TINY)
    from rsbench.methods.components.openclip_tower import resolve_architecture

    assert resolve_architecture("", str(cfg_path)) == "rsb-test-tiny"
    torch.manual_seed(1)
    model = open_clip.create_model("rsb-test-tiny")
    ckpt = folder / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return {"folder": folder, "config": cfg_path, "ckpt": ckpt, "state": model.state_dict()}


def _assert_same_weights(method, state):
    own = method.model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def test_checkpoint_loads_exactly(arch, tmp_path):
    m = _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(arch["ckpt"]))
    assert m.arch == "rsb-test-tiny" and m.is_cnn is False
    _assert_same_weights(m, arch["state"])


def test_wrapped_checkpoint_with_module_prefix_and_safetensors(arch, tmp_path):
    from safetensors.torch import save_file

    wrapped = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in arch["state"].items()}}, wrapped)
    _assert_same_weights(_method(tmp_path, model_config=str(arch["config"]), checkpoint=str(wrapped)),
                         arch["state"])
    st = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in arch["state"].items()}, str(st))
    _assert_same_weights(_method(tmp_path, model_config=str(arch["config"]), checkpoint=str(st)), arch["state"])


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_foreign_and_tampered_checkpoints_refused(arch, tmp_path):
    cfg = str(arch["config"])
    missing = tmp_path / "nope.pt"
    with pytest.raises(UserError, match="nope.pt: checkpoint file not found"):
        _method(tmp_path, model_config=cfg, checkpoint=str(missing))
    evil = tmp_path / "evil.pt"
    torch.save({"weights": Evil()}, evil)
    with pytest.raises(UserError, match="evil.pt: cannot read weights safely"):
        _method(tmp_path, model_config=cfg, checkpoint=str(evil))
    not_tensors = tmp_path / "numbers.pt"
    torch.save({"a": 1, "b": [2, 3]}, not_tensors)
    with pytest.raises(UserError, match="numbers.pt: not a state dict of tensors"):
        _method(tmp_path, model_config=cfg, checkpoint=str(not_tensors))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(arch["ckpt"].read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated.pt: cannot read weights safely"):
        _method(tmp_path, model_config=cfg, checkpoint=str(truncated))
    # Wrong architecture: wider towers -> every weight mis-shaped, reported with counts.
    wide = json.loads(json.dumps(TINY))
    wide["vision_cfg"]["width"] = 48
    wide["text_cfg"]["width"] = 48
    wide_cfg = _write_config(tmp_path, "rsb-test-wide", wide)
    with pytest.raises(UserError, match=r"tiny.pt: does not match .*\d+ shape-mismatched keys"):
        _method(tmp_path, model_config=str(wide_cfg), checkpoint=str(arch["ckpt"]))


def test_partial_checkpoint_strict_and_lenient(arch, tmp_path):
    part = tmp_path / "part.pt"
    torch.save({k: v for k, v in arch["state"].items() if k.startswith("visual.")}, part)
    with pytest.raises(UserError, match=r"part.pt: does not match .*\d+ missing"):
        _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(part))
    m = _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(part), strict=False)
    assert torch.equal(m.model.visual.conv1.weight, arch["state"]["visual.conv1.weight"])


def test_config_errors(arch, tmp_path):
    with pytest.raises(UserError, match="unknown open_clip model 'ViT-B-33'"):
        _method(tmp_path, model="ViT-B-33")
    with pytest.raises(UserError, match="defines architecture 'rsb-test-tiny'"):
        _method(tmp_path, model="ViT-B-32", model_config=str(arch["config"]))
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 4}')
    with pytest.raises(UserError, match="bad.json: not an open_clip model config"):
        _method(tmp_path, model_config=str(bad))
    with pytest.raises(UserError, match=r"unknown open_clip pretrained tag 'opneai'.*did you mean 'openai'"):
        _method(tmp_path, model="RN50", pretrained="opneai")
    with pytest.raises(UserError, match="is a file: pass it as checkpoint=PATH"):
        _method(tmp_path, model_config=str(arch["config"]), pretrained=str(arch["ckpt"]))
    with pytest.raises(UserError, match="not both"):
        _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(arch["ckpt"]), pretrained="openai")


def test_tokenizer_picklable_prompt_and_preprocess(arch, tmp_path):
    import open_clip

    m = _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(arch["ckpt"]))
    assert m.image_mean_std() == (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))
    tok = pickle.loads(pickle.dumps(m.tokenizer()))
    caps = ["Many planes are parked near the terminal."]
    plain = tok(caps)["input_ids"]
    assert plain.shape == (1, 16) and plain.dtype == torch.long
    m.config.prompt = "a satellite image of"
    prompted = m.tokenizer()(caps)["input_ids"]
    assert not torch.equal(plain, prompted)
    ref = open_clip.get_tokenizer("rsb-test-tiny")(["a satellite image of many planes are parked near the terminal."])
    assert torch.equal(prompted, ref)


def test_finetune_step_and_image_size_check(arch, tmp_path):
    m = _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(arch["ckpt"]))
    tok = m.tokenizer()
    caps = ["a red airport", "a blue harbor", "green farmland", "a red airport too"]
    batch = Batch(torch.randn(4, 3, 32, 32), tok(caps), torch.tensor([0, 1, 2, 0]), torch.arange(4))
    opt = torch.optim.AdamW(m.param_groups(1e-3, 0.2))
    m.train()
    history = fit_one_batch(m, batch, opt, 5)
    losses = [loss for loss, _ in history]
    assert losses[-1] < losses[0]
    assert history[-1][1]["logit_scale"] == pytest.approx(1 / 0.07, rel=0.05)
    with pytest.raises(UserError, match="takes 32x32 images.*train.image_size=32"):
        m.encode_images(torch.randn(1, 3, 64, 64))
    # force_image_size rebuilds the tower for 64 px and interpolates the position embedding.
    m64 = _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(arch["ckpt"]), force_image_size=64)
    assert m64.encode_images(torch.randn(1, 3, 64, 64)).shape == (1, 16)


def test_own_best_checkpoint_reloads(arch, tmp_path):
    """A fine-tuned rsbench checkpoint (keys prefixed 'model.') is accepted as checkpoint=..."""
    from safetensors.torch import save_file

    m = _method(tmp_path, model_config=str(arch["config"]), checkpoint=str(arch["ckpt"]))
    best = tmp_path / "best.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(best))
    _assert_same_weights(_method(tmp_path, model_config=str(arch["config"]), checkpoint=str(best)), arch["state"])


# ---- end to end through `bench run` --------------------------------------------------------------

def _bench(args: list[str]) -> int:
    from rsbench.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.slow
def test_bench_run_zero_shot_then_finetune(arch, tmp_path, monkeypatch):
    """`bench run` with --epochs 0 scores the loaded checkpoint as-is; --epochs 1 fine-tunes it."""
    from rsbench.datasets.synthetic import generate_synthetic

    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    syn = tmp_path / "syn"
    generate_synthetic(syn, n_images=40, image_size=32, seed=0)
    common = ["run", "--methods", "openclip", "--dataset", "synthetic", "--data-root", str(syn),
              "--batch-size", "8", "--set", "train.image_size=32", "--set", "train.num_workers=0",
              "--set", "model=rsb-test-tiny", "--set", f"model_config={arch['config']}",
              "--set", f"checkpoint={arch['ckpt']}"]
    zs, ft = tmp_path / "zs", tmp_path / "ft"
    assert _bench([*common, "--epochs", "0", "--out", str(zs)]) == 0
    cell = zs / "synthetic" / "openclip" / "seed0"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["selected_epoch"] == 0 and metrics["val"] is not None and 0 <= metrics["mR"] <= 100
    config = json.loads((cell / "config.json").read_text())
    assert config["model"]["checkpoint"] == str(arch["ckpt"]) and config["model"]["prompt"] == ""
    from safetensors.torch import load_file

    best = load_file(str(cell / "checkpoint" / "best.safetensors"))
    assert torch.equal(best["model.visual.conv1.weight"], arch["state"]["visual.conv1.weight"])  # untouched

    assert _bench([*common, "--epochs", "1", "--out", str(ft)]) == 0
    cell = ft / "synthetic" / "openclip" / "seed0"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["selected_epoch"] == 1 and (cell / "train_log.csv").is_file()
    tuned = load_file(str(cell / "checkpoint" / "best.safetensors"))
    assert not torch.equal(tuned["model.visual.conv1.weight"], arch["state"]["visual.conv1.weight"])
