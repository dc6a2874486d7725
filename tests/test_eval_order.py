"""Evaluation encodes captions in length order (#20): sort, encode, unsort gives the embeddings of
encoding them in index order, for word-level (GRU) and BERT text towers alike."""

from __future__ import annotations

import pytest
import torch

CPU = torch.device("cpu")
SMALL = {"train.image_size": "32", "backbone": "test_resnet", "embed_dim": "32"}
PER_METHOD = {"vsepp": {"hidden_dim": "32", "word_dim": "16"}, "amfmn": {"hidden_dim": "16", "word_dim": "16"},
              "msa": {"num_heads": "4"}}

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_length_order_is_shortest_first_and_stable():
    from rsbench.engine.evaluate import length_order

    caps = ["a b c", "one", "x, y", "two words", "many many words here", "z"]
    assert length_order(caps).tolist() == [1, 5, 2, 3, 0, 4]


@pytest.mark.parametrize("name", sorted(PER_METHOD))
def test_sorted_caption_encoding_equals_index_order(name, tiny_synthetic):
    from rsbench.config.resolve import resolve_config
    from rsbench.datasets import load_dataset
    from rsbench.engine.cell import build_method
    from rsbench.engine.device import pick_precision
    from rsbench.engine.evaluate import encode_captions, length_order

    cfg = resolve_config(name, "synthetic", 0, "small", {}, {"eval_batch_size": 7}, {**SMALL, **PER_METHOD[name]})
    split = load_dataset("synthetic", data_root=tiny_synthetic).test
    assert length_order(list(split.captions)).tolist() != list(range(split.n_captions))  # the order matters
    torch.manual_seed(0)
    method = build_method(cfg, load_dataset("synthetic", data_root=tiny_synthetic), CPU).eval()
    prec = pick_precision("fp32", CPU)
    got = encode_captions(method, split, cfg, CPU, prec)
    tok, ref = method.tokenizer(), []
    with torch.inference_mode():  # the reference: index order, batches of 7 padded to their own longest
        for i in range(0, split.n_captions, 7):
            ref.append(method.encode_texts(tok(split.captions[i:i + 7])).float())
    ref = torch.cat(ref)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
