"""Backbone weights load strictly unless a partial load is asked for, and their provenance reaches run.json.

A backbone that silently keeps most of its random initialisation gives numbers nobody can reproduce,
so a local weights file must cover every tensor of the backbone (right name, right shape); the
counts of loaded/missing/unexpected tensors and the timm tag or file are recorded with the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rsbench.errors import UserError
from rsbench.methods.components.backbones import create_backbone

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _full_state(name: str) -> dict[str, torch.Tensor]:
    """A whole classification checkpoint (head included), as users download them."""
    import timm

    torch.manual_seed(1)
    return {k: v.clone() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}


def _save(path: Path, sd: dict[str, torch.Tensor]) -> str:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("name, indices", [("test_resnet", (1, 2, 3, 4)), ("test_convnext", (0, 1, 2, 3))])
def test_complete_file_loads_strictly_into_a_features_only_model(tmp_path, name, indices):
    sd = _full_state(name)
    path = _save(tmp_path / "w.safetensors", sd)
    model = create_backbone(name, weights=path, features_only=True, out_indices=indices)
    own = model.state_dict()
    # every tensor of the model comes from the file ('stages.0' is spelt 'stages_0' in timm's feature wrapper)
    for k, v in own.items():
        src = k if k in sd else k.replace("_", ".", 1)
        assert torch.equal(v, sd[src]), k
    info = model.rsbench_weights
    assert (info["source"], info["file"], info["strict"]) == ("file", path, True)
    assert info["loaded"] == len(own) and info["missing"] == 0
    assert info["unexpected"] == len(sd) - len(own) > 0  # the classifier head (and a final norm) stay unused


def test_partial_file_is_refused_unless_partial_is_asked(tmp_path):
    sd = _full_state("test_resnet")
    kept = {k: v for k, v in sd.items() if not k.startswith("layer4.")}
    path = _save(tmp_path / "half.safetensors", kept)
    with pytest.raises(UserError, match=r"half\.safetensors: \d+ of the backbone's \d+ tensors are not in the "
                                        r"file \(first: layer4.*backbone_partial=true"):
        create_backbone("test_resnet", weights=path, num_classes=0)
    model = create_backbone("test_resnet", weights=path, num_classes=0, partial=True)
    n_layer4 = sum(k.startswith("layer4.") for k in model.state_dict())
    info = model.rsbench_weights
    assert info["strict"] is False and info["missing"] == n_layer4 > 0
    assert info["loaded"] == len(model.state_dict()) - n_layer4
    assert torch.equal(model.state_dict()["conv1.0.weight"], sd["conv1.0.weight"])


def test_shape_mismatch_is_one_line_not_a_traceback(tmp_path):
    sd = _full_state("test_resnet")
    sd["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)  # another width
    path = _save(tmp_path / "odd.safetensors", sd)
    with pytest.raises(UserError, match=r"odd\.safetensors: 1 tensor\(s\) have another shape than the backbone's \(first: conv1"):
        create_backbone("test_resnet", weights=path, num_classes=0)
    info = create_backbone("test_resnet", weights=path, num_classes=0, partial=True).rsbench_weights
    assert info["shape_mismatch"] == 1 and info["missing"] == 1


def test_foreign_file_matches_nothing(tmp_path):
    path = _save(tmp_path / "other.safetensors", {"encoder.weight": torch.zeros(2, 2)})
    with pytest.raises(UserError, match="no tensor matches backbone"):
        create_backbone("test_resnet", weights=path, partial=True)


def test_weight_provenance_reaches_run_json(tiny_synthetic, tmp_path):
    from rsbench.config.resolve import resolve_config
    from rsbench.datasets import load_dataset
    from rsbench.engine.cell import run_cell

    path = _save(tmp_path / "bb.safetensors", _full_state("test_resnet"))
    cfg = resolve_config("vsepp", "synthetic", 0, "small", {}, {"epochs": 0, "batch_size": 8},
                         {"backbone": "test_resnet", "backbone_weights": path, "train.image_size": "32",
                          "embed_dim": "16", "hidden_dim": "16", "word_dim": "8"})
    cell = tmp_path / "seed0"
    run_cell(cfg, load_dataset("synthetic", data_root=tiny_synthetic), cell, torch.device("cpu"),
             log=lambda *_: None)
    weights = json.loads((cell / "run.json").read_text())["weights"]
    assert list(weights) == ["cnn"]
    rec = weights["cnn"]
    assert (rec["backbone"], rec["source"], rec["file"], rec["missing"]) == ("test_resnet", "file", path, 0)
    assert rec["loaded"] > 0 and rec["unexpected"] == 2  # fc.weight, fc.bias of the classifier


def test_paper_presets_ask_timm_for_torchvision_weights():
    """The authors used torchvision's ImageNet weights; timm's default ResNet-50 tag (a1_in1k) is another recipe."""
    import timm

    from rsbench.config.resolve import resolve_config

    for method, arch in (("amfmn", "resnet18"), ("msa", "resnet50")):
        name = resolve_config(method, "synthetic", preset="paper").model.backbone
        assert name == f"{arch}.tv_in1k"
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.tag == "tv_in1k"


def test_timm_weights_record_their_tag(monkeypatch):
    """pretrained=true: the tag timm resolved (resnet18 -> its default tag) goes into the provenance.
    The download is replaced by a weightless build (no network in tests); the tag logic is ours."""
    import timm

    real = timm.create_model
    asked = []

    def offline(name, pretrained=False, **kw):
        asked.append((name, pretrained))
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    tv = create_backbone("resnet18.tv_in1k", pretrained=True, features_only=True, out_indices=(1, 2, 3, 4))
    default = create_backbone("resnet50", pretrained=True, num_classes=0)
    assert asked == [("resnet18.tv_in1k", True), ("resnet50", True)]
    assert tv.rsbench_weights["source"] == "timm" and tv.rsbench_weights["tag"] == "resnet18.tv_in1k"
    assert tv.rsbench_weights["loaded"] == len(tv.state_dict()) and tv.rsbench_weights["missing"] == 0
    assert default.rsbench_weights["tag"] == "resnet50.a1_in1k"  # timm's default recipe, not torchvision's


@pytest.mark.parametrize("name", ["amfmn", "msa"])
def test_paper_presets_do_not_clip_gradients_but_the_option_stays(name):
    """Neither author clips (#20): grad_clip is 0 in `paper`, the small preset keeps the default 2.0."""
    from rsbench.config.resolve import resolve_config

    assert resolve_config(name, "rsitmd", preset="paper").train.grad_clip == 0
    assert resolve_config(name, "rsitmd", preset="paper", overrides={"train.grad_clip": "2"}).train.grad_clip == 2
    assert resolve_config(name, "synthetic", preset="small").train.grad_clip == 2.0
