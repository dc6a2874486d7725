"""Drawing a Layout into an RGB image: textured ground, flat features, soft shadows, raised objects.

Textures depend on the image size (the noise lattice is per image side); everything else scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .geometry import Point
from .layout import Layout, Prim, Region


class _Window:
    """A pixel rectangle (x0, y0, w, h) of a size x size canvas on which a texture is computed."""

    def __init__(
        self, size: int, x0: int = 0, y0: int = 0, w: int | None = None, h: int | None = None
    ) -> None:
        self.size, self.x0, self.y0 = size, x0, y0
        self.w = size if w is None else w
        self.h = size if h is None else h

    def noise(self, rng: np.random.Generator, cells: int) -> np.ndarray:
        """Smooth value noise in [-1, 1], (h, w) float32, about `cells` lattice cells per image side."""
        cells = max(2, min(cells, self.size))
        cx = max(2, math.ceil(cells * self.w / self.size))
        cy = max(2, math.ceil(cells * self.h / self.size))
        g = rng.random((cy + 1, cx + 1), dtype=np.float32)
        up = Image.fromarray(g, mode="F").resize((self.w, self.h), Image.Resampling.BILINEAR)
        return (np.asarray(up, dtype=np.float32) - 0.5) * 2.0

    def fbm(self, rng: np.random.Generator, cells: int, octaves: int) -> np.ndarray:
        """Fractal noise: octaves of `noise` at doubling frequencies and halving weights."""
        out = np.zeros((self.h, self.w), np.float32)
        total = 0.0
        for o in range(octaves):
            wgt = 0.5**o
            out += wgt * self.noise(rng, cells * 2**o)
            total += wgt
        return out / total

    def along(self, angle: float) -> np.ndarray:
        """Normalised coordinate along direction `angle`, (h, w)."""
        x = (self.x0 + np.arange(self.w, dtype=np.float32) + 0.5) / self.size
        y = (self.y0 + np.arange(self.h, dtype=np.float32) + 0.5) / self.size
        return x[None, :] * math.cos(angle) + y[:, None] * math.sin(angle)


def _texture(reg: Region, win: _Window, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 texture of a land-cover region over a window."""
    base = np.asarray(reg.colour, np.float32)
    tint = np.zeros((win.h, win.w, 3), np.float32)
    if reg.tex == "grass":
        lum = 0.11 * win.fbm(rng, 4, 3) + 0.07 * win.noise(rng, 40)
        tint[..., 1] = 0.05 * win.fbm(rng, 3, 2)
    elif reg.tex == "forest":
        crowns = win.noise(rng, 34) + 0.5 * win.noise(rng, 70)
        lum = 0.38 * np.tanh(1.8 * crowns) + 0.12 * win.fbm(rng, 3, 2)
        tint[..., 0] = 0.06 * win.fbm(rng, 4, 1)
    elif reg.tex == "sand":
        dunes = np.sin(2 * np.pi * win.along(reg.angle) / reg.period + 2.5 * win.fbm(rng, 3, 2))
        lum = 0.08 * dunes + 0.07 * win.fbm(rng, 5, 3)
    elif reg.tex == "water":
        ripples = np.sin(2 * np.pi * win.along(reg.angle) / (reg.period * 0.3) + 3.0 * win.noise(rng, 6))
        lum = 0.07 * win.fbm(rng, 3, 2) + 0.025 * ripples
    elif reg.tex == "field":
        stripes = np.sin(2 * np.pi * win.along(reg.angle) / reg.period)
        lum = 0.09 * stripes + 0.07 * win.fbm(rng, 5, 2)
    elif reg.tex == "concrete":
        lum = 0.05 * win.fbm(rng, 6, 3) + 0.025 * win.noise(rng, 60)
    elif reg.tex == "asphalt":
        lum = 0.06 * win.fbm(rng, 5, 3)
    else:  # soil
        lum = 0.1 * win.fbm(rng, 5, 3)
    return base * (1.0 + lum[..., None] + tint)


