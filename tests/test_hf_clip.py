"""Transformers CLIP/SigLIP folders (CLIP-rsicd-v2, Git-RSCLIP): loaded through hf_clip and the zoo, scored
exactly like the model itself, fine-tuned with the model's own loss."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import fit_one_batch

from rsbench.errors import UserError
from rsbench.methods.base import Batch, MethodContext

transformers = pytest.importorskip("transformers")

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _ctx(tmp_path: Path) -> MethodContext:
    return MethodContext(train_captions=["a plane"], train_cap2img=np.zeros(1, dtype=np.int64), cache_dir=tmp_path)


def _save_tokenizer(folder: Path) -> None:
    """A character-level CLIP BPE tokenizer (no merges): enough to tokenise test captions offline."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in LETTERS + ".":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    src = folder / "tok-src"
    src.mkdir()
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(src / "vocab.json"), str(src / "merges.txt"))
    tok.save_pretrained(str(folder))


def _tiny_clip(folder: Path, act: str = "quick_gelu") -> torch.nn.Module:
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "max_position_embeddings": 16, "hidden_act": act, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32,
                  "patch_size": 16, "hidden_act": act}
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(folder))
    _save_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return model.eval()


def _tiny_siglip(folder: Path) -> torch.nn.Module:
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                "max_position_embeddings": 16}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32,
                  "patch_size": 16}
    torch.manual_seed(0)
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(str(folder))
    _save_tokenizer(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return model.eval()


def _direct_scores(model, images, text):
    with torch.no_grad():
        img = model.get_image_features(pixel_values=images)
        txt = model.get_text_features(**text)
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T


def _method(folder: Path, tmp_path: Path):
    from rsbench.methods.hf_clip import HfClipConfig, HfClipMethod

    return HfClipMethod(HfClipConfig(folder=str(folder)), _ctx(tmp_path)).eval()


CAPS = ["a red airport.", "a harbor", "green farmland"]


def test_clip_folder_scores_like_the_model(tmp_path):
    model = _tiny_clip(tmp_path / "clip")
    m = _method(tmp_path / "clip", tmp_path)
    text = m.tokenizer()(CAPS)
    images = torch.randn(2, 3, 32, 32)
    got = m.score(m.encode_images(images), m.encode_texts(text))
    torch.testing.assert_close(got, _direct_scores(model, images, text), rtol=1e-5, atol=1e-5)
    prov = m.weight_provenance()["tower"]
    assert prov["activation"] == "quick_gelu" and prov["image_size"] == 32 and len(prov["sha256"]) == 64
    with pytest.raises(UserError, match="takes 32x32 images.*train.image_size=32"):
        m.encode_images(torch.randn(1, 3, 64, 64))


def test_siglip_folder_pads_to_max_length_and_trains_with_sigmoid_loss(tmp_path):
    model = _tiny_siglip(tmp_path / "sig")
    m = _method(tmp_path / "sig", tmp_path)
    text = m.tokenizer()(CAPS)
    assert text["input_ids"].shape == (3, 16)  # SigLIP was trained on max_length padding
    images = torch.randn(3, 3, 32, 32)
    got = m.score(m.encode_images(images), m.encode_texts(text))
    want = _direct_scores(model, images, {"input_ids": text["input_ids"]})
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert m.image_mean_std() == ((0.5,) * 3, (0.5,) * 3)
    batch = Batch(images, text, torch.tensor([0, 1, 2]), torch.arange(3))
    m.train()
    history = fit_one_batch(m, batch, torch.optim.AdamW(m.param_groups(1e-3, 0.0)), 5)
    assert history[-1][0] < history[0][0]


def test_sigmoid_loss_matches_a_per_pair_loop():
    from rsbench.methods.components.tower_method import sigmoid_loss

    torch.manual_seed(0)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    ids = torch.tensor([0, 1, 0, 2])
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    a, b = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    total = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if ids[i] == ids[j] else -1.0
            total += -float(F.logsigmoid(z * (scale * (a[i] @ b[j]) + bias)))
    assert float(sigmoid_loss(img, txt, scale, bias, ids)) == pytest.approx(total / 4, rel=1e-5)


def test_zoo_hf_entries_load_from_the_weights_folder(tmp_path):
    """zoo:clip-rsicd-v2 and zoo:git-rsclip find their folder by name under weights_dir."""
    from rsbench.methods.components.zoo_catalogue import get_entry
    from rsbench.methods.registry import get_method_spec

    model = _tiny_clip(tmp_path / "clip-rsicd-v2")
    _tiny_siglip(tmp_path / "Git-RSCLIP")
    for name in ("clip-rsicd-v2", "git-rsclip"):
        entry = get_entry(name)
        spec = get_method_spec(entry.method_name)
        cfg = spec.config_cls(weights_dir=str(tmp_path))
        cfg.validate()
        m = spec.cls(cfg, _ctx(tmp_path)).eval()
        assert m.weight_provenance()["tower"]["activation"] == entry.activation
        assert m.image_mean_std() == (entry.mean, entry.std)
    text = m.tokenizer()(CAPS)
    assert text["input_ids"].shape[1] == 16
    spec = get_method_spec("zoo:clip-rsicd-v2")
    m = spec.cls(spec.config_cls(weights_dir=str(tmp_path)), _ctx(tmp_path)).eval()
    text = m.tokenizer()(CAPS)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m.score(m.encode_images(images), m.encode_texts(text)),
                               _direct_scores(model, images, text), rtol=1e-5, atol=1e-5)


def test_bad_folders(tmp_path):
    with pytest.raises(UserError, match="nope: not a folder"):
        _method(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: cannot load the transformers model"):
        _method(tmp_path / "empty", tmp_path)
