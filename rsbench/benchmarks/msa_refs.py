"""References that follow the MSA authors' released code, for `bench perf` items 3 (authors' row), 9 and 10.

The authors' code: github yr666666/MSA (commit 51bf219, read for this file; nothing is copied, the
procedure is written again from its description). Every reference runs in fp32, as they run it, on
the SAME weights as the rsbench MSA it is compared with (its modules are deep copies of ours, called
the authors' way), so that at fp32 both sides give the same numbers:

- `AuthorsMSCMAT` + `interact_cross`: mirror `model.py` :: `Multi_img_crossatt.forward` and
  `retrieval.py` :: `interact_cross`. The B x B pairs are built by growing one tensor per input with
  `torch.cat`, one image per loop iteration (each image's pooled vector expanded B times, the whole
  text batch appended again); then one sequence-first `nn.MultiheadAttention` call per scale over all
  B*B queries, the text LayerNorm applied separately for key and value, sigmoid(match_fc(...)).
- `AuthorsStep`: one iteration of the training loop in `retrieval.py` :: `main`: per-caption
  `encode_plus` (padding to 31), ResNet-50 stages -> MaxPool2d(kernel = map size) x3 + AdaptiveAvgPool,
  fc1..fc4 summed (`model.py` :: `model_retrieval`), `feature_map`, BERT, both normalised, the four
  CrossEntropy terms on the sigmoid matrices, three `element_neig_rank_loss` KL terms, the triplet with
  hardest negatives found by `scipy.spatial.distance.cdist(..., 'cosine')` on numpy copies, `backward`,
  AdamW (4 parameter groups, lr 1e-5, weight decay 0.1).
- `authors_encode_pairs` + `authors_rank`: the test block of `retrieval.py` :: `main` with
  `data.py` :: `get_loaders` (test loader: batch_size=1 over (image, caption) PAIRS, so every image is
  encoded once per caption; each caption `encode_plus`-ed to 31 tokens and encoded alone), features
  normalised, every 5th image feature kept, then `eval.py` :: `i2t5` / `t2i5` (per query `argsort`
  reversed, `where`; amfmn_refs.ranks_authors_procedure is that procedure).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AUTHORS = "yr666666/MSA@51bf219"
MAX_LEN = 31  # retrieval.py: encode_plus(max_length=31)


class AuthorsMSCMAT(nn.Module):
    """model.py :: Multi_img_crossatt (one fc, sequence-first MHA and match_fc per scale; shared LayerNorms)."""

    def __init__(self, channels: list[int], dim: int, heads: int):
        super().__init__()
        self.fc = nn.ModuleList(nn.Linear(c, dim) for c in channels)
        self.cross_attn = nn.ModuleList(nn.MultiheadAttention(dim, heads) for _ in channels)
        self.ln_pre_t = nn.LayerNorm(dim)  # theirs: on the image query
        self.ln_pre_i = nn.LayerNorm(dim)  # theirs: on the text tokens
        self.match_fc = nn.ModuleList(nn.Linear(dim, 1) for _ in channels)

    @classmethod
    def from_ours(cls, mscmat: nn.Module) -> AuthorsMSCMAT:
        """The same weights as an rsbench MSCMAT built with shared_norm=True (the `paper` preset)."""
        if mscmat.ln_q is None:
            raise ValueError("the authors' MSCMAT shares one LayerNorm pair: build ours with shared_norm=True")
        b0 = mscmat.branches[0]
        ref = cls([b.query.in_features for b in mscmat.branches], b0.query.out_features, b0.attn.num_heads)
        with torch.no_grad():
            for k, b in enumerate(mscmat.branches):
                ref.fc[k].load_state_dict(b.query.state_dict())
                ref.cross_attn[k].load_state_dict(b.attn.state_dict())
                ref.match_fc[k].load_state_dict(b.head.state_dict())
            ref.ln_pre_t.load_state_dict(mscmat.ln_q.state_dict())
            ref.ln_pre_i.load_state_dict(mscmat.ln_kv.state_dict())
        return ref

    def forward(self, multi_img: list[torch.Tensor], text_embedding: torch.Tensor, text_cls: torch.Tensor
                ) -> list[torch.Tensor]:
        """(B*B, C_k) queries, (B*B, L, D) texts, (B*B, D) [CLS] -> per scale (B*B, 1) sigmoid matches."""
        text = text_embedding.permute(1, 0, 2)  # (L, B*B, D): sequence first
        out = []
        for k, x in enumerate(multi_img):
            multi = self.fc[k](x).unsqueeze(1).permute(1, 0, 2)  # (1, B*B, D)
            cross = self.cross_attn[k](self.ln_pre_t(multi), self.ln_pre_i(text), self.ln_pre_i(text),
                                       need_weights=False)[0]
            cross = cross.permute(1, 0, 2).squeeze(1)
            out.append(torch.sigmoid(self.match_fc[k]((cross + text_cls) * multi.permute(1, 0, 2).squeeze(1))))
        return out


def interact_cross(img_embeddings: list[torch.Tensor], text_embeddings: torch.Tensor, text_cls: torch.Tensor,
                   model: AuthorsMSCMAT) -> list[torch.Tensor]:
    """retrieval.py :: interact_cross: all B x B pairs by concatenation, one image per iteration -> B x B each."""
    b = img_embeddings[0].shape[0]
    imgs = [torch.ones(1, x.shape[1]) for x in img_embeddings]
    texts = torch.ones(1, *text_embeddings.shape[1:])
    clss = torch.ones(1, text_cls.shape[1])
    for i in range(b):
        for k, x in enumerate(img_embeddings):
            imgs[k] = torch.cat((imgs[k], x[i, :].expand(b, x.shape[1])), 0)
        texts = torch.cat((texts, text_embeddings), 0)
        clss = torch.cat((clss, text_cls), 0)
    match = model([x[1:] for x in imgs], texts[1:], clss[1:])
    return [torch.reshape(m, (b, b)) for m in match]


def tokenize_one_by_one(tokenizer: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """retrieval.py :: main: encode_plus per caption, padded to 31 tokens, then stacked (transformers 5 has no
    encode_plus: the tokenizer called on one string is the same encoding)."""
    encode = getattr(tokenizer, "encode_plus", None) or tokenizer
    ids, masks = [], []
    for c in captions:
        t = encode(c, padding="max_length", max_length=MAX_LEN, add_special_tokens=True,
                   return_tensors="pt", return_attention_mask=True, truncation=True)
        ids.append(t["input_ids"][0])
        masks.append(t["attention_mask"][0])
    return torch.stack(ids), torch.stack(masks)


def _pool_authors(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """model.py :: model_retrieval.forward: MaxPool2d(kernel_size = map size) on S1..S3, AdaptiveAvgPool on S4."""
    pooled = [F.max_pool2d(f, kernel_size=f.shape[-1]) for f in feats[:-1]]
    pooled.append(F.adaptive_avg_pool2d(feats[-1], (1, 1)))
    return [p.view(p.shape[0], -1) for p in pooled]


class AuthorsMSA(nn.Module):
    """The authors' four modules (model_retrieval, feature_map, Bert, Multi_img_crossatt) on a copy of our weights."""

    def __init__(self, method: nn.Module):
        super().__init__()
        if not isinstance(method.text.proj, nn.Identity):
            raise TypeError("the authors' MSA has no text projection: text hidden size must equal embed_dim")
        self.body = copy.deepcopy(method.image.body)  # resnet.py :: resnet50 (the same torchvision network)
        self.fc = copy.deepcopy(method.fusion.proj)  # model_retrieval.fc1..fc4
        self.img_map = copy.deepcopy(nn.ModuleList([method.fusion.w1, method.fusion.wa, method.fusion.w2]))
        self.bert = copy.deepcopy(method.text.model)
        self.tokenizer = method.text.hf_tokenizer
        self.cross = AuthorsMSCMAT.from_ours(method.mscmat)

    def image(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """model_retrieval + feature_map: (rs_image_feature2, [s_1..s_4])."""
        pooled = _pool_authors(self.body(images))
        features = sum(fc(p) for fc, p in zip(self.fc, pooled, strict=True))
        fc, att, fc2 = self.img_map
        out_easy = fc(features)
        return fc2(out_easy * torch.sigmoid(att(out_easy))), pooled

    def text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """model.py :: Bert.forward: ([CLS] output, the other token outputs)."""
        seq = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return seq[:, 0, :], seq[:, 1:, :]

    def optimizer(self, lr: float = 1e-5) -> torch.optim.Optimizer:
        """retrieval.py :: main: AdamW over text, img_map, img_model, crossatt; weight decay 0.1."""
        groups = [self.bert, self.img_map, nn.ModuleList([self.body, self.fc]), self.cross]
        return torch.optim.AdamW([{"params": m.parameters(), "lr": lr} for m in groups], weight_decay=0.1,
                                 betas=(0.9, 0.999), eps=1.0e-8)


def _kl_neighbour(deep: torch.Tensor, shallow: torch.Tensor, tem: float = 2.0) -> torch.Tensor:
    """retrieval.py :: element_neig_rank_loss(sim1=deep, sim2=shallow): kl_div(P_deep.log(), P_shallow, 'mean')."""
    p_shallow = torch.softmax(shallow / tem, dim=0).t()
    p_deep = torch.softmax(deep.detach() / tem, dim=0).t()
    with warnings.catch_warnings():  # torch warns that 'mean' is not 'batchmean': 'mean' is the authors' choice
        warnings.simplefilter("ignore", UserWarning)
        return F.kl_div(p_deep.log(), p_shallow, reduction="mean").mean()


def _triplet(img: torch.Tensor, txt: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """retrieval.py :: main + triplet_loss: hardest negatives by scipy cosine distance with the diagonal x 1e6."""
    import scipy.spatial

    eye = np.eye(img.shape[0])
    mask = 1000000 * eye + (np.ones_like(eye) - eye)
    sim_it = scipy.spatial.distance.cdist(img.detach().cpu().numpy(), txt.detach().cpu().numpy(), "cosine")
    t_neg = txt[np.argmin(mask * sim_it, axis=1).astype(int), :]
    sim_ti = scipy.spatial.distance.cdist(txt.detach().cpu().numpy(), img.detach().cpu().numpy(), "cosine")
    v_neg = img[np.argmin(mask * sim_ti, axis=1).astype(int), :]
    zero = torch.zeros(1)
    v_pos_d, v_neg_d = 2 - F.cosine_similarity(img, txt, dim=1), 2 - F.cosine_similarity(img, t_neg, dim=1)
    t_pos_d, t_neg_d = 2 - F.cosine_similarity(txt, img, dim=1), 2 - F.cosine_similarity(txt, v_neg, dim=1)
    return (torch.sum(torch.max(zero, margin + v_pos_d - v_neg_d))
            + torch.sum(torch.max(zero, margin + t_pos_d - t_neg_d)))


def authors_loss(model: AuthorsMSA, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """The loss of one training iteration of retrieval.py :: main (tokenisation included, as in their loop)."""
    ids, mask = tokenize_one_by_one(model.tokenizer, captions)
    img, pooled = model.image(images.to(torch.float32))
    cls, tokens = model.text(ids, mask)
    cls = cls / cls.norm(dim=1, keepdim=True)
    img = img / img.norm(dim=1, keepdim=True)
    out_sim = interact_cross(pooled, tokens, cls, model.cross)
    labels = torch.LongTensor(list(range(images.shape[0])))
    loss_cross = sum(F.cross_entropy(s, labels) for s in out_sim)
    consistency = sum(_kl_neighbour(out_sim[3], out_sim[k]) for k in (2, 1, 0))
    return _triplet(img, cls) + 15 * loss_cross + 10 * consistency


def authors_step(model: AuthorsMSA, opt: torch.optim.Optimizer, images: torch.Tensor, captions: list[str]
                 ) -> float:
    """retrieval.py :: main, one iteration: zero_grad, loss, backward, AdamW step; the loss value."""
    model.train()
    opt.zero_grad()
    loss = authors_loss(model, images, captions)
    loss.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def authors_encode_pairs(model: AuthorsMSA, images: torch.Tensor, captions: list[str], cap2img: np.ndarray
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """retrieval.py :: main, test block: one (image, caption) pair per step at batch 1 -> (image, text) features.

    Returns one image feature per PAIR (the authors keep every 5th afterwards) and one text feature per caption.
    """
    model.eval()
    image_features, text_features = [], []
    for j, caption in enumerate(captions):
        img, _ = model.image(images[int(cap2img[j])][None].to(torch.float32))
        ids, mask = tokenize_one_by_one(model.tokenizer, [caption])
        cls, _ = model.text(ids, mask)
        image_features.append(img[0])
        text_features.append(cls[0])
    return torch.stack(image_features), torch.stack(text_features)


def authors_rank(pair_images: torch.Tensor, texts: torch.Tensor, cap2img: np.ndarray) -> dict[str, float]:
    """The rest of the test block: normalise, numpy, every 5th image feature, eval.py :: i2t5 / t2i5."""
    from .amfmn_refs import ranks_authors_procedure

    texts = texts / texts.norm(dim=1, keepdim=True)
    pair_images = pair_images / pair_images.norm(dim=1, keepdim=True)
    img = pair_images.cpu().numpy().copy()
    txt = texts.cpu().numpy().copy()
    img = np.array([img[i] for i in range(0, len(img), 5)])
    return ranks_authors_procedure(np.dot(img, txt.T), cap2img)[2]
