"""HarMA: adapters in a frozen open_clip tower; only adapters/gates/temperature train; retrieval far above chance."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

from rsbench.errors import UserError
from rsbench.methods.base import MethodContext

open_clip = pytest.importorskip("open_clip")

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """A tiny architecture (vision width 64, text width 48: adapters must handle unequal widths) + weights."""
    folder = tmp_path_factory.mktemp("harma")
    cfg = folder / "rsb-adapter-tiny.json"
    cfg.write_text(json.dumps(TINY))
    from rsbench.methods.components.openclip_tower import resolve_architecture

    resolve_architecture("", str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model("rsb-adapter-tiny")
    ckpt = folder / "tower.pt"
    torch.save(model.state_dict(), ckpt)
    return {"config": str(cfg), "ckpt": str(ckpt), "state": model.state_dict(), "model": model.eval()}


def _ctx(tmp_path: Path) -> MethodContext:
    return MethodContext(train_captions=["a plane"], train_cap2img=np.zeros(1, dtype=np.int64), cache_dir=tmp_path)


def _harma(tower, tmp_path, **kw):
    from rsbench.methods.harma import HarmaConfig, HarmaMethod

    opts = {"bottleneck": 16, "heads": 2, **kw}
    return HarmaMethod(HarmaConfig(model_config=tower["config"], checkpoint=tower["ckpt"], **opts), _ctx(tmp_path))


def test_starts_as_the_frozen_tower_and_only_adapters_train(tower, tmp_path):
    """Zero-initialised up-projections: before training the scores are the tower's own."""
    m = _harma(tower, tmp_path).eval()
    images = torch.randn(3, 3, 32, 32)
    text = m.tokenizer()(["a red airport", "a harbor", "green farmland"])
    with torch.no_grad():
        want = torch.nn.functional.normalize(tower["model"].encode_image(images), dim=-1) @ \
            torch.nn.functional.normalize(tower["model"].encode_text(text["input_ids"]), dim=-1).T
        got = m.score(m.encode_images(images), m.encode_texts(text))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("tower.") for n in trainable)
    counts = m.weight_provenance()["parameters"]
    assert counts["trainable"] == sum(p.numel() for p in m.parameters() if p.requires_grad) < counts["total"] / 5
    # paper: image block i and text block i share a mini-adapter; released code: text only.
    assert m.image_adapters[0].adapter.shared[0] is m.text_adapters[0].adapter.shared[0] is m.shared[0]
    code = _harma(tower, tmp_path, share="text")
    assert code.image_adapters[0].adapter.shared[0] is None
    assert code.weight_provenance()["parameters"]["trainable"] == counts["trainable"]


def test_weighted_triplet_matches_a_per_pair_loop():
    from rsbench.methods.harma import weighted_triplet

    torch.manual_seed(0)
    img, txt = torch.randn(4, 6), torch.randn(4, 6)
    ids = torch.tensor([0, 1, 0, 2])
    a = torch.nn.functional.normalize(img, dim=-1)
    b = torch.nn.functional.normalize(txt, dim=-1)
    s = a @ b.T
    total = 0.0
    for i in range(4):
        for j in range(4):
            if ids[i] == ids[j]:
                continue
            for c in (max(0.0, 0.2 + float(s[i, j] - s[i, i])), max(0.0, 0.2 + float(s[i, j] - s[j, j]))):
                total += (1 - np.exp(-c)) ** 2 * c
    assert float(weighted_triplet(img, txt, ids, 0.2, 2.0)) == pytest.approx(total / 2, rel=1e-5)


def test_bad_options(tower, tmp_path):
    with pytest.raises(UserError, match="bad value for 'model.share'"):
        _harma(tower, tmp_path, share="image")
    with pytest.raises(UserError, match="divisible by model.heads"):
        _harma(tower, tmp_path, heads=3)


@pytest.mark.slow
def test_bench_run_trains_adapters_only_and_retrieves(tower, tmp_path, monkeypatch, capsys):
    _train_and_check("harma", tower, tmp_path, monkeypatch, capsys, ["--set", "bottleneck=32", "--set", "heads=4"])


def _train_and_check(method, tower, tmp_path, monkeypatch, capsys, extra):
    """`bench run` on a tiny synthetic set: the frozen tower's weights in best.safetensors are the file's,
    and test mR is far above chance. Shared with tests/test_pe_rsitr.py."""
    from safetensors.torch import load_file

    from rsbench.datasets.synthetic import generate_synthetic

    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    syn = tmp_path / "syn"
    generate_synthetic(syn, n_images=300, image_size=32, seed=0)
    code, _out, err = run_cli(["run", "--methods", method, "--dataset", "synthetic", "--data-root", str(syn),
                              "--epochs", "8", "--batch-size", "32", "--out", str(tmp_path / "out"),
                              "--set", "train.image_size=32", "--set", "train.num_workers=0",
                              "--set", "train.lr=3e-3", "--set", f"model_config={tower['config']}",
                              "--set", "model=rsb-adapter-tiny", "--set", f"checkpoint={tower['ckpt']}", *extra], capsys)
    assert code == 0, err
    assert f"{method}: " in err and "trainable of" in err  # the parameter count is printed
    cell = tmp_path / "out" / "synthetic" / method / "seed0"
    metrics = json.loads((cell / "metrics.json").read_text())
    best = load_file(str(cell / "checkpoint" / "best.safetensors"))
    for k, v in tower["state"].items():
        assert torch.equal(best[f"tower.model.{k}"], v), k  # the backbone did not move
    adapters = [k for k in best if not k.startswith("tower.")]
    assert adapters
    run = json.loads((cell / "run.json").read_text())
    assert run["weights"]["parameters"]["trainable"] > 0 and len(run["weights"]["tower"]["sha256"]) == 64
    chance = metrics.get("chance_mR") or metrics.get("chance", {}).get("mR")
    print(method, "test mR", metrics["mR"], "chance", chance)
    # A frozen RANDOM tiny tower leaves the adapters little to work with: ~1.6-2x chance after 8 epochs
    # (measured 18.9 and 22.6 vs chance 11.5); 1.5x still separates learning from none (zero-shot ~ chance).
    assert metrics["mR"] > 1.5 * float(chance)
    return metrics