def _px(pts: Sequence[Point], s: float) -> list[tuple[float, float]]:
    return [(x * s, y * s) for x, y in pts]


def _draw(draw: ImageDraw.ImageDraw, p: Prim, s: float, fill: Any, dx: float = 0.0, dy: float = 0.0) -> None:
    """One primitive scaled to s pixels per unit and shifted by (dx, dy) pixels."""
    if p.kind == "poly":
        draw.polygon([(x + dx, y + dy) for x, y in _px(p.pts, s)], fill=fill)
    elif p.kind == "circle":
        (cx, cy), r = p.pts[0], p.radius * s
        cx, cy = cx * s + dx, cy * s + dy
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        w = max(1, round(p.width * s))
        draw.line([(x + dx, y + dy) for x, y in _px(p.pts, s)], fill=fill, width=w, joint="curve")


def _paint_region(arr: np.ndarray, reg: Region, rng: np.random.Generator) -> None:
    """Blend a region's texture into `arr` inside its polygon (everywhere when it has none)."""
    size = arr.shape[0]
    if reg.poly is None:
        arr[:] = _texture(reg, _Window(size), rng)
        return
    pts = _px(reg.poly, size)
    x0 = max(0, math.floor(min(p[0] for p in pts)))
    y0 = max(0, math.floor(min(p[1] for p in pts)))
    x1 = min(size, math.ceil(max(p[0] for p in pts)) + 1)
    y1 = min(size, math.ceil(max(p[1] for p in pts)) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    m = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(m).polygon([(x - x0, y - y0) for x, y in pts], fill=255)
    mask = np.asarray(m, np.float32)[..., None] / 255.0
    tex = _texture(reg, _Window(size, x0, y0, x1 - x0, y1 - y0), rng)
    sub = arr[y0:y1, x0:x1]
    arr[y0:y1, x0:x1] = sub * (1 - mask) + tex * mask


def _with_layer(a: np.ndarray, prims: Sequence[Prim], layer: int) -> Image.Image:
    """The float image `a` as uint8 RGB with the primitives of one layer drawn on it."""
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for p in prims:
        if p.layer == layer:
            _draw(draw, p, a.shape[0], p.fill)
    return img


def _shadow_mask(lay: Layout, size: int) -> np.ndarray:
    """(size, size, 1) shadow strength in 0..255: raised objects shifted along the sun, blurred."""
    sh = Image.new("L", (size, size), 0)
    sdraw = ImageDraw.Draw(sh)
    dx, dy = lay.sun[0] * size, lay.sun[1] * size
    for p in lay.prims:
        if p.layer == 1 and p.shadow:
            _draw(sdraw, p, size, 255, dx, dy)
    sh = sh.filter(ImageFilter.BoxBlur(max(1, size // 200)))
    return np.asarray(sh, np.float32)[..., None]


def render(lay: Layout, image_size: int, rng: np.random.Generator) -> Image.Image:
    """The layout as an image_size x image_size RGB image; `rng` draws the textures and grain."""
    ss = 2 if image_size <= 160 else 1  # supersampling for smooth edges at small sizes
    size = image_size * ss
    arr = np.zeros((size, size, 3), np.float32)
    for reg in lay.regions:
        _paint_region(arr, reg, rng)
    arr *= 1.0 + rng.normal(0.0, 0.02, (size, size, 1)).astype(np.float32)  # sensor grain
    img = _with_layer(arr, lay.prims, 0)
    a = np.asarray(img, np.float32) * (1.0 - 0.45 * _shadow_mask(lay, size) / 255.0)
    img = _with_layer(a, lay.prims, 1)
    if ss > 1:
        img = img.reduce(ss)
    if lay.light != 1.0:
        a = np.asarray(img, np.float32) * lay.light
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img
