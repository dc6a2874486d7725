"""MSA: batched MSCMAT equals a naive per-pair loop, loss values, masking, ablations, backbones."""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import fit_one_batch

from rsbench.config.overlay import set_key
from rsbench.config.resolve import resolve_config
from rsbench.errors import UserError
from rsbench.methods import Batch, MethodContext, create_method
from rsbench.methods.components.mscmat import MSCMAT, MSCMATBranch, csmmc_loss, mscma_loss
from rsbench.methods.components.triplet import hinge_triplet
from rsbench.methods.msa import ImageTower, MSAConfig, pick_levels

CAPTIONS = ["a plane is parked near the terminal", "green trees beside a river",
            "many buildings and roads", "a ship in the harbour next to a long pier with cranes",
            "a baseball field", "white clouds over the sea", "a bridge over the river", "sand"]


def _ctx() -> MethodContext:
    return MethodContext(train_captions=CAPTIONS, train_cap2img=np.arange(len(CAPTIONS)),
                         cache_dir=Path("/tmp"))


def _tiny_config(**keys: object) -> MSAConfig:
    cfg = MSAConfig(backbone="test_resnet", pretrained=False, text_model="minilm", embed_dim=384,
                    num_heads=12)
    for k, v in keys.items():
        set_key(cfg, k.replace("__", "."), v)
    return cfg


@pytest.fixture(scope="module")
def msa():
    torch.manual_seed(0)
    return create_method("msa", _tiny_config(), _ctx())


def _batch(method, n: int = 8, image_ids: list[int] | None = None) -> Batch:
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor(image_ids if image_ids is not None else list(range(n)))
    return Batch(images=torch.randn(n, 3, 32, 32, generator=g), text=method.tokenizer()(CAPTIONS[:n]),
                 image_ids=ids, caption_ids=torch.arange(n))


# ---- MSCMAT branch -----------------------------------------------------------------------------


def _branch_inputs(bi: int = 3, bt: int = 4, length: int = 6, c: int = 10, d: int = 24):
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(bi, c, generator=g)
    tokens = torch.randn(bt, length, d, generator=g)
    lengths = torch.tensor([length, 1, 3, 5])[:bt]
    pad = torch.arange(length)[None, :] >= lengths[:, None]
    g_t = torch.randn(bt, d, generator=g)
    return pooled, tokens, pad, g_t


def _naive(branch: MSCMATBranch, pooled, tokens, pad, g_t, ln_q=None, ln_kv=None) -> torch.Tensor:
    """The definition, one (image, text) pair at a time through nn.MultiheadAttention itself."""
    ln_q, ln_kv = ln_q or branch.ln_q, ln_kv or branch.ln_kv
    out = torch.empty(pooled.shape[0], tokens.shape[0])
    q = branch.query(pooled)
    for i in range(pooled.shape[0]):
        for j in range(tokens.shape[0]):
            kv = ln_kv(tokens[j:j + 1])
            a, _ = branch.attn(ln_q(q[i:i + 1])[:, None], kv, kv, key_padding_mask=pad[j:j + 1],
                               need_weights=False)
            out[i, j] = branch.head((a[0, 0] + g_t[j]) * q[i])[0]
    return out


def test_batched_branch_equals_naive_pair_loop():
    torch.manual_seed(0)
    branch = MSCMATBranch(10, 24, 4).eval()
    for p in branch.parameters():  # move LayerNorm/bias params off their trivial init
        p.data.add_(0.1 * torch.randn_like(p))
    args = _branch_inputs()
    with torch.no_grad():
        fast = branch(*args)
        slow = _naive(branch, *args)
    assert fast.shape == (3, 4)
    assert (fast - slow).abs().max().item() < 1e-5


def test_padding_mask_respected():
    torch.manual_seed(0)
    branch = MSCMATBranch(10, 24, 4).eval()
    pooled, tokens, pad, g_t = _branch_inputs()
    changed = tokens.clone()
    changed[pad] = 100.0 * torch.randn(int(pad.sum()), 24)
    with torch.no_grad():
        assert torch.allclose(branch(pooled, tokens, pad, g_t), branch(pooled, changed, pad, g_t), atol=1e-6)
        unmasked = branch(pooled, changed, torch.zeros_like(pad), g_t)
    assert not torch.allclose(unmasked, branch(pooled, tokens, pad, g_t), atol=1e-3)


