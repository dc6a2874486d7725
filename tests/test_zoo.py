"""The checkpoint zoo: each family's file format loads through its zoo entry with the entry's activation,
input size and mean/std, and scores exactly like the directly built model; missing files and wrong
activations are one-line errors."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_OPENCLIP, one_caption_context, run_cli

from rsbench.errors import UserError

open_clip = pytest.importorskip("open_clip")

TINY = TINY_OPENCLIP


_ctx = one_caption_context


@pytest.fixture(scope="module")
def tiny_archs(tmp_path_factory):
    """Two tiny open_clip architectures: one with QuickGELU (as OpenAI-initialised weights), one GELU."""
    from rsbench.methods.components.openclip_tower import resolve_architecture

    folder = tmp_path_factory.mktemp("zoo-archs")
    names = {}
    for name, quick in (("rsb-zoo-tiny-quickgelu", True), ("rsb-zoo-tiny", False)):
        path = folder / f"{name}.json"
        path.write_text(json.dumps({**TINY, "quick_gelu": quick}))
        names[quick] = resolve_architecture("", str(path))
    return names


def _tiny_entry(name: str, arch: str, image_size: int = 32):
    from rsbench.methods.components.zoo_catalogue import get_entry

    return dataclasses.replace(get_entry(name), arch=arch, image_size=image_size)


@pytest.fixture
def use_tiny(monkeypatch):
    """Swap a zoo entry for a tiny-architecture copy (same name, files, preprocessing) in catalogue and method."""
    from rsbench.methods.components import zoo_catalogue
    from rsbench.methods.registry import get_method_spec

    def swap(entry):
        zoo = tuple(entry if e.name == entry.name else e for e in zoo_catalogue.ZOO)
        monkeypatch.setattr(zoo_catalogue, "ZOO", zoo)
        monkeypatch.setattr(get_method_spec(entry.method_name).cls, "entry", entry)
        return get_method_spec(entry.method_name)

    return swap


def _scores(encode_i, encode_t, images, ids):
    import torch.nn.functional as F

    with torch.no_grad():
        return F.normalize(encode_i(images), dim=-1) @ F.normalize(encode_t(ids), dim=-1).T


def _check_family(tmp_path, spec, entry, model, write):
    """Save `model` with `write`, load through the zoo method, compare settings and scores."""
    write(tmp_path / entry.files[0])
    cfg = spec.config_cls(weights_dir=str(tmp_path))
    cfg.validate()
    method = spec.cls(cfg, _ctx(tmp_path)).eval()
    assert method.image_mean_std() == (entry.mean, entry.std)
    prov = method.weight_provenance()["tower"]
    assert prov["activation"] == entry.activation and prov["image_size"] == entry.image_size
    assert prov["zoo"] == entry.name and len(prov["sha256"]) == 64
    images = torch.randn(3, 3, entry.image_size, entry.image_size)
    text = method.tokenizer()(["a red airport", "a harbor", "green farmland"])
    got = method.score(*(f for f in (method.encode_images(images), method.encode_texts(text))))
    model.eval()
    want = _scores(model.encode_image, model.encode_text, images, text["input_ids"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,quick", [("remoteclip-vit-b-32", True), ("georsclip-vit-b-32-ret2", True),
                                        ("georsclip-vit-h-14", False)])
def test_openclip_state_dict_families(tmp_path, tiny_archs, use_tiny, name, quick):
    entry = _tiny_entry(name, tiny_archs[quick])
    spec = use_tiny(entry)
    torch.manual_seed(0)
    model = open_clip.create_model(entry.arch)
    from rsbench.methods.components.openclip_tower import uses_quick_gelu

    assert uses_quick_gelu(model) is quick
    _check_family(tmp_path, spec, entry, model, lambda p: torch.save(model.state_dict(), p))


def test_skyclip_training_checkpoint(tmp_path, tiny_archs, use_tiny):
    """SkyCLIP ships open_clip training checkpoints: {"epoch", "name", "state_dict": {"module.<key>": ...}}."""
    entry = _tiny_entry("skyclip-vit-l-14", tiny_archs[True])
    spec = use_tiny(entry)
    torch.manual_seed(1)
    model = open_clip.create_model(entry.arch)

    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": 20, "name": "SkyCLIP", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
                   path)

    assert entry.files[0].endswith("epoch_20.pt")
    _check_family(tmp_path, spec, entry, model, write)


def test_wrong_activation_refused(tmp_path, tiny_archs):
    """A RemoteCLIP/GeoRSCLIP file in a plain-GELU architecture is an error, not silently worse scores."""
    from rsbench.methods.openclip import OpenClipConfig, OpenClipMethod

    model = open_clip.create_model(tiny_archs[False])
    ckpt = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    torch.save(model.state_dict(), ckpt)
    with pytest.raises(UserError, match=r"RemoteCLIP-ViT-B-32.pt: RemoteCLIP weights were trained with quick_gelu.*"
                                        r"model=ViT-B-32-quickgelu or use --methods zoo:remoteclip-vit-b-32"):
        OpenClipMethod(OpenClipConfig(model=tiny_archs[False], checkpoint=str(ckpt)), _ctx(tmp_path))
    other = tmp_path / "my-own.pt"  # unknown files are not second-guessed
    torch.save(model.state_dict(), other)
    OpenClipMethod(OpenClipConfig(model=tiny_archs[False], checkpoint=str(other)), _ctx(tmp_path))


def test_real_vit_b_32_config_activation():
    """The real entries' architectures: OpenAI-initialised ViT-B-32 -> QuickGELU, LAION ViT-B-32 -> GELU."""
    from rsbench.methods.components.openclip_tower import resolve_architecture, uses_quick_gelu
    from rsbench.methods.components.zoo_catalogue import get_entry

    for name in ("remoteclip-vit-b-32", "georsclip-vit-b-32", "georsclip-vit-b-32-ret2", "openai-vit-b-32"):
        assert get_entry(name).arch == "ViT-B-32-quickgelu"
    assert get_entry("skyclip-vit-b-32").arch == "ViT-B-32"  # laion2b_e16 init: GELU
    model = open_clip.create_model(resolve_architecture("ViT-B-32-quickgelu", ""))
    assert uses_quick_gelu(model) and model.visual.image_size == (224, 224)
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    del model
    assert not uses_quick_gelu(open_clip.create_model("ViT-B-32"))


