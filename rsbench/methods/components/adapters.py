"""Adapters inside a frozen CLIP tower (HarMA, PE-RSITR), on open_clip or transformers CLIP/SigLIP models.

Both methods change only what a transformer block's MLP branch returns:
    x <- x + attn(ln_1(x));   x <- x + g(x, mlp(ln_2(x)))
where g is the method's adapter. We attach g with forward hooks on the block's second norm (to see x)
and on its MLP (to replace its output), so the tower's own modules and state-dict keys stay exactly as
the checkpoint has them and the adapters live in the method as ordinary submodules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError


@dataclass
class Block:
    """One transformer block: its second norm (input = the residual stream) and its MLP."""

    norm: nn.Module
    mlp: nn.Module

    @property
    def width(self) -> int:
        return int(self.norm.normalized_shape[0])


def tower_layers(model: nn.Module) -> tuple[nn.ModuleList, nn.ModuleList]:
    """(image layers, text layers) of an open_clip CLIP/CustomTextCLIP or a transformers CLIP/SigLIP model."""
    if hasattr(model, "vision_model") and hasattr(model, "text_model"):  # transformers CLIPModel / SiglipModel
        return model.vision_model.encoder.layers, model.text_model.encoder.layers
    visual = getattr(model, "visual", None)
    vis_tf = getattr(visual, "transformer", None)
    if vis_tf is None or not hasattr(vis_tf, "resblocks"):
        raise UserError("adapters need a ViT image tower (open_clip VisionTransformer or transformers CLIP/SigLIP); "
                        f"got {type(visual).__name__}")
    text_tf = getattr(model, "transformer", None) or getattr(getattr(model, "text", None), "transformer", None)
    if text_tf is None or not hasattr(text_tf, "resblocks"):
        raise UserError("adapters need a transformer text tower (open_clip CLIP text transformer)")
    return vis_tf.resblocks, text_tf.resblocks


def tower_blocks(model: nn.Module) -> tuple[list[Block], list[Block]]:
    """(image blocks, text blocks): each block's second norm and MLP."""
    norm = "layer_norm2" if hasattr(model, "vision_model") else "ln_2"
    vis, txt = tower_layers(model)
    return [Block(getattr(b, norm), b.mlp) for b in vis], [Block(getattr(b, norm), b.mlp) for b in txt]


def input_dropout(layer: nn.Module, p: float, active: Callable[[], bool]) -> torch.utils.hooks.RemovableHandle:
    """Dropout on the token states entering `layer` while active() (PE-RSITR's augmented view)."""

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not active():
            return args, kwargs
        if args:
            return (F.dropout(args[0], p, True), *args[1:]), kwargs
        key = "hidden_states" if "hidden_states" in kwargs else "q_x"
        return args, {**kwargs, key: F.dropout(kwargs[key], p, True)}

    return layer.register_forward_pre_hook(hook, with_kwargs=True)


AdapterFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (residual stream x, mlp output) -> new output


def attach(block: Block, fn: AdapterFn) -> list[torch.utils.hooks.RemovableHandle]:
    """Make `block` compute x + fn(x, mlp(ln_2(x))) instead of x + mlp(ln_2(x))."""
    seen: dict[str, torch.Tensor] = {}

    def keep_input(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen["x"] = args[0]

    def replace_output(_m: nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        return fn(seen.pop("x"), out)

    return [block.norm.register_forward_pre_hook(keep_input), block.mlp.register_forward_hook(replace_output)]


def freeze(model: nn.Module) -> None:
    """The backbone is frozen: no gradients, and inference behaviour (no dropout) even in train()."""
    model.requires_grad_(False)
    model.eval()


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---- HarMA (Huang et al., ICLRW 2024) ----------------------------------------------------------------

class SharedMiniAdapter(nn.Module):
    """HarMA's shared adapter in the bottleneck: halve, self-attend, gate with the linear path, restore.

    y = x + W_up( a * MHA(W_dn x) + (1 - a) * W_dn x ),  a = sigmoid(gate), W_up zero-initialised.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.down = nn.Linear(dim, dim // 2)
        self.attn = nn.MultiheadAttention(dim // 2, heads, batch_first=True)
        self.up = nn.Linear(dim // 2, dim)
        self.gate = nn.Parameter(torch.tensor(0.6))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        a = torch.sigmoid(self.gate)
        return x + self.up(a * self.attn(h, h, h, need_weights=False)[0] + (1 - a) * h)


class HarmaAdapter(nn.Module):
    """HarMA's per-block multimodal adapter: modality-specific down/up projections around an attention
    bottleneck that may pass through a mini-adapter shared with the other modality's block.

    h = GELU(W_dn x); z = MHA(h); z = S(z) if shared; z = MHA(z);
    out = x + W_up( a * h + (1 - a) * z ),  a = sigmoid(gate), W_up zero-initialised (identity at start).
    """

    def __init__(self, width: int, bottleneck: int, heads: int, shared: SharedMiniAdapter | None):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.attn = nn.MultiheadAttention(bottleneck, heads, batch_first=True)
        self.up = nn.Linear(bottleneck, width)
        self.gate = nn.Parameter(torch.tensor(0.6))
        self.shared = [shared]  # a list: the shared module is registered once, by the method, not per block
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.down(x))
        z = self.attn(h, h, h, need_weights=False)[0]
        if self.shared[0] is not None:
            z = self.shared[0](z)
        z = self.attn(z, z, z, need_weights=False)[0]
        a = torch.sigmoid(self.gate)
        return x + self.up(a * h + (1 - a) * z)


class HarmaBlockGate(nn.Module):
    """The block-level gate: mlp_out <- b * adapter(mlp_out) + (1 - b) * mlp_out, b = sigmoid(gate)."""

    def __init__(self, adapter: HarmaAdapter):
        super().__init__()
        self.adapter = adapter
        self.gate = nn.Parameter(torch.tensor(0.6))

    def forward(self, _x: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        b = torch.sigmoid(self.gate)
        return b * self.adapter(mlp_out) + (1 - b) * mlp_out


# ---- PE-RSITR (Yuan, Zhan, Xiong, TGRS 2023) ------------------------------------------------------------

class MRSAdapter(nn.Module):
    """PE-RSITR's multimodal remote-sensing adapter, ONE module for every block of both towers.

    Per modality m: d = Dropout(ReLU(D_m x)); out = concat(U_m d, U_shared d), with D_m: width_m -> r,
    U_m: r -> width_m - s, U_shared: r -> s (shared by image and text); all up-projections and biases
    zero-initialised, so the adapter adds nothing at the start. Its output is added to the MLP output.
    """

    def __init__(self, image_width: int, text_width: int, bottleneck: int, shared_dim: int, dropout: float):
        super().__init__()
        if not 0 < shared_dim < min(image_width, text_width):
            raise UserError(f"bad value for 'shared_dim': {shared_dim} (must be > 0 and below both tower widths "
                            f"{image_width}, {text_width})")
        self.down = nn.ModuleDict({"image": nn.Linear(image_width, bottleneck), "text": nn.Linear(text_width, bottleneck)})
        self.up = nn.ModuleDict({"image": nn.Linear(bottleneck, image_width - shared_dim),
                                 "text": nn.Linear(bottleneck, text_width - shared_dim)})
        self.shared_up = nn.Linear(bottleneck, shared_dim)
        self.dropout = dropout
        for lin in [*self.up.values(), self.shared_up]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in self.down.values():
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        d = F.dropout(F.relu(self.down[modality](x.float())), self.dropout, self.training)
        return torch.cat([self.up[modality](d), self.shared_up(d)], dim=-1).to(x.dtype)
