"""PE-RSITR: one MRS-Adapter in every block of a frozen open_clip tower; HMMC loss; retrieval far above chance."""

import pytest
import torch
from test_harma import _ctx, _train_and_check, tower  # noqa: F401 (module fixture shared with HarMA)

from rsbench.errors import UserError


def _pe(tower, tmp_path, **kw):  # noqa: F811
    from rsbench.methods.pe_rsitr import PeRsitrConfig, PeRsitrMethod

    opts = {"bottleneck": 8, "shared_dim": 8, **kw}
    return PeRsitrMethod(PeRsitrConfig(model_config=tower["config"], checkpoint=tower["ckpt"], **opts), _ctx(tmp_path))


def test_one_adapter_parameter_count_and_identity_start(tower, tmp_path):  # noqa: F811
    m = _pe(tower, tmp_path).eval()
    # vision width 64, text width 48, r=8, s=8: D_img + D_txt + U_img + U_txt + U_shared (weights + biases)
    want = (64 * 8 + 8) + (48 * 8 + 8) + (8 * 56 + 56) + (8 * 40 + 40) + (8 * 8 + 8)
    assert m.weight_provenance()["parameters"]["trainable"] == want
    images = torch.randn(2, 3, 32, 32)
    text = m.tokenizer()(["a red airport", "a harbor"])
    with torch.no_grad():
        got = m.encode_images(images)
        ref = tower["model"].encode_image(images)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # zero-initialised up-projections
    m.train()
    loss = m.training_loss(__import__("rsbench.methods.base", fromlist=["Batch"]).Batch(
        images, text, torch.tensor([0, 1]), torch.arange(2)))
    loss.loss.backward()
    assert all(p.grad is None for p in m.tower.parameters())
    assert m.adapter.shared_up.weight.grad is not None


def test_bad_options(tower, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="bad value for 'shared_dim'"):
        _pe(tower, tmp_path, shared_dim=48)
    with pytest.raises(UserError, match="model.dropout"):
        _pe(tower, tmp_path, dropout=1.0)


@pytest.mark.slow
def test_bench_run_trains_adapter_only_and_retrieves(tower, tmp_path, monkeypatch, capsys):  # noqa: F811
    _train_and_check("pe_rsitr", tower, tmp_path, monkeypatch, capsys, ["--set", "bottleneck=16",
                                                                        "--set", "shared_dim=16"])