def test_missing_file_names_what_to_download(tmp_path):
    from rsbench.methods.components.zoo_catalogue import find_weights, get_entry
    from rsbench.methods.zoo import resolve_zoo_method

    with pytest.raises(UserError, match=r"RemoteCLIP-ViT-B-32.pt not found; download RemoteCLIP-ViT-B-32.pt from "
                                        r"https://huggingface.co/chendelong/RemoteCLIP"):
        resolve_zoo_method("zoo:remoteclip-vit-b-32", tmp_path)
    with pytest.raises(UserError, match="no weights folder given; pass --weights-dir DIR"):
        find_weights(get_entry("georsclip-vit-b-32"), "")
    with pytest.raises(UserError, match="unknown zoo checkpoint 'remoteclip-vit-b-23'"):
        get_entry("zoo:remoteclip-vit-b-23")
    (tmp_path / "RemoteCLIP-ViT-B-32.pt").write_bytes(b"x")
    assert resolve_zoo_method("zoo:remoteclip-vit-b-32", tmp_path) == (
        "zoo:remoteclip-vit-b-32", {"zoo:remoteclip-vit-b-32.weights_dir": str(tmp_path)})


def test_bench_run_missing_weights_is_one_line(tmp_path, capsys):
    """Checked at resolution: exit 2, one line, before any data is loaded (no dataset exists here)."""
    code, _out, err = run_cli(["run", "--methods", "zoo:georsclip-vit-b-32-ret2", "--dataset", "synthetic",
                              "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "out"),
                              "--set", f"weights_dir={tmp_path}"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "RS5M_ViT-B-32_RET-2.pt not found" in err
    assert "huggingface.co/Zilun/GeoRSCLIP" in err


def test_bench_models_lists_the_zoo(capsys):
    from rsbench.cli.models import models
    from rsbench.methods.components.zoo_catalogue import zoo_entries

    models(verbose=True)
    out = capsys.readouterr().out
    for e in zoo_entries():
        assert e.method_name in out and e.files[0] in out
    assert "published: rsitmd mR 51.81" in out


def test_bench_run_weights_dir_loads_a_zoo_checkpoint(tmp_path, tiny_archs, use_tiny, tiny_synthetic, capsys,
                                                      monkeypatch):
    """`bench run --methods zoo:... --weights-dir DIR`: the file is found in DIR, evaluated, recorded in run.json."""
    monkeypatch.setenv("RSBENCH_CACHE", str(tmp_path / "cache"))
    entry = _tiny_entry("remoteclip-vit-b-32", tiny_archs[True])
    use_tiny(entry)
    torch.manual_seed(0)
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(open_clip.create_model(entry.arch).state_dict(), weights / entry.files[0])
    base = ["run", "--methods", "zoo:remoteclip-vit-b-32", "--dataset", "synthetic", "--data-root",
            str(tiny_synthetic), "--set", "train.image_size=32"]
    code, _out, err = run_cli([*base, "--out", str(tmp_path / "out"), "--weights-dir", str(weights)], capsys)
    assert code == 0, err
    run = json.loads((tmp_path / "out/synthetic/zoo:remoteclip-vit-b-32/seed0/run.json").read_text())
    tower = run["weights"]["tower"]
    assert tower["file"] == str(weights / entry.files[0]) and tower["activation"] == entry.activation
    code, _, err = run_cli([*base, "--out", str(tmp_path / "o2"), "--weights-dir", str(tmp_path)], capsys)
    assert code == 2 and "RemoteCLIP-ViT-B-32.pt not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["run", "--methods", "vsepp", "--dataset", "synthetic", "--weights-dir", str(weights),
                            "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "--weights-dir" in err and "zoo:" in err
