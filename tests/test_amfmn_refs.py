"""The AMFMN authors' procedure (benchmarks/amfmn_refs.py, perf items 2 and 8) computes what rsbench's
AMFMN computes on the same weights: their model, loss and shard-wise test scoring."""

from __future__ import annotations

import numpy as np
import torch

from rsbench.benchmarks import amfmn_refs
from rsbench.methods.amfmn import AMFMN, AMFMNConfig
from rsbench.methods.base import Batch, MethodContext

CAPS = ["many planes are parked in an airport", "green trees are around a pond",
        "a dense residential area with many houses", "a river runs through the farmland",
        "a plane", "many houses near a pond and trees"]


def _pair(tmp_path) -> tuple[AMFMN, amfmn_refs.AuthorsAMFMN, dict]:
    ctx = MethodContext(train_captions=CAPS, train_cap2img=np.arange(6), cache_dir=tmp_path)
    torch.manual_seed(0)
    cfg = AMFMNConfig(text_encoder="skipthought", word_dim=12, hidden_dim=24, embed_dim=32, margin_mode="fixed")
    ours = AMFMN(cfg, ctx)
    with torch.no_grad():
        ours.text_encoder.gru.bias_hh_l0.zero_()  # their cell has no hidden biases
    tok = ours.tokenizer()(CAPS)
    images = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(1))  # their MVSA needs 256 px
    return ours, amfmn_refs.AuthorsAMFMN(ours, dropout=0.0), {"tok": tok, "images": images}


def test_authors_model_loss_and_shards_equal_ours(tmp_path) -> None:
    ours, theirs, x = _pair(tmp_path)
    tok, images = x["tok"], x["images"]
    lengths = tok["lengths"].tolist()
    ids = tok["input_ids"][:, :max(lengths)]
    ours.train(), theirs.train()  # BatchNorm on batch statistics on both sides
    with torch.no_grad():
        mine = ours.score(ours.encode_images(images), ours.encode_texts(tok))
        torch.testing.assert_close(theirs(images, ids, lengths), mine, rtol=1e-5, atol=1e-5)
        batch = Batch(images=images, text={k: v[:3] for k, v in tok.items()}, image_ids=torch.arange(3),
                      caption_ids=torch.arange(3))
        loss = ours.training_loss(batch).loss
        sub = lengths[:3]
        theirs_loss = amfmn_refs.calcul_loss(theirs(images, ids[:3, :max(sub)], sub))
    assert abs(float(loss) - float(theirs_loss)) < 1e-4 * max(1.0, float(loss))
    ours.eval()
    with torch.no_grad():
        full = ours.score(ours.encode_images(images), ours.encode_texts(tok)).double().numpy()
    d = amfmn_refs.shard_dis_authors(images.double().numpy(), ids.numpy(), theirs, lengths, shard_size=2)
    np.testing.assert_allclose(d, full, rtol=1e-5, atol=1e-5)  # 2 x 2 shards, partial ones included


def test_authors_gru_dropout_is_one_mask_per_sequence() -> None:
    """Their BayesianGRU draws each gate's mask at the first step and keeps it to the end: two calls in
    training mode differ, a call in eval mode is deterministic."""
    torch.manual_seed(0)
    st = amfmn_refs.SkipThoughtsRef(20, 8, word_dim=6, hidden=10, dropout=0.25)
    ids, lengths = torch.randint(1, 20, (4, 5)), [5, 3, 2, 1]
    st.train()
    a, b = st(ids, lengths), st(ids, lengths)
    assert not torch.equal(a, b)
    st.eval()
    torch.testing.assert_close(st(ids, lengths), st(ids, lengths))
    assert all(d.noise is None for d in st.drop.values())  # masks dropped at the end of each sequence