def test_shared_norm_one_layernorm_pair_equals_naive():
    torch.manual_seed(0)
    mod = MSCMAT([10, 12], 24, 4, shared_norm=True).eval()
    for p in mod.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    norms = [m for m in mod.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 and all(b.ln_q is None and b.ln_kv is None for b in mod.branches)
    _, tokens, pad, g_t = _branch_inputs()
    g = torch.Generator().manual_seed(3)
    pooled = [torch.randn(3, 10, generator=g), torch.randn(3, 12, generator=g)]
    with torch.no_grad():
        fast = mod(pooled, tokens, pad, g_t)
        for k, branch in enumerate(mod.branches):
            slow = _naive(branch, pooled[k], tokens, pad, g_t, mod.ln_q, mod.ln_kv)
            assert (fast[k] - slow).abs().max().item() < 1e-5
    assert len([m for m in MSCMAT([10, 12], 24, 4).modules() if isinstance(m, torch.nn.LayerNorm)]) == 4


@pytest.mark.parametrize("masked", [True, False])
def test_batched_gradients_equal_naive_pair_loop(masked: bool):
    """Every parameter's and input's gradient of a weighted sum of both matrices equals the per-pair loop's
    (shared norms: the one LayerNorm pair collects the gradient of both scales)."""
    torch.manual_seed(0)
    mod = MSCMAT([10, 12], 24, 4, shared_norm=True).train()
    for p in mod.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    _, tokens, pad, g_t = _branch_inputs()
    pad = pad if masked else torch.zeros_like(pad)
    g = torch.Generator().manual_seed(3)
    pooled = [torch.randn(3, 10, generator=g), torch.randn(3, 12, generator=g)]
    weights = [torch.randn(3, 4, generator=g) for _ in pooled]
    inputs = [*pooled, tokens, g_t]

    def grads(forward) -> list[torch.Tensor]:
        xs = [x.clone().requires_grad_() for x in inputs]
        mod.zero_grad(set_to_none=True)
        outs = forward(xs[:2], xs[2], xs[3])
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        return [p.grad.clone() for p in mod.parameters()] + [x.grad for x in xs]

    fast = grads(lambda p, t, gt: mod(p, t, pad, gt))
    slow = grads(lambda p, t, gt: [_naive(b, p[k], t, pad, gt, mod.ln_q, mod.ln_kv)
                                   for k, b in enumerate(mod.branches)])
    assert len(fast) == len(slow) == len(list(mod.parameters())) + 4
    for a, b in zip(fast, slow):
        assert (a - b).abs().max().item() < 1e-5 * max(1.0, b.abs().max().item())


def test_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="divide"):
        MSCMATBranch(10, 24, 5)


# ---- losses on hand-checkable inputs ----------------------------------------------------------


def test_triplet_by_hand():
    sim = torch.tensor([[0.8, 0.3], [0.6, 0.5]])
    eye = torch.eye(2, dtype=torch.bool)
    # hardest negatives: image0 [0.5-0.8+0.3]+ = 0, image1 0.5-0.5+0.6 = 0.6,
    #                    text0 0.5-0.8+0.6 = 0.3, text1 0.5-0.5+0.3 = 0.3
    assert hinge_triplet(sim, eye, 0.5).item() == pytest.approx(1.2)
    assert hinge_triplet(sim, eye, 0.5, reduction="mean").item() == pytest.approx(0.6)
    # both rows show the same image: no negatives at all
    assert hinge_triplet(sim, torch.ones(2, 2, dtype=torch.bool), 0.5).item() == 0.0


