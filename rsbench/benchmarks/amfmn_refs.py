"""References that follow the AMFMN authors' released code, for `bench perf` (items 1, 2 and 8).

Written from reading github.com/xiaoyuan1996/AMFMN (and the skip-thought package it imports,
github.com/Cadene/skip-thoughts.torch), not copied: the same procedure -- the same loops, batch
and shard sizes, per-query argsort, fp32 -- on random weights. Each function names what it mirrors.
They are NOT used by rsbench itself.

- `ranks_authors_procedure` (item 1): AMFMN/utils.py `acc_i2t2` / `acc_t2i2`, which engine.py
  `validate` calls: per query `argsort` of its row reversed, `where` for each of its captions, then
  the recalls by counting ranks below K; t2i walks the rows of the transposed matrix.
- `SkipThoughtsRef`: their text side, AMFMN/layers/AMFMN_Modules.py `Skipthoughts_Embedding_Module`
  -> seq2vec.py `factory` -> skipthoughts `BayesianUniSkip` (skipthoughts.py; gru.py `BayesianGRU`,
  `BayesianGRUCell`; dropout.py `SequentialDropout`): 620-d word embeddings, a GRU 620 -> 2400 stepped
  in Python over the batch's longest caption, six Linear layers per step (bias on the input side
  only), a dropout mask per gate drawn once per sequence (p = 0.25, training only), the last real
  step picked by a 0/1 mask, then ReLU(Linear(2400 -> D)).
- `AuthorsAMFMN`: AMFMN/layers/AMFMN.py `BaseModel.forward` with AMFMN_Modules.py `ExtractFeature`,
  `VSA_Module`, `CrossAttention` (soft_att) and `cosine_similarity`: the (B_i, B_t, D) expanded
  attended text and its cosine with the expanded image vector.
- `authors_train_step` (item 8): AMFMN/engine.py `train` with utils.py `calcul_loss` (margin 0.2,
  sum over negatives, max_violation 0): forward, loss, zero_grad, backward, Adam step.
- `shard_dis_authors` (item 2): AMFMN/utils.py `shard_dis` as engine.py `validate` calls it: images
  held as a float64 array, 128 x 128 shards, and for every shard the whole model runs on its 128
  images and 128 captions (each image is encoded once per caption shard, each caption once per
  image shard).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ---- item 1: the authors' evaluation functions -----------------------------------------------------


def ranks_authors_procedure(sims: np.ndarray, cap2img: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """1-based (i2t, t2i) ranks and R@1/5/10, medr, meanr computed as AMFMN utils.py acc_i2t2/acc_t2i2 do.

    Their argsort is not stable and is reversed, so tied scores may rank in another order than
    rsbench's (lower index first): equal to compute_ranks on a matrix without ties. Their captions
    of image i are 5i..5i+4; `caps_of` generalises that to any cap2img.
    """
    s = np.asarray(sims)
    c2i = np.asarray(cap2img, dtype=np.int64)
    n_images, n_captions = s.shape
    caps_of: list[list[int]] = [[] for _ in range(n_images)]
    for j, i in enumerate(c2i.tolist()):
        caps_of[i].append(j)
    i2t, top1_i = np.zeros(n_images), np.zeros(n_images)
    for index in range(n_images):
        inds = np.argsort(s[index])[::-1]
        i2t[index] = min(np.where(inds == c)[0][0] for c in caps_of[index])
        top1_i[index] = inds[0]
    st = s.T
    t2i, top1_t = np.zeros(n_captions), np.zeros(n_captions)
    for j in range(n_captions):
        inds = np.argsort(st[j])[::-1]
        t2i[j] = np.where(inds == c2i[j])[0][0]
        top1_t[j] = inds[0]
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * len(np.where(r < k)[0]) / len(r)
        out[f"{name}_medr"] = np.floor(np.median(r)) + 1
        out[f"{name}_meanr"] = r.mean() + 1
    return i2t.astype(np.int64) + 1, t2i.astype(np.int64) + 1, out


# ---- their text side: skip-thoughts BayesianUniSkip --------------------------------------------------


class _SequenceDropout(nn.Module):
    """One mask per sequence: drawn at the first step, reused until `restart` (dropout.py SequentialDropout)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.noise: torch.Tensor | None = None

    def restart(self) -> None:
        self.noise = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or not self.training:
            return x
        if self.noise is None:
            self.noise = x.new_empty(x.shape).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * self.noise


