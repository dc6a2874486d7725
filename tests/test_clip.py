"""The shared contrastive loss (hand-checkable values, same-image masking) and the `clip` method."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import fit_one_batch

from rsbench.errors import UserError
from rsbench.methods.base import Batch, MethodContext
from rsbench.methods.components.contrastive import LogitScale, decay_param_groups, info_nce
from rsbench.methods.components.prompts import format_caption


def _ctx(tmp_path: Path) -> MethodContext:
    return MethodContext(train_captions=["a plane"], train_cap2img=np.zeros(1, dtype=np.int64), cache_dir=tmp_path)


# ---- losses ---------------------------------------------------------------------------------------

def test_info_nce_identity_logits_by_hand():
    # Orthonormal embeddings: logits = scale * I, so each softmax row puts e^s on the target and 1 on
    # the B-1 others: loss = log(e^s + B - 1) - s in both directions.
    b, s = 4, 2.0
    e = torch.eye(b)
    expected = math.log(math.exp(s) + b - 1) - s
    assert info_nce(e, e, s).item() == pytest.approx(expected, rel=1e-5)
    # Unnormalised inputs are normalised first.
    assert info_nce(3 * e, 0.5 * e, s).item() == pytest.approx(expected, rel=1e-5)
    # Uniform logits (identical embeddings): log B.
    same = torch.ones(b, 3)
    assert info_nce(same, same, s).item() == pytest.approx(math.log(b), rel=1e-5)


def test_info_nce_masks_same_image_pairs():
    # Rows 0 and 2 show the same image, with identical embeddings: unmasked, each of those rows sees
    # its twin as a competing candidate; masked, the twin leaves the denominator.
    s = 2.0
    img = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]])
    txt = img.clone()
    ids = torch.tensor([7, 8, 7])
    plain = info_nce(img, txt, s)  # as if all three were different images
    masked = info_nce(img, txt, s, image_ids=ids, same_image="mask")
    one = math.log(math.exp(s) + 1) - s  # one off-target candidate at logit 0
    two = math.log(math.exp(s) + 2) - s  # row 1: two off-target candidates at logit 0
    twin = math.log(2 * math.exp(s) + 1) - s  # rows 0 and 2 unmasked: the twin ties the target
    assert plain.item() == pytest.approx((2 * twin + two) / 3, rel=1e-5)
    # masked: rows 0 and 2 lose their twin (one candidate left); row 1 is another image, unchanged
    assert masked.item() == pytest.approx((2 * one + two) / 3, rel=1e-5)
    # positive mode: the twin is a second positive, target 1/2 on each of the two equal logits
    pos = info_nce(img, txt, s, image_ids=ids, same_image="positive")
    lp = -math.log(math.exp(s) / (2 * math.exp(s) + 1))
    assert pos.item() == pytest.approx((2 * lp + two) / 3, rel=1e-5)
    with pytest.raises(UserError, match="same_image"):
        info_nce(img, txt, s, image_ids=ids, same_image="drop")


def test_info_nce_matches_plain_clip_without_repeats():
    torch.manual_seed(0)
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T * 20.0
    t = torch.arange(5)
    ref = (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
    assert info_nce(img, txt, 20.0, image_ids=torch.arange(5)).item() == pytest.approx(ref.item(), rel=1e-5)



def _duplicate_rows(*tensors):
    """A stand-in Gather: each tensor followed by a copy of itself, as if a second rank held the same rows."""
    return tuple(None if t is None else torch.cat([t, t]) for t in tensors)


def test_info_nce_uses_the_gather_it_is_given():
    # The loss runs over the gathered rows: here every row twice, as if a second process held the same
    # batch. Twins are negatives without image ids; with ids they show the same image and leave the softmax.
    torch.manual_seed(0)
    img, txt, ids = torch.randn(3, 4), torch.randn(3, 4), torch.arange(3)
    calls = []

    def spy(*tensors):
        calls.append([None if t is None else t.shape[0] for t in tensors])
        return _duplicate_rows(*tensors)

    logits = F.normalize(torch.cat([img, img]), dim=-1) @ F.normalize(torch.cat([txt, txt]), dim=-1).T * 5.0
    t = torch.arange(6)
    ref = (F.cross_entropy(logits, t) + F.cross_entropy(logits.T, t)) / 2
    assert info_nce(img, txt, 5.0, gather=spy).item() == pytest.approx(ref.item(), rel=1e-5)
    assert calls == [[3, 3, None]]
    twin = torch.zeros(6, 6, dtype=torch.bool)
    twin[t, (t + 3) % 6] = True  # row i and row i+3 show the same image
    masked = logits.masked_fill(twin, float("-inf"))
    ref_ids = (F.cross_entropy(masked, t) + F.cross_entropy(masked.T, t)) / 2
    got = info_nce(img, txt, 5.0, ids, gather=_duplicate_rows)
    assert got.item() == pytest.approx(ref_ids.item(), rel=1e-5)
    assert ref.item() != pytest.approx(info_nce(img, txt, 5.0).item(), rel=1e-3)  # the gather mattered


def test_logit_scale_init_and_clamp():
    ls = LogitScale()
    assert ls().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        ls.log_scale.fill_(10.0)
    assert ls().item() == pytest.approx(100.0)


def test_format_caption_prompt():
    assert format_caption("Many planes are parked .", "") == "Many planes are parked ."
    assert format_caption(" Many planes.", "a satellite image of ") == "a satellite image of many planes."
    assert format_caption("Many planes.", "a satellite image of") == "a satellite image of many planes."


def test_decay_groups_exclude_gains_and_temperature():
    m = torch.nn.ModuleDict({"lin": torch.nn.Linear(3, 3), "tower": torch.nn.Linear(3, 3),
                             "scale": LogitScale()})
    groups = decay_param_groups(m, 1e-3, 0.2, {"tower.": 0.1})
    by = {(round(g["lr"], 9), g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert by == {(1e-3, 0.2): 9, (1e-3, 0.0): 3 + 1,  # lin.weight; lin.bias + log_scale
                  (1e-4, 0.2): 9, (1e-4, 0.0): 3}  # the tower at a tenth of the lr


# ---- clip method ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from rsbench.methods.clip import ClipConfig, ClipMethod

    cfg = ClipConfig(backbone="resnet10t", pretrained=False, embed_dim=32, max_len=16, text_trainable_layers=1)
    torch.manual_seed(0)
    return ClipMethod(cfg, _ctx(tmp_path_factory.mktemp("clip")))


def test_clip_registered_with_presets():
    from rsbench.config.resolve import resolve_config
    from rsbench.methods.registry import get_method_spec

    spec = get_method_spec("clip")
    assert set(spec.presets) >= {"small", "paper"}
    cfg = resolve_config("clip", "synthetic", preset="small")
    assert cfg.model.backbone == "resnet18" and cfg.model.pretrained is False and cfg.train.image_size == 64
    cfg = resolve_config("clip", "rsicd", preset="paper", overrides={"prompt": "a satellite image of"})
    assert cfg.train.image_size == 224 and cfg.model.prompt == "a satellite image of"


def test_clip_tokenizer_picklable_and_prompt_changes_text(tiny_clip):
    tok = pickle.loads(pickle.dumps(tiny_clip.tokenizer()))
    caps = ["Many planes are parked near a terminal."]
    plain = tok(caps)
    assert set(plain) == {"input_ids", "attention_mask"}
    tiny_clip.config.prompt = "a satellite image of"
    try:
        prompted = tiny_clip.tokenizer()(caps)
    finally:
        tiny_clip.config.prompt = ""
    assert prompted["input_ids"].shape[1] > plain["input_ids"].shape[1]
    assert not torch.equal(prompted["input_ids"][:, :4], plain["input_ids"][:, :4])


def test_clip_is_cnn_follows_backbone(tiny_clip):
    import timm

    from rsbench.methods.clip import _is_transformer

    assert tiny_clip.is_cnn is True

    assert _is_transformer(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0))


def test_clip_trains_a_few_steps_lowering_the_loss(tiny_clip):
    torch.manual_seed(0)
    caps = ["a red airport with planes", "a blue harbor with ships", "green farmland fields",
            "a desert with dunes", "a dense forest", "a parking lot with cars"]
    images = torch.randn(6, 3, 32, 32)
    batch = Batch(images, tiny_clip.tokenizer()(caps), torch.arange(6), torch.arange(6))
    opt = torch.optim.AdamW(tiny_clip.param_groups(1e-3, 0.0))
    tiny_clip.train()
    layers = tiny_clip.text_model.encoder.layer
    frozen, top = layers[0].output.dense.weight.clone(), layers[-1].output.dense.weight.clone()
    losses = [loss for loss, _ in fit_one_batch(tiny_clip, batch, opt, 6)]
    assert losses[-1] < losses[0] - 0.1, losses
    # text_trainable_layers=1: only the top text layer moves
    assert torch.equal(layers[0].output.dense.weight, frozen)
    assert not torch.equal(layers[-1].output.dense.weight, top)
    tiny_clip.eval()
    with torch.no_grad():
        s = tiny_clip.score(tiny_clip.encode_images(images), tiny_clip.encode_texts(batch.text))
    assert s.shape == (6, 6)


def test_frozen_text_tower_outputs_cached_per_caption(tmp_path):
    """text_trainable_layers=0: the tower runs once per caption, later steps read the same vectors."""
    from rsbench.methods.clip import ClipConfig, ClipMethod

    caps = ["a red airport with planes", "a blue harbor with ships", "green farmland fields", "a dense forest"]
    ctx = MethodContext(train_captions=caps, train_cap2img=np.arange(4), cache_dir=tmp_path)
    torch.manual_seed(0)
    m = ClipMethod(ClipConfig(backbone="resnet10t", pretrained=False, embed_dim=16, text_trainable_layers=0), ctx)
    m.train()
    calls = []
    m.text_model.register_forward_hook(lambda mod, args, out: calls.append(1))
    tok = m.tokenizer()
    with torch.no_grad():
        direct = m.encode_texts(tok(caps))
    assert len(calls) == 1
    first = m.training_texts(Batch(torch.zeros(2, 3, 32, 32), tok(caps[1:3]), torch.arange(2), torch.tensor([1, 2])))
    assert len(calls) == 2 and torch.allclose(first, direct[1:3], atol=1e-5)
    # caption 2 is cached, caption 0 is new: the tower runs on caption 0 alone
    both = m.training_texts(Batch(torch.zeros(2, 3, 32, 32), tok([caps[2], caps[0]]), torch.arange(2),
                                  torch.tensor([2, 0])))
    assert len(calls) == 3 and torch.allclose(both, direct[[2, 0]], atol=1e-5)
    again = m.training_texts(Batch(torch.zeros(3, 3, 32, 32), tok(caps[:3]), torch.arange(3), torch.arange(3)))
    assert len(calls) == 3 and torch.allclose(again, direct[:3], atol=1e-5)
    again.sum().backward()  # the projection still learns
    assert m.text_proj.weight.grad is not None
    # a tower being fine-tuned is never cached
    assert ClipMethod(ClipConfig(backbone="resnet10t", pretrained=False, embed_dim=16), ctx)._text_cache is None



def test_clip_loss_gathers_through_its_context(tiny_clip):
    seen = []

    def spy(*tensors):
        seen.append(len(tensors))
        return tensors

    batch = Batch(torch.randn(2, 3, 32, 32), tiny_clip.tokenizer()(["a plane", "a ship"]), torch.arange(2),
                  torch.arange(2))
    old = tiny_clip.context.gather
    tiny_clip.context.gather = spy
    try:
        tiny_clip.training_loss(batch)
    finally:
        tiny_clip.context.gather = old
    assert seen == [3]  # image rows, text rows, image ids

def test_clip_bad_options(tmp_path):
    from rsbench.methods.clip import ClipConfig, ClipMethod

    with pytest.raises(UserError, match="text_pool"):
        ClipMethod(ClipConfig(backbone="resnet10t", pretrained=False, text_pool="max"), _ctx(tmp_path))
    with pytest.raises(UserError, match="not found"):
        ClipMethod(ClipConfig(backbone="resnet10t", pretrained=False, backbone_weights=str(tmp_path / "x.pt")),
                   _ctx(tmp_path))