def test_mscma_diagonal_lower_than_uniform_and_duplicates_masked():
    b = 4
    eye = torch.eye(b, dtype=torch.bool)
    uniform = torch.full((b, b), 0.5)
    diag = torch.where(eye, 0.95, 0.05)
    assert mscma_loss([uniform], eye).item() == pytest.approx(math.log(b))
    assert mscma_loss([diag], eye).item() < mscma_loss([uniform], eye).item()
    assert mscma_loss([diag, uniform], eye).item() == pytest.approx(
        mscma_loss([diag], eye).item() + math.log(b))  # summed over scales
    # rows 0 and 1 show the same image: text 1 leaves row 0's softmax (and text 0 row 1's)
    same = eye.clone()
    same[0, 1] = same[1, 0] = True
    m = torch.rand(b, b)
    expected = (F.cross_entropy(m[0, [0, 2, 3]][None], torch.tensor([0]))
                + F.cross_entropy(m[1, [1, 2, 3]][None], torch.tensor([0]))
                + F.cross_entropy(m[2:], torch.tensor([2, 3]), reduction="sum")) / b
    assert mscma_loss([m], same).item() == pytest.approx(expected.item(), abs=1e-6)


def _csmmc_by_hand(mats: list[torch.Tensor], tau: float) -> torch.Tensor:
    """sum_k (1/B^2) sum_ij P_k[i,j] log(P_k[i,j] / P_4[i,j]), P = softmax over images i per text j,
    P_4 from the detached deepest matrix: an entry-by-entry loop of the authors' equation."""
    deep = mats[-1].detach()
    b_i, b_t = deep.shape
    total = torch.zeros(())
    for m in mats[:-1]:
        for j in range(b_t):
            z_k = sum(torch.exp(m[r, j] / tau) for r in range(b_i))
            z_4 = sum(torch.exp(deep[r, j] / tau) for r in range(b_i))
            for i in range(b_i):
                p_k, p_4 = torch.exp(m[i, j] / tau) / z_k, torch.exp(deep[i, j] / tau) / z_4
                total = total + p_k * torch.log(p_k / p_4) / (b_i * b_t)
    return total


def test_csmmc_is_kl_of_shallow_from_deep_with_gradient_through_shallow():
    assert csmmc_loss([torch.rand(5, 5)] * 4, tau=2.0).item() == pytest.approx(0.0, abs=1e-7)
    g = torch.Generator().manual_seed(0)
    mats = [(3 * torch.rand(4, 4, generator=g)).requires_grad_() for _ in range(4)]
    want = _csmmc_by_hand(mats, 2.0)
    want_grads = torch.autograd.grad(want, mats[:3])
    got = csmmc_loss(mats, tau=2.0)
    got_grads = torch.autograd.grad(got, mats, allow_unused=True)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for a, b in zip(got_grads[:3], want_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    assert got_grads[3] is None or not got_grads[3].any()  # the deepest scale only teaches
    # the reversed direction KL(P_4 || P_k) is a different number on these inputs
    p4, p0 = (mats[3] / 2).softmax(0), (mats[0] / 2).softmax(0)
    assert abs((p4 * (p4.log() - p0.log())).mean().item() - _csmmc_by_hand(mats[:1] + mats[3:], 2.0).item()) > 1e-4


# ---- feature levels ----------------------------------------------------------------------------


def test_pick_levels():
    resnet = [{"reduction": r} for r in (2, 4, 8, 16, 32)]
    assert pick_levels(resnet) == [1, 2, 3, 4]
    vit12 = [{"reduction": 16}] * 12
    assert pick_levels(vit12) == [2, 5, 8, 11]  # blocks 3, 6, 9, 12
    assert pick_levels([{"reduction": 16}] * 6) == [1, 2, 4, 5]
    with pytest.raises(UserError, match="at least 4"):
        pick_levels([{"reduction": 16}] * 3)


@pytest.mark.parametrize("name,kwargs", [
    ("test_vit", {}),
    ("swin_tiny_patch4_window7_224", {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1),
                                      "window_size": 4}),
])
def test_transformer_backbones_give_four_levels(name, kwargs):
    tower = ImageTower(name, pretrained=False, img_size=64, **kwargs)
    pooled = tower(torch.randn(2, 3, 64, 64))
    assert len(pooled) == 4
    assert [p.shape for p in pooled] == [(2, c) for c in tower.channels]
    assert not tower.is_cnn
    if name.startswith("swin"):
        assert tower.channels == [16, 32, 64, 128]


# ---- the method --------------------------------------------------------------------------------


