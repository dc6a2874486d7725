"""Perf items 3 (MSCMAT forward + backward vs a per-image loop; 3a vs the authors' code at the paper's
sizes), 9 (the MSA training step) and 10 (the MSA test evaluation), against msa_refs.py."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import references as ref
from .harness import Row, Timing, _timed, side_by_side, verdict
from .workspace import FULL, Workspace

MSCMAT_CHANNELS = (64, 128, 256, 512)  # ResNet-18 stages, the MSA small preset's backbone
MSCMAT_DIM, MSCMAT_HEADS, MSCMAT_TOKENS = 384, 12, 30  # small preset: MiniLM width; max_len 31 - [CLS]


# ---- item 3: MSCMAT forward + backward -------------------------------------------------------------


def mscmat_setup(batch: int) -> dict[str, Any]:
    """Seeded MSCMAT (LayerNorms moved off their trivial init) and inputs with padded texts."""
    from ..methods.components.mscmat import MSCMAT

    torch.manual_seed(0)
    model = MSCMAT(list(MSCMAT_CHANNELS), MSCMAT_DIM, MSCMAT_HEADS).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    length = MSCMAT_TOKENS
    lengths = torch.randint(3, length + 1, (batch,), generator=g)
    return {
        "model": model,
        "pooled": [torch.randn(batch, c, generator=g).requires_grad_() for c in MSCMAT_CHANNELS],
        "tokens": torch.randn(batch, length, MSCMAT_DIM, generator=g).requires_grad_(),
        "pad": torch.arange(length)[None, :] >= lengths[:, None],
        "g_t": torch.randn(batch, MSCMAT_DIM, generator=g).requires_grad_(),
        "weights": [torch.randn(batch, batch, generator=g) for _ in MSCMAT_CHANNELS],
    }


def mscmat_forward_backward(s: dict[str, Any], forward: Callable[..., list[torch.Tensor]]
                            ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the B x B matrices, every gradient: parameters then inputs) of sum_k <M_k, W_k>."""
    inputs = [*s["pooled"], s["tokens"], s["g_t"]]
    params = list(s["model"].parameters())
    for x in params + inputs:
        x.grad = None
    outs = forward(s["model"], s["pooled"], s["tokens"], s["pad"], s["g_t"])
    loss = sum((o * w).sum() for o, w in zip(outs, s["weights"], strict=True))
    loss.backward()
    grads = [torch.zeros_like(x) if x.grad is None else x.grad.clone() for x in params + inputs]
    return [o.detach() for o in outs], grads


