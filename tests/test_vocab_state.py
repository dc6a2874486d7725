"""Word-vocabulary methods read a checkpoint's captions with the word ids it was trained on."""

from __future__ import annotations

import numpy as np
import pytest

from rsbench.config.resolve import resolve_config
from rsbench.errors import UserError
from rsbench.methods.base import MethodContext
from rsbench.methods.registry import create_method

CAPS = ["a plane on the runway", "two planes near a terminal", "a green farmland field",
        "many boats in a harbour", "a river crossing the forest", "houses along the road"]
QUERIES = ["a plane near the harbour", "boats on a river", "farmland with houses"]


def build(name: str, captions: list[str], tmp_path) -> object:
    cfg = resolve_config(name, "synthetic", preset="small")
    context = MethodContext(train_captions=captions, train_cap2img=np.arange(len(captions)), cache_dir=tmp_path)
    return create_method(name, cfg.model, context)


@pytest.mark.parametrize("name", ["vsepp", "amfmn", "scan", "swan", "galr"])
def test_checkpoint_vocabulary_replaces_the_one_rebuilt_from_other_captions(name, tmp_path):
    trained = build(name, CAPS, tmp_path)
    # rebuilt from other training captions of as many distinct words: same size, other word ids
    rebuilt = build(name, [c.replace("plane", "jet") for c in CAPS], tmp_path)
    ids = trained.tokenizer()(QUERIES)["input_ids"]
    assert not np.array_equal(rebuilt.tokenizer()(QUERIES)["input_ids"], ids)  # the case that reads words wrongly
    rebuilt.load_extra_state_json(trained.extra_state_json())
    assert np.array_equal(rebuilt.tokenizer()(QUERIES)["input_ids"], ids)
    other = build(name, [*CAPS, "an entirely new vocabulary entry"], tmp_path)
    with pytest.raises(UserError, match=rf"^{name}: checkpoint vocabulary has \d+ words, the model \d+"):
        other.load_extra_state_json(trained.extra_state_json())
