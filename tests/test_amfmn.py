"""AMFMN: MVSA at several input sizes, blockwise score = per-pair definition, loss masking, training."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import fit_one_batch

from rsbench.config.overlay import set_key
from rsbench.config.schema import TrainConfig
from rsbench.errors import UserError
from rsbench.methods import get_method_spec
from rsbench.methods.amfmn import AMFMN, MVSA, VARIANTS, AMFMNConfig
from rsbench.methods.base import Batch, MethodContext
from rsbench.methods.components.prior_similarity import dynamic_margin
from rsbench.methods.components.triplet import hinge_triplet

CAPS = [
    "many planes are parked in an airport", "a plane is parked at the airport",
    "green trees are around a pond", "a pond surrounded by green trees",
    "a dense residential area with many houses", "many houses in a residential area",
    "a river runs through the green farmland", "farmland is divided by a river",
]
TINY = AMFMNConfig(embed_dim=32, word_dim=16, hidden_dim=16)


@pytest.fixture
def context(tmp_path) -> MethodContext:
    return MethodContext(train_captions=CAPS, train_cap2img=np.arange(len(CAPS)) // 2, cache_dir=tmp_path)


def make(context: MethodContext, **kw) -> AMFMN:
    torch.manual_seed(0)
    return AMFMN(replace(TINY, **kw), context)


def pair_definition(model: AMFMN, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """s(I_i, T_j) = cosine(F_v_i, T'_ij) with T'_ij from the direct per-pair formula."""
    out = torch.empty(len(v), len(t))
    for i in range(len(v)):
        for j in range(len(t)):
            tp = model.attention.attend(v[i:i + 1], t[j:j + 1])[0]
            out[i, j] = (v[i] @ tp) / (v[i].norm().clamp(min=1e-8) * tp.norm().clamp(min=1e-8))
    return out


@pytest.mark.parametrize("size", [64, 224, 256])
def test_mvsa_shapes_adapt_to_input_size(context, size) -> None:
    model = make(context).eval()
    enc = model.image_encoder
    with torch.no_grad():
        f1, f2, f3, f4 = enc.backbone(torch.randn(1, 3, size, size))
        assert f3.shape[-1] == size // 16
        mask = enc.mvsa.mask(enc._up_cat(f1, f2), enc._up_cat(f3, f4))
        assert mask.shape == (1, 1, 16, 16)
        assert model.encode_images(torch.randn(2, 3, size, size)).shape == (2, 32)


def test_mvsa_paper_size_is_unpooled() -> None:
    mvsa = MVSA(192, 768, 8)
    lower, higher = torch.randn(1, 192, 64, 64), torch.randn(1, 768, 16, 16)
    low, high = mvsa.lower_conv(lower), mvsa.higher_conv(higher)
    assert low.shape[-2:] == high.shape[-2:] == (16, 16)
    x = torch.cat([low, high], 1) + high.mean(1, keepdim=True)
    direct = mvsa.main(x) * torch.sigmoid(mvsa.attn(x))
    assert torch.allclose(mvsa.mask(lower, higher), direct)


def test_mvsa_lower_conv_has_no_padding() -> None:
    """L[o, y, x] = b[o] + sum_{c,dy,dx} W[o, c, dy, dx] lower[c, 4y + dy, 4x + dx]: windows start at
    pixel 0 (no padding), as in the authors' VSA_Module; 64 x 64 -> 16 x 16."""
    torch.manual_seed(0)
    mvsa = MVSA(5, 7, 8)
    lower = torch.randn(1, 5, 64, 64)
    w, b = mvsa.lower_conv.weight.detach(), mvsa.lower_conv.bias.detach()
    with torch.no_grad():
        got = mvsa.lower_conv(lower)[0]
    assert got.shape == (3, 16, 16)
    for o, y, x in [(0, 0, 0), (1, 3, 7), (2, 15, 15), (0, 15, 0)]:
        window = lower[0, :, 4 * y:4 * y + 3, 4 * x:4 * x + 3]
        assert got[o, y, x].item() == pytest.approx((b[o] + (w[o] * window).sum()).item(), abs=1e-5)


def test_similarity_gate_multiplies_projected_text(context) -> None:
    """Paper eq. 25: T' = sigmoid((W_v F_v) * (W_t T)) * (W_t T), from the Linear weights, pair by pair."""
    model = make(context, variant="similarity").eval()
    att = model.attention
    wv, bv, wt, bt = (x.detach() for x in (att.wv.weight, att.wv.bias, att.wt.weight, att.wt.bias))
    g = torch.Generator().manual_seed(2)
    v, t = torch.randn(5, 32, generator=g), torch.randn(6, 32, generator=g)
    want = torch.empty(5, 6)
    for i in range(5):
        for j in range(6):
            tt = wt @ t[j] + bt
            tp = torch.sigmoid((wv @ v[i] + bv) * tt) * tt
            want[i, j] = (v[i] @ tp) / (v[i].norm() * tp.norm())
    with torch.no_grad():
        assert (model.score(v, t) - want).abs().max() < 1e-5
        att.chunk_bytes = 2 * 4 * 4 * 32  # the bounded-memory chunks give the same numbers
        assert (model.score(v, t) - want).abs().max() < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_score_matches_per_pair_definition(context, variant) -> None:
    model = make(context, variant=variant).eval()
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(7, 32, generator=g), torch.randn(11, 32, generator=g)
    with torch.no_grad():
        want = pair_definition(model, v, t)
        assert (model.score(v, t) - want).abs().max() < 1e-5
        model.attention.chunk_bytes = 3 * 4 * 4 * 32  # force 3-pair chunks: bounded-memory path
        assert (model.score(v, t) - want).abs().max() < 1e-5
        for i, j in [(slice(0, 1), slice(0, 11)), (slice(2, 7), slice(4, 5)), (slice(3, 6), slice(1, 9))]:
            assert (model.score(v[i], t[j]) - want[i, j]).abs().max() < 1e-5  # runner's blocks
        assert model.score(v[:0], t).shape == (0, 11) and model.score(v, t[:0]).shape == (7, 0)
    # with autograd on (training), the differentiable form gives the same numbers
    assert (model.score(v, t) - want).abs().max() < 1e-5
    if variant == "soft":  # evaluation's in-place form, in row blocks that do not divide Ni
        g_ = torch.sigmoid(model.attention.w(v)).detach()
        got = model.attention._soft_inplace(v * g_, g_ * g_, t, v.norm(dim=1).clamp(min=1e-8), rows=3)
        assert (got - want).abs().max() < 1e-5


def test_triplet_with_pair_margins_masks_same_image_pairs() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.9, 0.5, 0.2], [0.7, 0.1, 0.8]])
    margin = torch.full((3, 3), 0.2)
    ids = torch.tensor([4, 4, 7])  # rows 0 and 1 show the same image
    same = ids[:, None] == ids[None, :]
    loss = hinge_triplet(scores, same, margin, hardest=False)
    # only pairs (0,2), (1,2), (2,0), (2,1) are negatives
    pos = scores.diagonal()
    want = sum(max(0.0, 0.2 - pos[i] + scores[i, j]) + max(0.0, 0.2 - pos[j] + scores[i, j])
               for i, j in [(0, 2), (1, 2), (2, 0), (2, 1)])
    assert want > 0 and loss.item() == pytest.approx(float(want))  # (0, 1) would add 2 x 0.6 unmasked
    assert hinge_triplet(scores, torch.ones(3, 3, dtype=torch.bool), margin, hardest=False).item() == 0.0
    hard = hinge_triplet(scores, same, margin, hardest=True)
    assert 0 < hard.item() <= loss.item()