def _scaled_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| relative to the tensor's scale: gradients summed over B x B pairs grow with B, and
    float32 sums in another order differ by ~1e-7 of their magnitude, not by a fixed amount."""
    return float((x - y).abs().max()) / max(1.0, float(y.abs().max()))


def _batched(model: torch.nn.Module, *inputs: Any) -> list[torch.Tensor]:
    return model(*inputs)


def item_mscmat(ws: Workspace) -> list[Row]:
    rows = []
    for batch in ws.sizes.mscmat_batches:
        s = mscmat_setup(batch)

        def ours(s: dict[str, Any] = s) -> Any:
            return mscmat_forward_backward(s, _batched)

        def reference(s: dict[str, Any] = s) -> Any:
            return mscmat_forward_backward(s, ref.mscmat_loop)

        t_o, t_r, a, b = side_by_side(ours, reference, ws.sizes.repeats, ws.sizes.budget_s)
        vdiff = max(float((x - y).abs().max()) for x, y in zip(a[0], b[0], strict=True))
        gdiff = max(_scaled_diff(x, y) for x, y in zip(a[1], b[1], strict=True))
        same = vdiff < 1e-5 and gdiff < 1e-5
        ratio = t_r.median / t_o.median
        rows.append(Row(
            "3", f"MSCMAT 4 scales fwd+bwd, B={batch}, D={MSCMAT_DIM}, L={MSCMAT_TOKENS}", str(t_o), str(t_r),
            f"{ratio:.1f}x", check=f"values max abs diff {vdiff:.1e}, grads max diff / max(1, max abs grad) "
            f"{gdiff:.1e}; both < 1e-5: {same}", target=">= 3x, same values+grads",
            result=verdict(ratio >= 3, same), ok=same))
    return rows + item_mscmat_authors(ws)  # 3a: the authors' procedure at the paper's sizes


# ---- items 3 (authors' row), 9 and 10: MSA against the authors' procedure (benchmarks/msa_refs.py) ------

# full: the paper's sizes (batch 32, 224 px, ResNet-50 + 12-layer BERT-base, random weights); quick: tiny
MSA_FULL = {"batch": 32, "px": 224, "layers": 12, "eval_pairs": 10, "eval_images": 64, "eval_captions": 320}
MSA_QUICK = {"batch": 4, "px": 32, "layers": 1, "eval_pairs": 4, "eval_images": 8, "eval_captions": 20}
RSITMD_TEST = (452, 2260)


def _msa_sizes(ws: Workspace) -> dict[str, int]:
    return MSA_FULL if ws.sizes is FULL else MSA_QUICK


def _random_bert_folder(ws: Workspace, layers: int) -> Path:
    """A transformers folder: BERT-base sizes (768 wide, `layers` deep, 30522 WordPiece tokens) with the
    bert-base-uncased vocabulary (MiniLM's tokenizer files are that vocabulary), for random-weight builds."""
    import shutil

    from transformers import BertConfig

    from ..io import write_text
    from ..methods.components.hf_text import minilm_dir

    folder = ws.root / f"bert-base-random-{layers}"
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(minilm_dir() / name, folder / name)
        write_text(folder / "config.json", BertConfig(num_hidden_layers=layers).to_json_string())
    return folder


def msa_paper_method(ws: Workspace, layers: int) -> tuple[Any, Any]:
    """(method, cfg): the `paper` preset (ResNet-50, BERT-base sizes, shared norms, unmasked), random weights."""
    from ..config.resolve import resolve_config
    from ..methods import MethodContext, create_method

    cfg = resolve_config("msa", "synthetic", preset="paper", overrides={
        "model.pretrained": False, "model.text_model": str(_random_bert_folder(ws, layers)),
        "model.text_pretrained": False})
    ctx = MethodContext(train_captions=["x"], train_cap2img=np.zeros(1, dtype=np.int64),
                        cache_dir=ws.root / "methods", dataset_fingerprint="perf", device=torch.device("cpu"))
    torch.manual_seed(0)
    return create_method("msa", cfg.model, ctx), cfg


def _rsitmd_test_captions() -> tuple[list[str], str]:
    """RSITMD's test captions (../shared next to the repository), else synthetic ones of similar length."""
    path = Path(__file__).resolve().parents[2].parent / "shared/data/captions/rsitmd_precomp/test_caps.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8").splitlines()[:RSITMD_TEST[1]], "RSITMD test captions"
    g = np.random.default_rng(0)
    words = ["a", "the", "of", "and", "with", "on", "in", "near", "many", "some", "green", "white", "building",
             "road", "river", "tree", "plane"]
    caps = [" ".join(g.choice(words, size=int(n))) for n in g.integers(6, 28, size=RSITMD_TEST[1])]
    return caps, f"synthetic captions ({path} not found)"


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warm: tuple[str, ...] = ()) -> dict[str, Timing]:
    """One warm-up call each (but the sides in `warm`, already run once), then `repeats` rounds calling each
    in turn; the median per side."""
    for k, fn in fns.items():
        if k not in warm:
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_timed(fn)[0])
    return {k: Timing(statistics.median(v), len(v)) for k, v in times.items()}


def _precisions() -> dict[str, Any]:
    """'auto' (the default a user gets: bf16 autocast on a CPU with native bf16, else fp32) and 'fp32'."""
    from ..engine.device import pick_precision

    cpu = torch.device("cpu")
    return {"auto": pick_precision("auto", cpu), "fp32": pick_precision("fp32", cpu)}