class SkipThoughtsRef(nn.Module):
    """BayesianUniSkip + Skipthoughts_Embedding_Module: (B, L) word ids and lengths -> (B, D)."""

    GATES = ("r", "i", "n")  # reset, update ("i" in their cell), candidate

    def __init__(self, vocab_size: int, embed_dim: int, word_dim: int = 620, hidden: int = 2400,
                 dropout: float = 0.25):
        super().__init__()
        self.hidden = hidden
        self.embedding = nn.Embedding(vocab_size, word_dim)
        self.w_x = nn.ModuleDict({g: nn.Linear(word_dim, hidden) for g in self.GATES})
        self.w_h = nn.ModuleDict({g: nn.Linear(hidden, hidden, bias=False) for g in self.GATES})
        self.drop = nn.ModuleDict({f"{side}{g}": _SequenceDropout(dropout) for side in "xh" for g in self.GATES})
        self.to_out = nn.Linear(hidden, embed_dim)

    def cell(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """gru.py BayesianGRUCell.forward: each gate's input and state through its own dropout mask."""
        def pre(g: str) -> tuple[torch.Tensor, torch.Tensor]:
            return self.w_x[g](self.drop["x" + g](x)), self.w_h[g](self.drop["h" + g](h))
        (xr, hr), (xi, hi), (xn, hn) = pre("r"), pre("i"), pre("n")
        r, i = torch.sigmoid(xr + hr), torch.sigmoid(xi + hi)
        n = torch.tanh(xn + r * hn)
        return (1 - i) * n + i * h

    def forward(self, text: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        x = self.embedding(text)
        batch = x.shape[0]
        h = x.new_zeros(batch, self.hidden)
        steps = []
        for t in range(max(lengths)):  # BayesianGRU.forward: every caption for the longest one's steps
            h = self.cell(x[:, t], h)
            steps.append(h.view(batch, 1, self.hidden))
        for d in self.drop.values():  # end_of_sequence
            d.restart()
        out = torch.cat(steps, 1)
        mask = torch.zeros_like(out)  # skipthoughts.py _select_last
        for b in range(batch):
            mask[b][lengths[b] - 1].fill_(1)
        return F.relu(self.to_out((out * mask).sum(1).view(batch, -1)))

    @torch.no_grad()
    def load_from(self, ours: nn.Module) -> SkipThoughtsRef:
        """The weights of rsbench's SkipThoughtEncoder (nn.GRU stacks the gates r, z, n; its hidden biases
        must be zero, as their cell has none)."""
        self.embedding.weight.copy_(ours.embed.weight)
        gru = ours.gru
        if bool(gru.bias_hh_l0.any()):
            raise ValueError("the GRU's hidden biases must be zero to match the authors' cell")
        for k, g in enumerate(self.GATES):
            rows = slice(k * self.hidden, (k + 1) * self.hidden)
            self.w_x[g].weight.copy_(gru.weight_ih_l0[rows])
            self.w_x[g].bias.copy_(gru.bias_ih_l0[rows])
            self.w_h[g].weight.copy_(gru.weight_hh_l0[rows])
        self.to_out.load_state_dict(ours.fc.state_dict())
        return self


# ---- their model: layers/AMFMN.py BaseModel ---------------------------------------------------------


def cosine_similarity(x1: torch.Tensor, x2: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """AMFMN_Modules.py cosine_similarity."""
    w12 = torch.sum(x1 * x2, dim)
    w1, w2 = torch.norm(x1, 2, dim), torch.norm(x2, 2, dim)
    return (w12 / (w1 * w2).clamp(min=eps)).squeeze()


class AuthorsAMFMN(nn.Module):
    """ExtractFeature + VSA_Module + skip-thoughts + CrossAttention(soft_att) + cosine, as BaseModel runs them.

    Built from an rsbench AMFMN (soft variant, skipthought text encoder) so that both hold the same
    weights: the ResNet-18 stages, the MVSA convolutions and Linear layers are copied module by module.
    """

    def __init__(self, ours: nn.Module, dropout: float = 0.25):
        super().__init__()
        enc, mvsa = ours.image_encoder, ours.image_encoder.mvsa
        self.resnet = copy.deepcopy(enc.backbone)  # conv1 bn1 act1 maxpool layer1..4, as resnet18's
        self.linear = copy.deepcopy(enc.fc)
        self.lf_conv, self.hf_conv = copy.deepcopy(mvsa.lower_conv), copy.deepcopy(mvsa.higher_conv)
        self.conv1x1_1, self.conv1x1_2 = copy.deepcopy(mvsa.main), copy.deepcopy(mvsa.attn)
        self.solo_attention = copy.deepcopy(mvsa.fc)
        self.cross_attention = copy.deepcopy(ours.attention.w)
        st = ours.text_encoder
        self.text_feature = SkipThoughtsRef(st.embed.num_embeddings, st.fc.out_features, st.embed.embedding_dim,
                                            st.gru.hidden_size, dropout).load_from(st)

    def extract_feature(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ExtractFeature.forward: the stages, 2x nearest upsampling, concatenations, the solo feature."""
        r = self.resnet
        x = r.maxpool(r.act1(r.bn1(r.conv1(img))))
        f1 = r.layer1(x)
        f2 = r.layer2(f1)
        f3 = r.layer3(f2)
        f4 = r.layer4(f3)
        lower = torch.cat([f1, F.interpolate(f2, scale_factor=2, mode="nearest")], dim=1)
        higher = torch.cat([f3, F.interpolate(f4, scale_factor=2, mode="nearest")], dim=1)
        solo = self.linear(torch.mean(f4.view(f4.shape[0], f4.shape[1], -1), dim=-1))
        return lower, higher, solo

    def mvsa(self, lower: torch.Tensor, higher: torch.Tensor, solo: torch.Tensor) -> torch.Tensor:
        """VSA_Module.forward."""
        lower, higher = self.lf_conv(lower), self.hf_conv(higher)
        concat = torch.cat([lower, higher], dim=1)
        concat = higher.mean(dim=1, keepdim=True).expand_as(concat) + concat
        main = self.conv1x1_1(concat)
        b = concat.shape[0]
        attn = torch.sigmoid(self.conv1x1_2(concat).view(b, 1, -1)).view(b, 1, main.shape[2], main.shape[3])
        atted = (main * attn).squeeze(dim=1).view(b, -1)
        return solo * torch.sigmoid(self.solo_attention(atted))

    def forward(self, img: torch.Tensor, text: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """BaseModel.forward: (B_i, B_t) cosine of each image with its attended view of each caption."""
        v = self.mvsa(*self.extract_feature(img))
        t = self.text_feature(text, lengths)
        gate = torch.sigmoid(self.cross_attention(v))  # CrossAttention soft_att
        ft = gate.unsqueeze(dim=1).expand(-1, t.shape[0], -1) * t.unsqueeze(dim=0).expand(v.shape[0], -1, -1)
        return cosine_similarity(v.unsqueeze(dim=1).expand(-1, ft.shape[1], -1), ft)


# ---- item 8: their training step --------------------------------------------------------------------


def calcul_loss(scores: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """utils.py calcul_loss (max_violation 0): hinge over every in-batch negative, both directions, summed."""
    diagonal = scores.diag().view(scores.shape[0], 1)
    cost_s = (margin + scores - diagonal.expand_as(scores)).clamp(min=0)
    cost_im = (margin + scores - diagonal.t().expand_as(scores)).clamp(min=0)
    mask = torch.eye(scores.size(0)) > 0.5
    return cost_s.masked_fill_(mask, 0).sum() + cost_im.masked_fill_(mask, 0).sum()


def authors_train_step(model: AuthorsAMFMN, opt: torch.optim.Optimizer, images: torch.Tensor, text: torch.Tensor,
                       lengths: list[int]) -> float:
    """engine.py train, one iteration: forward, calcul_loss, zero_grad, backward, Adam step."""
    model.train()
    loss = calcul_loss(model(images, text, lengths))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


# ---- item 2: their test scoring -----------------------------------------------------------------------


@torch.no_grad()
def shard_dis_authors(images: np.ndarray, captions: np.ndarray, model: AuthorsAMFMN, lengths: list[int],
                      shard_size: int = 128) -> np.ndarray:
    """utils.py shard_dis: (N_i, N_t) float64 scores, the whole model on every 128 x 128 shard."""
    model.eval()
    n_im_shard = (len(images) - 1) // shard_size + 1
    n_cap_shard = (len(captions) - 1) // shard_size + 1
    d = np.zeros((len(images), len(captions)))
    for i in range(n_im_shard):
        im_start, im_end = shard_size * i, min(shard_size * (i + 1), len(images))
        for j in range(n_cap_shard):
            cap_start, cap_end = shard_size * j, min(shard_size * (j + 1), len(captions))
            im = torch.from_numpy(images[im_start:im_end]).float()
            s = torch.from_numpy(captions[cap_start:cap_end])
            sim = model(im, s, lengths[cap_start:cap_end])
            d[im_start:im_end, cap_start:cap_end] = sim.squeeze().cpu().numpy()
    return d