def test_dynamic_margins_follow_prior(context) -> None:
    model = make(context)
    batch = Batch(images=torch.zeros(3, 3, 64, 64), text={}, image_ids=torch.tensor([0, 1, 2]),
                  caption_ids=torch.tensor([0, 2, 4]))
    m = model.margins(batch)
    sim = model.prior.block(np.array([0, 1, 2]), np.array([0, 2, 4]))
    assert torch.allclose(m, dynamic_margin(torch.from_numpy(sim), 0.2, 1.0))
    assert torch.allclose(m.diagonal(), torch.zeros(3))  # a caption of the image itself: S = 1
    assert (m[0, 1:] > 0).all()
    fixed = make(context, margin_mode="fixed", gamma=0.4).margins(batch)
    assert torch.all(fixed == 0.4)


def _batch(model: AMFMN, idx: list[int], size: int = 64) -> Batch:
    g = torch.Generator().manual_seed(0)
    cap2img = np.arange(len(CAPS)) // 2
    images = torch.randn(len(CAPS) // 2, 3, size, size, generator=g)
    img_ids = torch.as_tensor(cap2img[idx])
    return Batch(images=images[img_ids], text=model.tokenizer()([CAPS[i] for i in idx]), image_ids=img_ids,
                 caption_ids=torch.tensor(idx))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_a_step(context, variant) -> None:
    model = make(context, variant=variant)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = model.training_loss(_batch(model, [0, 1, 2, 4, 6]))  # two captions of image 0 in one batch
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    for name, p in model.attention.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.text_encoder.embed.weight.grad is not None
    opt.step()


def test_short_training_lowers_loss(context) -> None:
    model = make(context, negatives="sum")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch(model, [0, 2, 4, 6, 1, 3], size=32)
    losses = [loss for loss, _ in fit_one_batch(model, batch, opt, 6)]
    assert min(losses[-2:]) < 0.5 * losses[0]


def test_text_encoder_ignores_padding(context) -> None:
    model = make(context).eval()
    tok = model.tokenizer()
    alone = tok([CAPS[1]])
    padded = tok([CAPS[1], CAPS[4] + " with a long tail of extra words to pad the batch"])
    with torch.no_grad():
        a = model.encode_texts(alone)[0]
        b = model.encode_texts(padded)[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_registry_presets_and_config(context) -> None:
    spec = get_method_spec("amfmn")
    assert spec.cls is AMFMN and AMFMN.cross_interaction
    for name in ("small", "paper"):
        model_cfg, train_cfg = AMFMNConfig(), TrainConfig()
        for key, value in spec.presets[name].items():
            if key.startswith("train."):
                set_key(train_cfg, key[len("train."):], value)
            else:
                set_key(model_cfg, key, value)
    assert model_cfg.pretrained and train_cfg.image_size == 256 and train_cfg.resize == 278
    # torchvision's ImageNet weights (the authors'), and the paper's dynamic margin
    assert model_cfg.backbone == "resnet18.tv_in1k" and model_cfg.margin_mode == "dynamic"
    assert train_cfg.lr == 1e-4 and train_cfg.lr_step == 20 and train_cfg.lr_gamma == 0.7
    with pytest.raises(UserError, match="variant"):
        make(context, variant="nope")
    tok = pickle.loads(pickle.dumps(make(context).tokenizer()))
    assert tok(["a plane"])["input_ids"].shape[0] == 1


def test_soft_score_is_asymmetric_cosine(context) -> None:
    model = make(context).eval()
    v, t = torch.randn(3, 32), torch.randn(4, 32)
    with torch.no_grad():
        s = model.score(v, t)
        g = torch.sigmoid(model.attention.w(v))
        assert torch.allclose(s[1, 2], F.cosine_similarity(v[1], g[1] * t[2], dim=0), atol=1e-6)
    assert s.abs().max() <= 1 + 1e-6


def test_checkpoint_vocabulary_restored_or_refused(context) -> None:
    model = make(context)
    words = list(model.vocab.itos)
    model.load_extra_state_json({})  # no text state: the vocabulary built from the training split stays
    assert model.vocab.itos == words
    swapped = words[:4] + words[4:][::-1]  # same size, another order: the checkpoint's ids win
    model.load_extra_state_json({"vocab": {"itos": swapped}})
    assert model.vocab.itos == swapped
    with pytest.raises(UserError, match=r"^amfmn: checkpoint vocabulary has \d+ words, the model \d+"):
        model.load_extra_state_json({"vocab": {"itos": [*words, "extra"]}})


def test_skipthought_encoder_equals_a_packed_gru(context) -> None:
    """text_encoder=skipthought (the authors' released shape): the stepped, length-sorted GRU gives the
    state at each caption's last real word, as torch's packed nn.GRU on the same weights does; trains."""
    from torch.nn.utils.rnn import pack_padded_sequence

    model = make(context, text_encoder="skipthought")
    enc = model.text_encoder
    with torch.no_grad():
        enc.gru.bias_hh_l0.normal_()  # the hidden biases take part too
    tok = model.tokenizer()(CAPS[:3] + ["a plane", "houses"])
    got = model.encode_texts(tok)
    packed = pack_padded_sequence(enc.embed(tok["input_ids"]), tok["lengths"], batch_first=True, enforce_sorted=False)
    ref = F.relu(enc.fc(enc.gru(packed)[1][0]))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert enc.gru.weight_hh_l0.grad is not None and bool(enc.gru.weight_hh_l0.grad.abs().sum() > 0)
    with pytest.raises(UserError, match="text_encoder"):
        make(context, text_encoder="lstm")