def test_minilm_text_encoder_offline(msa):
    tok = pickle.loads(pickle.dumps(msa.tokenizer()))  # runs in DataLoader workers
    text = tok(CAPTIONS + ["word " * 60])
    assert text["input_ids"].shape[1] <= 31
    assert msa.text.model.config.model_type == "bert"
    with torch.no_grad():
        g_t = msa.encode_texts(text)
        g_v = msa.encode_images(torch.randn(3, 3, 32, 32))
    assert g_t.shape == (len(CAPTIONS) + 1, 384) and g_v.shape == (3, 384)
    assert msa.score(g_v, g_t).shape == (3, len(CAPTIONS) + 1)


def test_g_t_enters_mscmat_l2_normalised(msa):
    """m_k = sigmoid(Linear((a_k + g_t) * q_k)) with g_t = [CLS] / |[CLS]| (the authors' retrieval.py)."""
    m = copy.deepcopy(msa).eval()
    text = m.tokenizer()(CAPTIONS[:3])
    pooled = m.image(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        h = m.text.proj(m.text.model(**text).last_hidden_state)
        cls = h[:, 0] / h[:, 0].norm(dim=-1, keepdim=True)
        pad = text["attention_mask"][:, 1:] == 0
        got = m.match_logits(pooled, text)
        for k, branch in enumerate(m.mscmat.branches):
            want = _naive(branch, pooled[k], h[:, 1:], pad, cls)
            assert (got[k] - want).abs().max().item() < 1e-4
        assert m.encode_texts(text).norm(dim=-1).sub(1).abs().max() < 1e-5


def test_unmasked_option_pads_to_max_len_and_attends_to_padding(msa):
    m = copy.deepcopy(msa).eval()
    m.config.mscmat.mask_padding = False
    tok = pickle.loads(pickle.dumps(m.tokenizer()))
    text = tok(CAPTIONS[:3])
    assert text["input_ids"].shape == (3, 31) and (text["attention_mask"] == 0).any()
    pooled = m.image(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        h = m.text.proj(m.text.model(**text).last_hidden_state)
        cls = torch.nn.functional.normalize(h[:, 0], dim=-1)
        no_mask = torch.zeros(3, 30, dtype=torch.bool)
        got = m.match_logits(pooled, text)
        for k, branch in enumerate(m.mscmat.branches):
            assert (got[k] - _naive(branch, pooled[k], h[:, 1:], no_mask, cls)).abs().max().item() < 1e-4
        m.config.mscmat.mask_padding = True  # the default masks the padding: another value
        assert (m.match_logits(pooled, text)[0] - got[0]).abs().max().item() > 1e-4
    assert m.training_loss(_batch(m, 4)).loss.isfinite()


def test_encode_texts_cuts_shared_padding_with_the_same_embeddings(msa):
    """At test time the paper tokenizer's 31-token padding is cut to the batch's longest caption: same g_t."""
    from rsbench.methods.msa import FixedLengthTokenizer, trim_padding

    m = copy.deepcopy(msa).eval()
    text = FixedLengthTokenizer(m.text.hf_tokenizer, max_len=31)(CAPTIONS[:3])
    longest = int(text["attention_mask"].sum(1).max())
    cut = trim_padding(text)
    assert text["input_ids"].shape == (3, 31) and cut["input_ids"].shape == (3, longest) < (3, 31)
    assert torch.equal(cut["input_ids"], text["input_ids"][:, :longest])
    with torch.no_grad():
        full = torch.nn.functional.normalize(m.text.proj(m.text.model(**text).last_hidden_state)[:, 0], dim=-1)
        assert (m.encode_texts(text) - full).abs().max().item() < 1e-5


def test_text_projection_when_sizes_differ():
    m = create_method("msa", _tiny_config(embed_dim=64, num_heads=4, text_pretrained=False, text_lr_mult=0.0,
                                          backbone_lr_mult=0.5), _ctx())
    assert isinstance(m.text.proj, torch.nn.Linear)
    # text_lr_mult=0 freezes the encoder; the backbone gets half the lr, the new heads the full one
    assert not any(p.requires_grad for p in m.text.model.parameters())
    assert [g["lr"] for g in m.param_groups(1.0, 0.1)] == [0.5, 1.0]
    out = m.training_loss(_batch(m, 4))
    assert torch.isfinite(out.loss)
    with pytest.raises(UserError, match="must divide"):
        create_method("msa", _tiny_config(embed_dim=64, num_heads=5), _ctx())


def test_loss_logs_and_duplicates(msa):
    out = msa.training_loss(_batch(msa, 6, image_ids=[0, 0, 1, 2, 3, 3]))
    assert set(out.logs) == {"triplet", "mscma", "csmmc", "loss"}
    parts = out.logs["triplet"] + out.logs["mscma"] + out.logs["csmmc"]
    assert float(out.logs["loss"]) == pytest.approx(float(parts), rel=1e-5)
    assert torch.isfinite(out.loss)


def _grads(method, batch):
    method.zero_grad(set_to_none=True)
    out = method.training_loss(batch)
    out.loss.backward()
    return out, [[p.grad for p in b.parameters()] for b in method.mscmat.branches]


def _nonzero(grads) -> bool:
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_ablation_weights_switch_losses_off(msa):
    m = copy.deepcopy(msa)
    batch = _batch(m, 4)
    m.config.loss.mscma = m.config.loss.csmmc = 0.0
    out, grads = _grads(m, batch)
    assert set(out.logs) == {"triplet", "loss"}
    assert all(g is None for branch in grads for g in branch)  # MSCMAT not even run
    m.config.loss.triplet, m.config.loss.csmmc = 0.0, 10.0  # CSMMC alone: the deepest scale only teaches
    out, grads = _grads(m, batch)
    assert set(out.logs) == {"csmmc", "loss"}
    assert all(_nonzero(g) for g in grads[:3]) and not _nonzero(grads[3])
    assert m.fusion.w2.weight.grad is None  # the global embedding takes no part
    m.config.loss.triplet = m.config.loss.csmmc = 0.0
    with pytest.raises(UserError, match="every loss weight is 0"):
        m.training_loss(batch)


def test_mscma_logits_option(msa):
    m = copy.deepcopy(msa)
    m.config.loss.mscma_logits = "logits"
    assert torch.isfinite(m.training_loss(_batch(m, 4)).loss)


def test_short_training_lowers_loss(msa):
    torch.manual_seed(0)
    m = copy.deepcopy(msa).train()
    m.text.model.requires_grad_(False)  # keeps the test fast; the heads and the backbone still learn
    batch = _batch(m, 8)
    opt = torch.optim.AdamW(m.param_groups(1e-3, 0.0))
    losses = [logs["loss"] for _, logs in fit_one_batch(m, batch, opt, 5)]
    assert losses[-1] < losses[0]


def test_vit_backbone_in_method():
    cfg = _tiny_config(backbone="test_vit", backbone_img_size=32, text_pretrained=False)
    m = create_method("msa", cfg, _ctx())
    assert not m.is_cnn
    assert torch.isfinite(m.training_loss(_batch(m, 3)).loss)


def test_presets_resolve():
    small = resolve_config("msa", "synthetic", overrides={"loss.csmmc": "0", "loss.mscma": "0"})
    assert small.preset == "small" and small.model.backbone == "resnet18" and not small.model.pretrained
    assert small.model.loss.csmmc == 0 and small.model.loss.mscma == 0 and small.train.image_size == 64
    paper = resolve_config("msa", "synthetic", preset="paper")
    m, t = paper.model, paper.train
    assert (m.backbone, m.pretrained, m.text_model, m.embed_dim, m.num_heads) == \
        ("resnet50.tv_in1k", True, "bert-base-uncased", 768, 12)  # torchvision's weights, as the authors
    assert m.mscmat.shared_norm and not m.mscmat.mask_padding and m.max_len == 31
    assert not small.model.mscmat.shared_norm and small.model.mscmat.mask_padding
    assert (t.optimizer, t.lr, t.weight_decay, t.batch_size, t.epochs, t.image_size) == \
        ("adamw", 1e-5, 0.1, 32, 60, 224)
    assert (m.loss.margin, m.loss.mscma, m.loss.csmmc, m.loss.tau, m.loss.mscma_logits) == \
        (0.5, 15.0, 10.0, 2.0, "sigmoid")