def _msa_rows(item: str, name: str, t: dict[str, Timing], prec: dict[str, Any], ref: str, check: str,
              ok: bool, target: float, scaled: str = "") -> list[Row]:
    """Two rows (ours at auto, ours at fp32) against one reference; the target is judged on the auto row."""
    rows = []
    for key in ("auto", "fp32"):
        ratio = t["ref"].median / t[key].median
        judged = key == "auto"
        rows.append(Row(item, f"{name}; ours at {key} ({prec[key].name}){scaled}", str(t[key]),
                        f"{t['ref']} fp32, {ref}", f"{ratio:.1f}x", check=check if judged else f"as the auto row: {ok}",
                        target=f">= {target:g}x (auto row)" if judged else "-",
                        result=verdict(ratio >= target, ok) if judged else "-", ok=ok if judged else None))
    return rows


def _authors_param_pairs(method: Any, refm: Any) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(ours, the authors' copy) for every parameter the authors' modules hold."""
    pairs = [*zip(method.image.body.parameters(), refm.body.parameters()),
             *zip(method.fusion.proj.parameters(), refm.fc.parameters()),
             *zip([*method.fusion.w1.parameters(), *method.fusion.wa.parameters(), *method.fusion.w2.parameters()],
                  refm.img_map.parameters()),
             *zip(method.text.model.parameters(), refm.bert.parameters())]
    return pairs + _mscmat_param_pairs(method.mscmat, refm.cross)


def _mscmat_param_pairs(ours: Any, theirs: Any) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    pairs = [*zip(ours.ln_q.parameters(), theirs.ln_pre_t.parameters()),
             *zip(ours.ln_kv.parameters(), theirs.ln_pre_i.parameters())]
    for k, b in enumerate(ours.branches):
        for a, c in ((b.query, theirs.fc[k]), (b.attn, theirs.cross_attn[k]), (b.head, theirs.match_fc[k])):
            pairs += list(zip(a.parameters(), c.parameters(), strict=True))
    return pairs


def _grad_diff(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Largest gradient difference over the pairs, relative to max(1, that gradient's largest entry)."""
    worst = 0.0
    for a, b in pairs:
        if (a.grad is None) != (b.grad is None):
            return float("inf")
        if a.grad is not None:
            worst = max(worst, _scaled_diff(a.grad, b.grad))
    return worst


def item_mscmat_authors(ws: Workspace) -> list[Row]:
    """3a: MSCMAT fwd+bwd at the paper's sizes vs the authors' interact_cross + Multi_img_crossatt."""
    from ..methods.components.mscmat import MSCMAT
    from . import msa_refs

    b = 32 if ws.sizes is FULL else 4
    chans, d, length = [256, 512, 1024, 2048], 768, 30
    torch.manual_seed(0)
    ours = MSCMAT(chans, d, 12, shared_norm=True).train()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = msa_refs.AuthorsMSCMAT.from_ours(ours).train()
    g = torch.Generator().manual_seed(1)
    pooled = [torch.randn(b, c, generator=g) for c in chans]
    tokens, g_t = torch.randn(b, length, d, generator=g), torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    weights = [torch.randn(b, b, generator=g) for _ in chans]
    pad = torch.zeros(b, length, dtype=torch.bool)  # the authors pad to 31 tokens and attend to the padding
    prec = _precisions()

    def run(which: str, precision: Any = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        xs = [x.clone().requires_grad_() for x in [*pooled, tokens, g_t]]
        (ours if which == "ours" else theirs).zero_grad(set_to_none=True)
        if which == "ours":
            with precision.autocast(torch.device("cpu")):
                mats = [torch.sigmoid(m.float()) for m in ours(xs[:4], xs[4], pad, xs[5])]
        else:
            mats = msa_refs.interact_cross(xs[:4], xs[4], xs[5], theirs)
        sum((m * w).sum() for m, w in zip(mats, weights, strict=True)).backward()
        return [m.detach() for m in mats], [x.grad for x in xs]

    a, c = run("ours", prec["fp32"]), run("theirs")
    vdiff = max(float((x - y).abs().max()) for x, y in zip(a[0], c[0], strict=True))
    gdiff = max(max(_scaled_diff(x, y) for x, y in zip(a[1], c[1], strict=True)),
                _grad_diff(_mscmat_param_pairs(ours, theirs)))
    ok = vdiff < 1e-5 and gdiff < 1e-4
    t = _interleaved({"auto": lambda: run("ours", prec["auto"]), "fp32": lambda: run("ours", prec["fp32"]),
                      "ref": lambda: run("theirs")}, min(ws.sizes.repeats, 3), warm=("fp32", "ref"))  # the check ran both
    check = (f"fp32: sigmoid matrices max abs diff {vdiff:.1e} < 1e-5, input+parameter grads max diff / "
             f"max(1, max abs grad) {gdiff:.1e} < 1e-4: {ok}")
    return _msa_rows("3a", f"MSCMAT 4 scales fwd+bwd, B={b}, D={d}, L={length}, ResNet-50 channels", t, prec,
                     "retrieval.py::interact_cross + model.py::Multi_img_crossatt", check, ok, 3.0)


def _msa_step_setup(ws: Workspace) -> dict[str, Any]:
    """Our paper-preset MSA (channels_last, its optimiser), the authors' copy of the same weights, one batch."""
    from ..datasets.torchdata import ImageNormalizer
    from ..engine.train import build_optimizer
    from . import msa_refs

    sz = _msa_sizes(ws)
    method, cfg = msa_paper_method(ws, sz["layers"])
    method.train()
    refm = msa_refs.AuthorsMSA(method).train()  # copied before ours goes channels_last: theirs is NCHW
    method = method.to(memory_format=torch.channels_last)
    caps, _ = _rsitmd_test_captions()
    g = torch.Generator().manual_seed(0)
    b = sz["batch"]
    images = torch.randint(0, 256, (b, 3, sz["px"], sz["px"]), dtype=torch.uint8, generator=g)
    mean_std = method.image_mean_std()
    return {"method": method, "cfg": cfg, "opt": build_optimizer(method, cfg), "ref": refm,
            "ref_opt": refm.optimizer(cfg.train.lr), "uint8": images,
            "float": ImageNormalizer(*mean_std)(images),  # theirs: normalised by the loader's transform
            "normalize": ImageNormalizer(*mean_std, channels_last=True),
            "captions": [caps[int(i)] for i in torch.randperm(len(caps), generator=g)[:b]], "sz": sz}


def _our_msa_loss(s: dict[str, Any], precision: Any) -> torch.Tensor:
    """Our step's forward as the engine runs it (tokenised in the step as the authors do, for parity)."""
    from ..contracts import Batch

    m = s["method"]
    b = len(s["captions"])
    batch = Batch(images=s["normalize"](s["uint8"]), text=m.tokenizer()(s["captions"]),
                  image_ids=torch.arange(b), caption_ids=torch.arange(b))
    with precision.autocast(torch.device("cpu")):
        return m.training_loss(batch).loss


def _our_fp32_grads(s: dict[str, Any], channels_last: bool) -> float:
    """Our fp32 loss (seeded dropout), gradients left in .grad; NCHW as `train.channels_last=false` runs it."""
    from ..datasets.torchdata import ImageNormalizer

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    s["method"].to(memory_format=fmt)  # in place: the optimiser keeps its parameters
    kept = s["normalize"]
    s["normalize"] = ImageNormalizer(*s["method"].image_mean_std(), channels_last=channels_last)
    try:
        torch.manual_seed(123)
        s["opt"].zero_grad(set_to_none=True)
        loss = _our_msa_loss(s, _precisions()["fp32"])
        loss.backward()
    finally:
        s["normalize"] = kept
        s["method"].to(memory_format=torch.channels_last)
    return float(loss.detach())


def _msa_step_check(s: dict[str, Any]) -> tuple[str, bool]:
    """fp32, same weights, same dropout masks (same seed before each forward): loss and every gradient.

    Judged with our backbone in NCHW, as theirs runs: torch's CPU channels_last BatchNorm training kernel
    sums less accurately (on a random-weight ResNet-50 its fp32 gradients are ~1e-3 off a float64
    computation where NCHW is ~1e-5 off), so the channels_last difference is shown but not judged.
    """
    from . import msa_refs

    torch.manual_seed(123)
    s["ref_opt"].zero_grad(set_to_none=True)
    loss = msa_refs.authors_loss(s["ref"], s["float"], s["captions"])
    loss.backward()
    theirs = float(loss.detach())
    pairs = _authors_param_pairs(s["method"], s["ref"])
    ours_cl = _our_fp32_grads(s, channels_last=True)
    gdiff_cl = _grad_diff(pairs)
    ours = _our_fp32_grads(s, channels_last=False)
    gdiff = _grad_diff(pairs)
    ldiff = max(abs(x - theirs) for x in (ours, ours_cl)) / max(1.0, abs(theirs))
    ok = ldiff < 1e-5 and gdiff < 1e-4
    return (f"fp32, same weights: loss {ours:.4f} vs {theirs:.4f} (rel diff {ldiff:.1e} < 1e-5), all grads max "
            f"diff / max(1, max abs grad) {gdiff:.1e} < 1e-4 (backbone NCHW; channels_last as timed: "
            f"{gdiff_cl:.1e}): {ok}"), ok


def item_msa_step(ws: Workspace) -> list[Row]:
    """9: one MSA training step (paper preset, random weights) vs retrieval.py::main's loop body, fp32."""
    from . import msa_refs

    s = _msa_step_setup(ws)
    check, ok = _msa_step_check(s)
    prec = _precisions()

    def ours(key: str) -> Callable[[], None]:
        def step() -> None:
            s["opt"].zero_grad(set_to_none=True)
            _our_msa_loss(s, prec[key]).backward()
            s["opt"].step()
        return step

    t = _interleaved({"auto": ours("auto"), "fp32": ours("fp32"),
                      "ref": lambda: msa_refs.authors_step(s["ref"], s["ref_opt"], s["float"], s["captions"])},
                     1 if ws.sizes is FULL else 2, warm=("fp32", "ref"))  # the check warmed both up
    sz = s["sz"]
    return _msa_rows("9", f"MSA train step, batch {sz['batch']} x {sz['px']} px, ResNet-50 + {sz['layers']}-layer "
                     "BERT (paper preset, random weights)", t, prec, "retrieval.py::main (loop body)", check, ok, 2.5)


def _our_encode_images(method: Any, cfg: Any, images: torch.Tensor, precision: Any) -> torch.Tensor:
    """Our test image encoding (engine/evaluate.py :: encode_split): eval batches, channels_last, autocast."""
    from ..datasets.torchdata import ImageNormalizer

    cpu, bs = torch.device("cpu"), cfg.train.eval_batch_size
    method.eval()
    normalize = ImageNormalizer(*method.image_mean_std(), channels_last=True)
    feats = []
    with torch.inference_mode():
        for i in range(0, images.shape[0], bs):
            with precision.autocast(cpu):
                feats.append(method.encode_images(normalize(images[i:i + bs])).float())
    return torch.cat(feats)


def _our_encode_captions(method: Any, cfg: Any, captions: list[str], precision: Any) -> torch.Tensor:
    """Our test caption encoding (engine/evaluate.py :: encode_captions: sorted by length, batched)."""
    from types import SimpleNamespace

    from ..engine.evaluate import encode_captions

    method.eval()
    split = SimpleNamespace(captions=captions, n_captions=len(captions), name="test")
    with torch.inference_mode():
        return encode_captions(method, split, cfg, torch.device("cpu"), precision)


def _our_rank(method: Any, img: torch.Tensor, txt: torch.Tensor, cap2img: np.ndarray) -> dict[str, Any]:
    from ..evaluation.metrics import compute_ranks, metrics_from_ranks

    with torch.inference_mode():
        return metrics_from_ranks(*compute_ranks(method.score(img, txt).float(), cap2img))


def _msa_eval_check(method: Any, cfg: Any, refm: Any, images: torch.Tensor, normalized: torch.Tensor,
                    captions: list[str], c2i: np.ndarray, n_pairs: int) -> tuple[str, bool]:
    """fp32: our features of the first pairs' images and captions equal the authors' batch-1 ones (cosine space)."""
    from . import msa_refs

    fp32 = _precisions()["fp32"]
    ours_i = _our_encode_images(method, cfg, images[:int(c2i[n_pairs - 1]) + 1], fp32)
    ours_t = _our_encode_captions(method, cfg, captions[:n_pairs], fp32)
    ref_i, ref_t = msa_refs.authors_encode_pairs(refm, normalized, captions[:n_pairs], c2i)
    norm = torch.nn.functional.normalize
    di = float((norm(ours_i[torch.as_tensor(c2i[:n_pairs])]) - norm(ref_i)).abs().max())
    dt = float((norm(ours_t) - norm(ref_t)).abs().max())
    ok = di < 1e-4 and dt < 1e-4
    return f"fp32 features (normalised) max abs diff: images {di:.1e}, captions {dt:.1e} (< 1e-4)", ok


def item_msa_eval(ws: Workspace) -> list[Row]:
    """10: MSA test evaluation at RSITMD test size vs the authors' test block (batch 1 per pair + i2t5/t2i5)."""
    from ..datasets.torchdata import ImageNormalizer
    from . import msa_refs

    sz = _msa_sizes(ws)
    method, cfg = msa_paper_method(ws, sz["layers"])
    refm = msa_refs.AuthorsMSA(method).eval()
    method = method.to(memory_format=torch.channels_last).eval()
    ni, nt = RSITMD_TEST
    captions, source = _rsitmd_test_captions()
    c2i = np.arange(nt) // 5  # 5 captions per image, in order (as the authors' every-5th assumes)
    g = torch.Generator().manual_seed(0)
    n_img, n_cap, n_pairs = sz["eval_images"], sz["eval_captions"], sz["eval_pairs"]
    images = torch.randint(0, 256, (max(n_img, n_pairs // 5 + 1), 3, sz["px"], sz["px"]), dtype=torch.uint8,
                           generator=g)
    normalized = ImageNormalizer(*method.image_mean_std())(images)  # theirs: the loader's transform
    sample = [captions[int(i)] for i in torch.randperm(nt, generator=g)[:n_cap]]
    check, ok = _msa_eval_check(method, cfg, refm, images, normalized, captions, c2i, n_pairs)
    prec = _precisions()
    fns: dict[str, Callable[[], Any]] = {"ref": lambda: msa_refs.authors_encode_pairs(refm, normalized,
                                                                                      captions[:n_pairs], c2i)}
    for key in ("auto", "fp32"):
        fns[f"{key} images"] = lambda k=key: _our_encode_images(method, cfg, images[:n_img], prec[k])
        fns[f"{key} captions"] = lambda k=key: _our_encode_captions(method, cfg, sample, prec[k])
    enc = _interleaved(fns, 1)
    # ranking + metrics at full size on random (tie-free) features: both give the same metrics
    dim = method.config.embed_dim
    pair_feats, txt_feats = torch.randn(nt, dim, generator=g), torch.randn(nt, dim, generator=g)
    t_o, t_r, m_o, m_r = side_by_side(lambda: _our_rank(method, pair_feats[::5].contiguous(), txt_feats, c2i),
                                      lambda: msa_refs.authors_rank(pair_feats, txt_feats, c2i), 3, 30.0)
    # numpy's dot and torch's matmul round differently: a near-tie may swap two neighbours (a mean rank moves
    # by 1/n); recalls and median ranks must be equal
    same = all(abs(float(m_o[k]) - float(v)) < (1e-2 if k.endswith("meanr") else 1e-9) for k, v in m_r.items())
    t = {key: Timing(enc[f"{key} images"].median * ni / n_img + enc[f"{key} captions"].median * nt / n_cap
                     + t_o.median, 1) for key in ("auto", "fp32")}
    t["ref"] = Timing(enc["ref"].median * nt / n_pairs + t_r.median, 1)
    scaled = (f"; timed: ours {n_img} images + {n_cap} captions ({source}), theirs {n_pairs} pairs, each scaled "
              f"linearly to {ni} x {nt}; ranking + metrics timed at full size")
    return _msa_rows("10", f"MSA test evaluation, RSITMD size {ni} x {nt}, {sz['px']} px", t, prec,
                     "retrieval.py::main test block (batch 1 per pair) + eval.py::i2t5/t2i5",
                     f"{check}; R@K, medr equal to i2t5/t2i5's, meanr within 0.01: {same}", ok and same, 5.0, scaled)
