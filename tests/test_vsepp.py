"""VSE++: the hinge triplet (hand-checked), same-image masking, and a short training run."""

import numpy as np
import torch
from helpers import fit_one_batch

from rsbench.config.resolve import resolve_config
from rsbench.methods.base import Batch, MethodContext, same_image_mask
from rsbench.methods.components.triplet import hinge_triplet
from rsbench.methods.registry import create_method


def test_hinge_triplet_by_hand():
    s = torch.tensor([[0.9, 0.5], [0.8, 0.4]])
    same = torch.eye(2, dtype=torch.bool)
    # image 0: caption 1 violates by 0.2+0.5-0.9 < 0 -> 0 ; image 1: caption 0: 0.2+0.8-0.4 = 0.6
    # caption 0: image 1: 0.2+0.8-0.9 = 0.1 ; caption 1: image 0: 0.2+0.5-0.4 = 0.3
    assert hinge_triplet(s, same, 0.2, hardest=True).item() == torch.tensor(0.6 + 0.1 + 0.3).item()
    assert abs(hinge_triplet(s, same, 0.2, hardest=False).item() - 1.0) < 1e-6


def test_same_image_pairs_are_not_negatives():
    s = torch.tensor([[0.5, 0.9], [0.9, 0.5]])
    ids = torch.tensor([3, 3])  # both rows show image 3: caption 1 is a positive of image 0
    assert hinge_triplet(s, same_image_mask(ids), 0.2).item() == 0.0
    assert hinge_triplet(s, torch.eye(2, dtype=torch.bool), 0.2).item() > 0


def _method():
    base = ["a plane at the airport", "many ships in the harbor", "green farmland", "a dense forest"]
    captions = [c for c in base for _ in range(2)]  # caption i belongs to image i // 2
    cfg = resolve_config("vsepp", "synthetic", overrides={"backbone": "test_resnet", "hardest_after_steps": "2"})
    ctx = MethodContext(train_captions=captions, train_cap2img=np.arange(8) // 2, cache_dir=None)
    torch.manual_seed(0)
    return create_method("vsepp", cfg.model, ctx), captions


def test_vsepp_trains_and_switches_to_hardest():
    method, captions = _method()
    tok = method.tokenizer()
    images = torch.randn(4, 3, 32, 32).repeat_interleave(2, dim=0)
    batch = Batch(images=images, text=tok(captions), image_ids=torch.arange(8) // 2, caption_ids=torch.arange(8))
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    method.train()
    history = fit_one_batch(method, batch, opt, 30)
    losses, hardest = [loss for loss, _ in history], [logs["hardest"] for _, logs in history]
    assert hardest[:2] == [0.0, 0.0] and hardest[2] == 1.0
    assert np.mean(losses[-5:]) < 0.5 * losses[2]
    method.eval()
    with torch.no_grad():
        s = method.score(method.encode_images(images), method.encode_texts(tok(captions)))
    assert s.shape == (8, 8)
    assert (s.argmax(dim=1) // 2 == torch.arange(8) // 2).float().mean() > 0.5
