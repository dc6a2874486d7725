"""A synthetic remote-sensing image-caption dataset in the Karpathy JSON layout.

`generate_synthetic(out_dir, ...)` draws aerial-like scenes (numpy + PIL only) of ten land-cover
classes, each with objects at several scales (planes, ships, boats, storage tanks, buildings,
cars, trees, roads, rivers, runways, docks), and writes five varied RSICD-style captions per image
built from a small grammar over the scene's actual content (class, object counts and colours, one
spatial relation). The recorded content is kept per image under the key "scene".

Layout written (atomically: built in a temp sibling folder, then renamed into place):

    <out_dir>/dataset.json          {"images": [...], "dataset": "synthetic", "params": {...}}
    <out_dir>/images/<class>_<n>.png

Everything is a function of the arguments: scene content and captions of image (class, n) depend
only on (seed, class, n), not on the image size or the number of images; textures depend on the
image size as well. Only numpy Generators seeded from `numpy.random.SeedSequence` are used.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import UserError
from ..io import write_json

__all__ = ["CLASSES", "SYNTHETIC_VERSION", "generate_synthetic", "synthetic_params_key"]

SYNTHETIC_VERSION = 1

CLASSES: tuple[str, ...] = (
    "airport",
    "harbor",
    "sea",
    "farmland",
    "forest",
    "desert",
    "residential",
    "industrial",
    "parking",
    "meadow",
)

Point = tuple[float, float]
RGB = tuple[int, int, int]


def synthetic_params_key(n_images: int, image_size: int, seed: int) -> str:
    """Cache folder name for a generated copy, e.g. 'v1_n300_s64_seed0' (v = SYNTHETIC_VERSION)."""
    return f"v{SYNTHETIC_VERSION}_n{int(n_images)}_s{int(image_size)}_seed{int(seed)}"


# --------------------------------------------------------------------------------------------------
# colours and counts

COLOURS: dict[str, RGB] = {
    "white": (232, 232, 226),
    "grey": (150, 150, 152),
    "red": (178, 50, 42),
    "blue": (54, 88, 170),
    "green": (62, 132, 70),
    "yellow": (224, 194, 70),
    "orange": (224, 124, 46),
    "black": (36, 36, 40),
    "brown": (128, 88, 56),
    "dark green": (36, 84, 44),
}
_MIXED = ("white", "red", "blue", "black", "grey", "yellow", "green")

COUNT_WORDS = ("one", "two", "three", "several", "many")


def count_word(n: int) -> str:
    if n <= 3:
        return COUNT_WORDS[max(n, 1) - 1]
    return "several" if n <= 6 else "many"


def _sample_count(rng: np.random.Generator, weights: Sequence[float], many: tuple[int, int] = (7, 12)) -> int:
    w = np.asarray(weights, dtype=float)
    word = int(rng.choice(5, p=w / w.sum()))
    if word < 3:
        return word + 1
    if word == 3:
        return int(rng.integers(4, 7))
    return int(rng.integers(many[0], many[1] + 1))


def _clip255(v: float) -> int:
    return int(min(max(v, 0.0), 255.0))


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> RGB:
    d = (rng.uniform(-amount, amount, 3) + rng.uniform(-amount, amount)).tolist()
    return (_clip255(rgb[0] + d[0]), _clip255(rgb[1] + d[1]), _clip255(rgb[2] + d[2]))


def _shade(rgb: Sequence[float], f: float) -> RGB:
    return (_clip255(rgb[0] * f), _clip255(rgb[1] * f), _clip255(rgb[2] * f))


def _pick(rng: np.random.Generator, options: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    if p is None:
        return options[int(rng.integers(len(options)))]
    w = np.asarray(p, dtype=float)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


# --------------------------------------------------------------------------------------------------
# scene layout: background regions + primitives in normalised [0, 1] coordinates


@dataclass
class Region:
    tex: str  # grass | forest | sand | water | concrete | asphalt | field | soil
    colour: RGB
    poly: list[Point] | None = None  # None: the whole image
    angle: float = 0.0  # stripes / dunes direction (radians)
    period: float = 0.03  # stripes / dunes period (normalised)


@dataclass
class Prim:
    kind: str  # poly | circle | line
    pts: list[Point]
    fill: RGB
    width: float = 0.0  # line width (normalised)
    radius: float = 0.0  # circle radius (normalised)
    layer: int = 1  # 0: flat on the ground (no shadow), 1: raised object
    shadow: bool = True


@dataclass
class Layout:
    regions: list[Region] = field(default_factory=list)
    prims: list[Prim] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)
    relation: dict[str, Any] | None = None
    ground: str = ""
    sun: Point = (0.010, 0.008)
    light: float = 1.0

    def add(self, prims: list[Prim]) -> None:
        self.prims.extend(prims)

    def group(self, kind: str, n: int, colour: str) -> dict[str, Any]:
        g = {"kind": kind, "count": int(n), "count_word": count_word(n), "colour": colour}
        self.objects.append(g)
        return g

    def scene(self) -> dict[str, Any]:
        objs = [g for g in self.objects if g["count"] > 0]
        rel = self.relation
        if rel is not None and not any(g["kind"] == rel["subject"] for g in objs):
            rel = None  # the subject could not be placed: say nothing about where it is
        return {"objects": objs, "relation": rel, "ground": self.ground}


# geometry ------------------------------------------------------------------------------------------


def _rot(local: Sequence[Point], cx: float, cy: float, ang: float) -> list[Point]:
    c, s = math.cos(ang), math.sin(ang)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in local]


def _rect(cx: float, cy: float, w: float, h: float, ang: float = 0.0) -> list[Point]:
    return _rot([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)], cx, cy, ang)


def _box(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


class Path2:
    """A polyline with arc-length parametrisation (for rivers, roads, rows)."""

    def __init__(self, pts: Sequence[Point]):
        self.pts = np.asarray(pts, dtype=float)
        seg = np.diff(self.pts, axis=0)
        self.seglen = np.hypot(seg[:, 0], seg[:, 1])
        self.cum = np.concatenate([[0.0], np.cumsum(self.seglen)])
        self.length = float(self.cum[-1])

    def at(self, t: float) -> tuple[Point, Point]:
        """Point and unit tangent at fraction t of the length."""
        d = min(max(t, 0.0), 1.0) * self.length
        i = int(np.clip(np.searchsorted(self.cum, d, side="right") - 1, 0, len(self.seglen) - 1))
        f = (d - self.cum[i]) / max(self.seglen[i], 1e-9)
        p = self.pts[i] + f * (self.pts[i + 1] - self.pts[i])
        tan = (self.pts[i + 1] - self.pts[i]) / max(self.seglen[i], 1e-9)
        return (float(p[0]), float(p[1])), (float(tan[0]), float(tan[1]))

    def dist(self, x: float, y: float) -> float:
        a, b = self.pts[:-1], self.pts[1:]
        ab = b - a
        t = np.clip(
            ((x - a[:, 0]) * ab[:, 0] + (y - a[:, 1]) * ab[:, 1]) / np.maximum(self.seglen**2, 1e-12), 0, 1
        )
        px, py = a[:, 0] + t * ab[:, 0], a[:, 1] + t * ab[:, 1]
        return float(np.min(np.hypot(px - x, py - y)))

    def points(self) -> list[Point]:
        return [(float(x), float(y)) for x, y in self.pts]


def _meander(rng: np.random.Generator, orient: str, amp: float, n: int = 28) -> Path2:
    """A gently winding path across the unit square: horizontal, vertical or diagonal."""
    t = np.linspace(-0.08, 1.08, n)
    f = rng.uniform(0.6, 1.6)
    ph = rng.uniform(0, 2 * np.pi)
    wob = amp * np.sin(2 * np.pi * f * t + ph) + 0.25 * amp * np.sin(2 * np.pi * 2.7 * f * t + 2 * ph)
    if orient == "diagonal":
        off = rng.uniform(-0.15, 0.15)
        x, y = t, t + off
        nx, ny = -0.7071, 0.7071
        x, y = x + nx * wob, y + ny * wob
        if rng.random() < 0.5:
            x = 1 - x
    else:
        c = rng.uniform(0.3, 0.7)
        x, y = t, c + wob
        if orient == "vertical":
            x, y = y, x
    return Path2(list(zip(x.tolist(), y.tolist())))


class Placer:
    """Rejection sampling of object centres that keeps objects apart and off linear features."""

    def __init__(self) -> None:
        self.circles: list[tuple[float, float, float]] = []
        self.paths: list[tuple[Path2, float]] = []
        self.boxes: list[tuple[float, float, float, float]] = []

    def free(self, x: float, y: float, r: float, margin: float = 0.004) -> bool:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            return False
        for cx, cy, cr in self.circles:
            if (x - cx) ** 2 + (y - cy) ** 2 < (r + cr + margin) ** 2:
                return False
        for x0, y0, x1, y1 in self.boxes:
            if x0 - r < x < x1 + r and y0 - r < y < y1 + r:
                return False
        for p, hw in self.paths:
            if p.dist(x, y) < hw + r + margin:
                return False
        return True

    def add(self, x: float, y: float, r: float) -> None:
        self.circles.append((x, y, r))

    def add_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self.boxes.append((x0, y0, x1, y1))

    def add_path(self, p: Path2, hw: float) -> None:
        self.paths.append((p, hw))

    def in_box(
        self, rng: np.random.Generator, box: Sequence[float], r: float, tries: int = 60
    ) -> Point | None:
        x0, y0, x1, y1 = box
        for _ in range(tries):
            x = rng.uniform(x0 + r, max(x1 - r, x0 + r + 1e-6))
            y = rng.uniform(y0 + r, max(y1 - r, y0 + r + 1e-6))
            if self.free(x, y, r):
                self.add(x, y, r)
                return (x, y)
        return None

    def along(
        self, rng: np.random.Generator, path: Path2, offset: float, r: float, tries: int = 60
    ) -> tuple[Point, float] | None:
        """A point beside `path` at distance `offset` (either side); returns (centre, path angle)."""
        for _ in range(tries):
            (px, py), (tx, ty) = path.at(rng.uniform(0.03, 0.97))
            side = 1.0 if rng.random() < 0.5 else -1.0
            x, y = px - ty * offset * side, py + tx * offset * side
            if r < x < 1 - r and r < y < 1 - r and self.free(x, y, r):
                self.add(x, y, r)
                return (x, y), math.atan2(ty, tx)
        return None


POS_BOXES: dict[str, tuple[float, float, float, float]] = {
    "left": (0.03, 0.06, 0.42, 0.94),
    "right": (0.58, 0.06, 0.97, 0.94),
    "top": (0.06, 0.03, 0.94, 0.42),
    "bottom": (0.06, 0.58, 0.94, 0.97),
    "center": (0.28, 0.28, 0.72, 0.72),
}
POS_WORDS = tuple(POS_BOXES)


def _clip_box(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float]:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


# shapes ---------------------------------------------------------------------------------------------

_PLANE_HALF = [
    (0.50, 0.0),
    (0.44, 0.045),
    (0.10, 0.05),
    (-0.10, 0.48),
    (-0.20, 0.48),
    (-0.10, 0.05),
    (-0.36, 0.045),
    (-0.45, 0.20),
    (-0.52, 0.20),
    (-0.48, 0.0),
]
_PLANE = _PLANE_HALF + [(x, -y) for x, y in reversed(_PLANE_HALF[1:-1])]


def plane(cx: float, cy: float, length: float, ang: float, colour: RGB) -> list[Prim]:
    body = _rot([(x * length, y * length) for x, y in _PLANE], cx, cy, ang)
    stripe = _rot(
        [(x * length, y * length * 0.35) for x, y in _PLANE_HALF[:3]] + [(0.1 * length, 0)], cx, cy, ang
    )
    return [Prim("poly", body, colour), Prim("poly", stripe, _shade(colour, 0.85), shadow=False)]


def ship(cx: float, cy: float, length: float, width: float, ang: float, colour: RGB, deck: RGB) -> list[Prim]:
    hl, hw = length / 2, width / 2
    hull = _rot([(-hl, -hw), (0.3 * length, -hw), (hl, 0), (0.3 * length, hw), (-hl, hw)], cx, cy, ang)
    bridge = _rot(_rect(-0.32 * length, 0, 0.14 * length, 0.75 * width), cx, cy, ang)
    cargo = _rot(_rect(0.02 * length, 0, 0.42 * length, 0.6 * width), cx, cy, ang)
    return [
        Prim("poly", hull, colour),
        Prim("poly", cargo, _shade(colour, 0.78), shadow=False),
        Prim("poly", bridge, deck),
    ]


def boat(cx: float, cy: float, length: float, ang: float, colour: RGB) -> list[Prim]:
    hl, hw = length / 2, length * 0.2
    hull = _rot([(-hl, -hw), (0.15 * length, -hw), (hl, 0), (0.15 * length, hw), (-hl, hw)], cx, cy, ang)
    inner = _rot(_rect(-0.1 * length, 0, 0.45 * length, hw), cx, cy, ang)
    return [Prim("poly", hull, colour), Prim("poly", inner, (236, 236, 232), shadow=False)]


def wake(cx: float, cy: float, length: float, ang: float, water: RGB) -> list[Prim]:
    w = _rot(
        [(-0.4 * length, 0), (-1.1 * length, -0.18 * length), (-1.1 * length, 0.18 * length)], cx, cy, ang
    )
    return [Prim("poly", w, _shade(water, 1.18), layer=0, shadow=False)]


def tank(cx: float, cy: float, r: float, colour: RGB) -> list[Prim]:
    return [
        Prim("circle", [(cx, cy)], colour, radius=r),
        Prim("circle", [(cx + 0.08 * r, cy + 0.08 * r)], _shade(colour, 0.86), radius=0.72 * r, shadow=False),
        Prim("circle", [(cx, cy)], _shade(colour, 0.7), radius=0.12 * r, shadow=False),
    ]


def building(
    cx: float, cy: float, w: float, h: float, ang: float, colour: RGB, roof: str = "ridge"
) -> list[Prim]:
    out = [Prim("poly", _rect(cx, cy, w, h, ang), colour)]
    if roof == "ridge":  # pitched roof: a darker half
        out.append(
            Prim("poly", _rot(_box(-w / 2, 0, w / 2, h / 2), cx, cy, ang), _shade(colour, 0.8), shadow=False)
        )
    elif roof == "ribs":  # industrial roof: a few darker ribs across the long side
        n = max(2, int(w / 0.04))
        for i in range(1, n):
            x = -w / 2 + i * w / n
            out.append(
                Prim(
                    "line",
                    _rot([(x, -h / 2), (x, h / 2)], cx, cy, ang),
                    _shade(colour, 0.82),
                    width=0.004,
                    shadow=False,
                )
            )
    else:  # flat roof with a parapet
        out.append(Prim("poly", _rect(cx, cy, w * 0.82, h * 0.75, ang), _shade(colour, 0.9), shadow=False))
    return out


def car(cx: float, cy: float, length: float, ang: float, colour: RGB) -> list[Prim]:
    body = _rect(cx, cy, length, 0.48 * length, ang)
    glass = _rot(_rect(0.18 * length, 0, 0.16 * length, 0.38 * length), cx, cy, ang)
    return [Prim("poly", body, colour), Prim("poly", glass, (40, 44, 52), shadow=False)]


def tree(cx: float, cy: float, r: float, colour: RGB) -> list[Prim]:
    return [
        Prim("circle", [(cx, cy)], colour, radius=r),
        Prim("circle", [(cx - 0.25 * r, cy - 0.25 * r)], _shade(colour, 1.22), radius=0.5 * r, shadow=False),
    ]


def _dashes(path: Path2, dash: float, gap: float, colour: RGB, width: float) -> list[Prim]:
    out, d = [], gap / 2
    while d + dash < path.length:
        a, _ = path.at(d / path.length)
        b, _ = path.at((d + dash) / path.length)
        out.append(Prim("line", [a, b], colour, width=width, layer=0, shadow=False))
        d += dash + gap
    return out


def road(path: Path2, width: float, colour: RGB, marking: RGB | None) -> list[Prim]:
    out = [Prim("line", path.points(), colour, width=width, layer=0, shadow=False)]
    if marking is not None:
        out += _dashes(path, 0.035, 0.03, marking, max(width * 0.09, 0.003))
    return out


def river(path: Path2, width: float, colour: RGB, bank: RGB) -> list[Prim]:
    return [
        Prim("line", path.points(), bank, width=width * 1.35, layer=0, shadow=False),
        Prim("line", path.points(), colour, width=width, layer=0, shadow=False),
    ]


# dihedral transforms (so canonical layouts can appear in 8 orientations) --------------------------


def _tf_point(p: Point, code: int) -> Point:
    x, y = p
    if code & 4:
        x, y = y, x
    if code & 1:
        x = 1 - x
    if code & 2:
        y = 1 - y
    return (x, y)


def _tf_vec(v: Point, code: int) -> Point:
    x, y = v
    if code & 4:
        x, y = y, x
    return (-x if code & 1 else x, -y if code & 2 else y)


def _tf_angle(a: float, code: int) -> float:
    vx, vy = _tf_vec((math.cos(a), math.sin(a)), code)
    return math.atan2(vy, vx)


_WORD_AT = {"left": (0.0, 0.5), "right": (1.0, 0.5), "top": (0.5, 0.0), "bottom": (0.5, 1.0)}


def _tf_word(w: str, code: int) -> str:
    if w in _WORD_AT:
        p = _tf_point(_WORD_AT[w], code)
        return min(_WORD_AT, key=lambda k: (_WORD_AT[k][0] - p[0]) ** 2 + (_WORD_AT[k][1] - p[1]) ** 2)
    if w in ("horizontal", "vertical") and code & 4:
        return "vertical" if w == "horizontal" else "horizontal"
    return w


def _transform(lay: Layout, code: int) -> None:
    if code == 0:
        return
    for r in lay.regions:
        if r.poly is not None:
            r.poly = [_tf_point(p, code) for p in r.poly]
        r.angle = _tf_angle(r.angle, code)
    for p in lay.prims:
        p.pts = [_tf_point(q, code) for q in p.pts]
    lay.sun = _tf_vec(lay.sun, code)
    if lay.relation is not None and isinstance(lay.relation.get("object"), str):
        lay.relation["object"] = _tf_word(lay.relation["object"], code)


# --------------------------------------------------------------------------------------------------
# class builders: each returns a Layout with regions, primitives and the recorded scene content

_COUNTS_DEFAULT = (0.2, 0.2, 0.2, 0.2, 0.2)
_ASPHALT: RGB = (74, 74, 78)


def _new_layout(rng: np.random.Generator) -> Layout:
    lay = Layout()
    s = rng.uniform(0.007, 0.012)
    lay.sun = (s * _pick(rng, (-1, 1)), s * _pick(rng, (-1, 1)))
    lay.light = float(rng.uniform(0.92, 1.08))
    return lay


def _linear(
    rng: np.random.Generator, lay: Layout, placer: Placer, kind: str, orient: str, on: str = "grass"
) -> Path2:
    """Add a road or a river crossing the scene; records the object group."""
    if kind == "river":
        width = rng.uniform(0.06, 0.11)
        path = _meander(rng, orient, rng.uniform(0.03, 0.09))
        cname = _pick(rng, ("blue", "green", "brown"), (0.5, 0.3, 0.2))
        base = {"blue": (46, 84, 122), "green": (52, 96, 84), "brown": (112, 96, 70)}[cname]
        bank = (178, 164, 128) if on != "sand" else (150, 130, 96)
        lay.add(river(path, width, _jitter(rng, base, 8), bank))
        lay.group("river", 1, cname)
        placer.add_path(path, width * 0.7)
    else:
        width = rng.uniform(0.03, 0.05)
        path = _meander(rng, orient, rng.uniform(0.0, 0.03))
        dirt = on in ("field", "forest", "sand") and rng.random() < 0.5
        cname = "brown" if dirt else "grey"
        colour = _jitter(rng, (150, 118, 84) if dirt else (96, 96, 100), 8)
        lay.add(road(path, width, colour, None if dirt or rng.random() < 0.4 else (220, 220, 210)))
        lay.group("road", 1, cname)
        placer.add_path(path, width * 0.6)
    return path


def _place_group(
    rng: np.random.Generator,
    placer: Placer,
    n: int,
    r: float,
    relation: tuple[str, Any],
) -> list[tuple[float, float, float]]:
    """Place up to n objects of radius r; returns (x, y, angle) per placed object."""
    how, where = relation
    out: list[tuple[float, float, float]] = []
    for _ in range(n):
        if how == "box":
            p = placer.in_box(rng, where, r)
            if p is not None:
                out.append((p[0], p[1], rng.uniform(0, 2 * np.pi)))
        else:  # along a path at a given offset
            path, offset = where
            q = placer.along(rng, path, offset + r, r)
            if q is not None:
                (x, y), a = q
                out.append((x, y, a))
    return out


def _finish_relation(lay: Layout, subject: str, rtype: str, obj: str | None) -> None:
    lay.relation = {"subject": subject, "type": rtype, "object": obj}


def _airport(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    dark = rng.random() < 0.4
    lay.ground = "grey"
    lay.regions.append(Region("concrete", _jitter(rng, (120, 120, 118) if dark else (164, 162, 156), 8)))
    lay.regions.append(Region("grass", _jitter(rng, (112, 136, 78), 10), _box(-0.01, 0.0, 1.01, 0.32)))
    y0, rw = rng.uniform(0.05, 0.1), rng.uniform(0.09, 0.12)
    lay.add([Prim("poly", _box(-0.02, y0, 1.02, y0 + rw), _jitter(rng, _ASPHALT, 6), layer=0, shadow=False)])
    cl = Path2([(-0.02, y0 + rw / 2), (1.02, y0 + rw / 2)])
    lay.add(_dashes(cl, 0.05, 0.035, (226, 226, 220), rw * 0.06))
    for xe in (0.03, 0.97):
        for k in range(4):
            yy = y0 + rw * (0.15 + 0.7 * k / 3)
            lay.add(
                [
                    Prim(
                        "line",
                        [(xe - 0.02, yy), (xe + 0.02, yy)],
                        (226, 226, 220),
                        width=rw * 0.07,
                        layer=0,
                        shadow=False,
                    )
                ]
            )
    lay.group("runway", 1, "grey")
    ty = y0 + rw + rng.uniform(0.06, 0.1)
    taxi = Path2([(-0.02, ty), (1.02, ty)])
    lay.add(road(taxi, 0.03, _jitter(rng, (90, 90, 92), 5), (210, 190, 70)))
    for xc in rng.uniform(0.1, 0.9, 2):
        lay.add(road(Path2([(xc, y0 + rw / 2), (xc, 0.34)]), 0.028, _jitter(rng, (90, 90, 92), 5), None))
    placer.add_box(-1, -1, 2, ty + 0.03)

    has_building = rng.random() < 0.75
    bbox = None
    if has_building:
        bw, bh = rng.uniform(0.3, 0.55), rng.uniform(0.07, 0.11)
        bx, by = rng.uniform(bw / 2 + 0.02, 1 - bw / 2 - 0.02), rng.uniform(0.82, 0.9)
        bname = _pick(rng, ("white", "grey", "blue"), (0.45, 0.35, 0.2))
        lay.add(building(bx, by, bw, bh, 0.0, _jitter(rng, COLOURS[bname], 8), roof="flat"))
        bbox = (bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2)
        placer.add_box(*bbox)

    n = _sample_count(rng, _COUNTS_DEFAULT, (7, 11))
    length = (
        rng.uniform(0.13, 0.2) if n <= 3 else rng.uniform(0.1, 0.14) if n <= 6 else rng.uniform(0.08, 0.11)
    )
    pname = _pick(rng, ("white", "grey", "red", "blue", "yellow"), (0.4, 0.2, 0.15, 0.15, 0.1))
    colour = _jitter(rng, COLOURS[pname], 6)
    opts = ["left", "right", "center", "bottom", "along"] + (["next_to"] * 2 if has_building else [])
    rel = _pick(rng, opts)
    r = length * 0.5
    spots: list[tuple[float, float, float]] = []
    if rel in ("along", "next_to"):
        if rel == "along":
            yrow, ang = ty + 0.035 + r, -math.pi / 2
            xs0, xs1 = 0.02, 0.98
        else:
            assert bbox is not None
            yrow, ang = bbox[1] - 0.015 - r, math.pi / 2
            xs0, xs1 = max(0.02, bbox[0] - 0.1), min(0.98, bbox[2] + 0.1)
        slots = np.arange(xs0 + r, xs1 - r + 1e-9, 2 * r + 0.012)
        take = np.sort(rng.permutation(len(slots))[: min(n, len(slots))])
        for x in slots[take]:
            if placer.free(float(x), yrow, r * 0.9):
                placer.add(float(x), yrow, r * 0.9)
                spots.append((float(x), yrow, ang + rng.normal(0, 0.05)))
        _finish_relation(lay, "plane", rel, "runway" if rel == "along" else "building")
    else:
        box = _clip_box(POS_BOXES[rel], (0, ty + 0.03, 1, 1))
        aligned = rng.random() < 0.5
        a0 = rng.uniform(0, 2 * np.pi)
        spots = [(x, y, a0 if aligned else a) for x, y, a in _place_group(rng, placer, n, r, ("box", box))]
        _finish_relation(lay, "plane", "position", rel)
    for x, y, a in spots:
        lay.add(plane(x, y, length, a, colour))
    g = lay.group("plane", len(spots), pname)
    lay.objects.insert(0, lay.objects.pop(lay.objects.index(g)))
    if has_building:
        lay.group("building", 1, bname)
    _transform(lay, int(rng.integers(8)))
    return lay


def _water_colour(rng: np.random.Generator) -> tuple[str, RGB]:
    name = _pick(rng, ("blue", "dark blue", "green"), (0.45, 0.35, 0.2))
    base = {"blue": (44, 88, 132), "dark blue": (26, 52, 88), "green": (40, 104, 104)}[name]
    return name, _jitter(rng, base, 8)


def _vessels(rng: np.random.Generator, kind: str, n: int) -> tuple[str, RGB, RGB, float, float]:
    if kind == "ship":
        cname = _pick(rng, ("red", "white", "blue", "black", "grey"), (0.25, 0.2, 0.2, 0.15, 0.2))
        length = rng.uniform(0.16, 0.24) if n <= 3 else rng.uniform(0.12, 0.17)
        width = length * rng.uniform(0.18, 0.24)
    else:
        cname = _pick(rng, ("white", "red", "blue", "yellow"), (0.5, 0.2, 0.2, 0.1))
        length = rng.uniform(0.05, 0.08)
        width = length * 0.4
    deck = (236, 236, 232) if cname != "white" else (150, 150, 152)
    return cname, _jitter(rng, COLOURS[cname], 6), deck, length, width


def _draw_vessel(
    kind: str, x: float, y: float, length: float, width: float, a: float, c: RGB, deck: RGB
) -> list[Prim]:
    return ship(x, y, length, width, a, c, deck) if kind == "ship" else boat(x, y, length, a, c)


def _harbor(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    wname, water = _water_colour(rng)
    lay.ground = wname
    shore = rng.uniform(0.5, 0.62)
    lay.regions.append(Region("concrete", _jitter(rng, (158, 154, 146), 8)))
    xs = np.linspace(0, 1, 9)
    edge = shore + rng.uniform(-0.01, 0.01, 9)
    lay.regions.append(
        Region("water", water, [(-0.01, -0.01), (1.01, -0.01)] + list(zip(xs[::-1], edge[::-1])))
    )
    quay = _jitter(rng, (186, 182, 172), 6)
    lay.add([Prim("line", list(zip(xs.tolist(), edge.tolist())), quay, width=0.02, layer=0, shadow=False)])
    n_piers = int(rng.integers(1, 5))
    gaps = np.linspace(0.12, 0.88, n_piers) if n_piers > 1 else np.array([rng.uniform(0.3, 0.7)])
    piers = []
    for px in gaps + rng.uniform(-0.04, 0.04, n_piers):
        plen, pw = rng.uniform(0.2, 0.34), rng.uniform(0.035, 0.05)
        lay.add([Prim("poly", _box(px - pw / 2, shore - plen, px + pw / 2, shore + 0.01), quay, layer=0)])
        piers.append((float(px), pw, plen))
        placer.add_box(px - pw / 2, shore - plen, px + pw / 2, shore + 0.05)
    placer.add_box(-1, shore - 0.015, 2, 2)
    lay.add(
        road(
            Path2([(-0.02, shore + 0.12), (1.02, shore + 0.12)]), 0.03, _jitter(rng, (104, 104, 106), 5), None
        )
    )

    kind = _pick(rng, ("ship", "boat"))
    n = _sample_count(rng, (0.2, 0.2, 0.2, 0.2, 0.2), (7, 12))
    cname, colour, deck, length, width = _vessels(rng, kind, n)
    rel = _pick(rng, ("next_to", "next_to", "left", "right", "center", "top"))
    spots: list[tuple[float, float, float]] = []
    if rel == "next_to":
        slots = []
        for px, pw, plen in piers:
            for side in (-1, 1):
                x = px + side * (pw / 2 + width / 2 + 0.006)
                for y in np.arange(
                    shore - plen + length / 2, shore - 0.02 - length / 2 + 1e-9, length + 0.01
                ):
                    slots.append((float(x), float(y)))
        order = rng.permutation(len(slots))
        for i in order:
            if len(spots) >= n:
                break
            x, y = slots[i]
            if placer.free(x, y, width / 2, margin=0.002):
                placer.add(x, y, width / 2)
                spots.append((x, y, math.pi / 2 * _pick(rng, (-1, 1))))
        _finish_relation(lay, kind, "next_to", "dock")
    if not spots:  # also when the vessels are longer than the piers
        rel = rel if rel != "next_to" else _pick(rng, ("left", "right", "center", "top"))
        box = _clip_box(POS_BOXES[rel], (0, 0, 1, shore - 0.03))
        spots = _place_group(rng, placer, n, length / 2, ("box", box))
        _finish_relation(lay, kind, "position", rel)
    for x, y, a in spots:
        lay.add(_draw_vessel(kind, x, y, length, width, a, colour, deck))
    lay.group(kind, len(spots), cname)
    lay.group("dock", n_piers, "grey")

    land = (0.02, shore + 0.16, 0.98, 0.98)
    if rng.random() < 0.5:
        tname = _pick(rng, ("white", "grey"), (0.65, 0.35))
        tc = _jitter(rng, COLOURS[tname], 6)
        rt = rng.uniform(0.035, 0.06)
        m = _sample_count(rng, (0.15, 0.2, 0.25, 0.25, 0.15), (7, 10))
        got = _place_group(rng, placer, m, rt, ("box", land))
        for x, y, _ in got:
            lay.add(tank(x, y, rt, tc))
        lay.group("storage tank", len(got), tname)
    else:
        bname = _pick(rng, ("blue", "white", "grey", "red"))
        bc = _jitter(rng, COLOURS[bname], 8)
        m = int(rng.integers(1, 4))
        got = 0
        for _ in range(m):
            bw, bh = rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.12)
            p = placer.in_box(rng, land, bh / 2 + 0.01)
            if (
                p is not None
                and placer.free(p[0] - bw / 4, p[1], bh / 2)
                and placer.free(p[0] + bw / 4, p[1], bh / 2)
            ):
                placer.add(p[0] - bw / 4, p[1], bh / 2)
                placer.add(p[0] + bw / 4, p[1], bh / 2)
                lay.add(building(p[0], p[1], bw, bh, 0.0, bc, roof="ribs"))
                got += 1
        lay.group("building", got, bname)
    _transform(lay, int(rng.integers(8)))
    return lay


def _sea(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    wname, water = _water_colour(rng)
    lay.ground = wname
    lay.regions.append(Region("water", water, angle=rng.uniform(0, np.pi), period=rng.uniform(0.03, 0.06)))
    kinds = ["ship", "boat"]
    main = _pick(rng, kinds)
    n = _sample_count(rng, (0.3, 0.25, 0.2, 0.15, 0.1), (7, 10))
    rel = _pick(rng, POS_WORDS)
    moving = rng.random() < 0.7
    for kind, cnt, box in ((main, n, POS_BOXES[rel]), (kinds[1 - kinds.index(main)], 0, (0, 0, 1, 1))):
        if kind != main:
            if rng.random() < 0.35:
                cnt = _sample_count(rng, (0.4, 0.3, 0.2, 0.1, 0.0))
            else:
                continue
        cname, colour, deck, length, width = _vessels(rng, kind, cnt)
        a0 = rng.uniform(0, 2 * np.pi)
        spots = _place_group(rng, placer, cnt, length * 0.55, ("box", box))
        for x, y, a in spots:
            a = a0 + rng.normal(0, 0.3) if cnt > 3 else a
            if moving:
                lay.add(wake(x, y, length, a, water))
            lay.add(_draw_vessel(kind, x, y, length, width, a, colour, deck))
        lay.group(kind, len(spots), cname)
        if kind == main:
            _finish_relation(lay, kind, "position", rel)
    return lay


_FIELD_COLOURS: dict[str, RGB] = {
    "green": (92, 136, 64),
    "yellow": (204, 184, 100),
    "brown": (146, 110, 74),
    "light green": (140, 170, 88),
}


def _farmland(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    dom = _pick(rng, ("green", "yellow", "brown"), (0.45, 0.3, 0.25))
    lay.ground = dom
    lay.regions.append(Region("soil", _jitter(rng, (150, 126, 92), 8)))
    ncol, nrow = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    xs = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.15, 0.85, ncol - 1)]))
    track = _jitter(rng, (170, 150, 116), 6)
    for i in range(ncol):
        ys = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.15, 0.85, nrow - 1)]))
        for j in range(nrow):
            name = dom if rng.random() < 0.6 else _pick(rng, tuple(_FIELD_COLOURS))
            ang = _pick(rng, (0.0, np.pi / 2)) + rng.normal(0, 0.03)
            poly = _box(xs[i] + 0.006, ys[j] + 0.006, xs[i + 1] - 0.006, ys[j + 1] - 0.006)
            lay.regions.append(
                Region("field", _jitter(rng, _FIELD_COLOURS[name], 10), poly, ang, rng.uniform(0.018, 0.04))
            )
            if j > 0:
                lay.add(
                    [
                        Prim(
                            "line",
                            [(xs[i], ys[j]), (xs[i + 1], ys[j])],
                            track,
                            width=0.008,
                            layer=0,
                            shadow=False,
                        )
                    ]
                )
        if i > 0:
            lay.add([Prim("line", [(xs[i], 0), (xs[i], 1)], track, width=0.01, layer=0, shadow=False)])
    has_lin = rng.random() < 0.65
    has_b = rng.random() < 0.7 or not has_lin
    path = None
    if has_lin:
        lin = _pick(rng, ("road", "river"), (0.6, 0.4))
        orient = _pick(rng, ("horizontal", "diagonal"), (0.7, 0.3))
        path = _linear(rng, lay, placer, lin, orient, on="field")
    if has_b:
        bname = _pick(rng, ("red", "white", "grey", "blue"), (0.35, 0.3, 0.2, 0.15))
        n = _sample_count(rng, (0.35, 0.3, 0.2, 0.15, 0.0))
        along = path is not None and rng.random() < 0.6
        if along:
            assert path is not None
            how: tuple[str, Any] = ("path", (path, placer.paths[-1][1] + 0.012))
            _finish_relation(lay, "building", "along", lay.objects[-1]["kind"])
        else:
            rel = _pick(rng, POS_WORDS)
            how = ("box", POS_BOXES[rel])
            _finish_relation(lay, "building", "position", rel)
        bw = rng.uniform(0.06, 0.1)
        got = _place_group(rng, placer, n, bw * 0.6, how)
        for x, y, a in got:
            a = a if along else _pick(rng, (0.0, np.pi / 2))
            lay.add(building(x, y, bw, bw * 0.65, a, _jitter(rng, COLOURS[bname], 10)))
        g = lay.group("building", len(got), bname)
        lay.objects.insert(0, lay.objects.pop(lay.objects.index(g)))
        if not got:
            lay.relation = None
    if lay.relation is None and path is not None:
        lin_g = next(g for g in lay.objects if g["kind"] in ("road", "river"))
        lay.relation = {"subject": lin_g["kind"], "type": "through", "object": orient}
        lay.objects.insert(0, lay.objects.pop(lay.objects.index(lin_g)))
    _transform(lay, int(rng.integers(8)))
    return lay


def _forest(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    gname = _pick(rng, ("dark green", "green"), (0.6, 0.4))
    lay.ground = gname
    base = (42, 86, 46) if gname == "dark green" else (70, 116, 58)
    lay.regions.append(Region("forest", _jitter(rng, base, 8)))
    path = None
    if rng.random() < 0.55:
        lin = _pick(rng, ("road", "river"))
        orient = _pick(rng, ("horizontal", "diagonal"), (0.7, 0.3))
        path = _linear(rng, lay, placer, lin, orient, on="forest")
    if rng.random() < 0.45:
        bname = _pick(rng, ("white", "red", "grey", "brown"))
        n = _sample_count(rng, (0.35, 0.3, 0.2, 0.15, 0.0))
        if path is not None and rng.random() < 0.6:
            how: tuple[str, Any] = ("path", (path, placer.paths[-1][1] + 0.015))
            _finish_relation(lay, "building", "along", lay.objects[-1]["kind"])
        else:
            rel = _pick(rng, POS_WORDS)
            how = ("box", POS_BOXES[rel])
            _finish_relation(lay, "building", "position", rel)
        bw = rng.uniform(0.06, 0.09)
        got = _place_group(rng, placer, n, bw * 0.65, how)
        clearing = _jitter(rng, (128, 148, 88), 8)
        for x, y, _ in got:  # a small clearing around each house
            lay.add([Prim("circle", [(x, y)], clearing, radius=bw * 0.95, layer=0, shadow=False)])
        for x, y, a in got:
            lay.add(building(x, y, bw, bw * 0.65, a, _jitter(rng, COLOURS[bname], 10)))
        g = lay.group("building", len(got), bname)
        lay.objects.insert(0, lay.objects.pop(lay.objects.index(g)))
        if not got:
            lay.relation = None
    if lay.relation is None and path is not None:
        lin_g = next(g for g in lay.objects if g["kind"] in ("road", "river"))
        lay.relation = {"subject": lin_g["kind"], "type": "through", "object": orient}
        lay.objects.insert(0, lay.objects.pop(lay.objects.index(lin_g)))
    lay.group("tree", 12, gname)
    if lay.relation is None:
        lay.relation = {"subject": "tree", "type": "everywhere", "object": None}
    _transform(lay, int(rng.integers(8)))
    return lay


def _desert(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    sname = _pick(rng, ("yellow", "orange", "brown"), (0.5, 0.25, 0.25))
    lay.ground = sname
    base = {"yellow": (214, 186, 128), "orange": (206, 146, 92), "brown": (164, 128, 94)}[sname]
    lay.regions.append(
        Region("sand", _jitter(rng, base, 8), angle=rng.uniform(0, np.pi), period=rng.uniform(0.05, 0.12))
    )
    choice = _pick(rng, ("road", "building", "tree", "road+building", "tank"), (0.25, 0.25, 0.2, 0.2, 0.1))
    path = None
    if "road" in choice:
        path = _linear(
            rng, lay, placer, "road", _pick(rng, ("horizontal", "diagonal"), (0.7, 0.3)), on="sand"
        )
        lay.relation = {"subject": "road", "type": "through", "object": None}
    kinds = [k for k in ("building", "tree", "tank") if k in choice]
    for kind in kinds:
        if kind == "building":
            cname = _pick(rng, ("white", "grey", "brown"))
            n, size = _sample_count(rng, (0.35, 0.3, 0.2, 0.15, 0.0)), rng.uniform(0.06, 0.1)
        elif kind == "tree":
            cname = _pick(rng, ("green", "dark green"))
            n, size = _sample_count(rng, (0.0, 0.1, 0.2, 0.35, 0.35), (7, 14)), rng.uniform(0.015, 0.03)
        else:
            cname = _pick(rng, ("white", "grey"))
            n, size = _sample_count(rng, (0.3, 0.3, 0.2, 0.2, 0.0)), rng.uniform(0.04, 0.06)
        name = "storage tank" if kind == "tank" else kind
        if path is not None and rng.random() < 0.6:
            how: tuple[str, Any] = ("path", (path, placer.paths[-1][1] + 0.012))
            rel: tuple[str, str] = ("along", "road")
        else:
            word = _pick(rng, POS_WORDS)
            how, rel = ("box", POS_BOXES[word]), ("position", word)
        colour = _jitter(rng, COLOURS[cname], 8)
        got = _place_group(rng, placer, n, size * (0.6 if kind == "building" else 1.0), how)
        for x, y, a in got:
            if kind == "building":
                lay.add(building(x, y, size, size * 0.7, a, colour, roof="flat"))
            elif kind == "tree":
                lay.add(tree(x, y, size, _jitter(rng, colour, 10)))
            else:
                lay.add(tank(x, y, size, colour))
        lay.group(name, len(got), cname)
        if got:
            lay.relation = {"subject": name, "type": rel[0], "object": rel[1]}
            lay.objects.insert(0, lay.objects.pop())
    if lay.relation is not None and lay.relation["type"] == "through":
        lay.relation["object"] = "diagonal" if abs(path.pts[0][1] - path.pts[-1][1]) > 0.5 else "horizontal"  # type: ignore[union-attr]
    _transform(lay, int(rng.integers(8)))
    return lay


def _residential(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    lay.ground = _pick(rng, ("green", "beige"), (0.6, 0.4))
    lay.regions.append(
        Region("grass", _jitter(rng, (118, 146, 86) if lay.ground == "green" else (176, 168, 136), 8))
    )
    rcol = _jitter(rng, (112, 112, 116), 6)
    rw = rng.uniform(0.03, 0.045)
    roads: list[Path2] = []
    for k in range(int(rng.integers(1, 3))):
        y = rng.uniform(0.2, 0.45) + 0.4 * k
        roads.append(Path2([(-0.02, y), (1.02, y)]))
    for k in range(int(rng.integers(1, 3))):
        x = rng.uniform(0.2, 0.45) + 0.4 * k
        roads.append(Path2([(x, -0.02), (x, 1.02)]))
    for p in roads:
        lay.add(road(p, rw, rcol, None))
        placer.add_path(p, rw / 2)
    lay.group("road", len(roads), "grey")

    bname = _pick(rng, ("red", "grey", "white", "blue", "brown"), (0.35, 0.2, 0.2, 0.1, 0.15))
    bc = COLOURS[bname]
    n = _sample_count(rng, (0.0, 0.0, 0.0, 0.3, 0.7), (8, 24))
    hw, hh = rng.uniform(0.05, 0.08), rng.uniform(0.035, 0.05)
    along = rng.random() < 0.65
    if along:
        got = []
        for _ in range(n):
            p = roads[int(rng.integers(len(roads)))]
            q = placer.along(rng, p, rw / 2 + hh / 2 + 0.01, hh * 0.62, tries=40)
            if q is not None:
                got.append((q[0][0], q[0][1], q[1]))
        _finish_relation(lay, "building", "along", "road")
    else:
        word = _pick(rng, POS_WORDS)
        got = _place_group(rng, placer, n, hh * 0.7, ("box", POS_BOXES[word]))
        got = [(x, y, _pick(rng, (0.0, np.pi / 2))) for x, y, _ in got]
        _finish_relation(lay, "building", "position", word)
    for x, y, a in got:
        c = bc if rng.random() < 0.88 else COLOURS[_pick(rng, ("red", "grey", "white"))]
        lay.add(building(x, y, hw, hh, a, _jitter(rng, c, 10)))
    g = lay.group("building", len(got), bname)
    lay.objects.insert(0, lay.objects.pop(lay.objects.index(g)))
    if rng.random() < 0.6:
        tname = _pick(rng, ("green", "dark green"))
        m = _sample_count(rng, (0.0, 0.1, 0.1, 0.3, 0.5), (7, 16))
        spots = _place_group(rng, placer, m, rng.uniform(0.018, 0.03), ("box", (0, 0, 1, 1)))
        for x, y, _ in spots:
            lay.add(tree(x, y, rng.uniform(0.016, 0.03), _jitter(rng, COLOURS[tname], 10)))
        lay.group("tree", len(spots), tname)
    if rng.random() < 0.35:
        m = _sample_count(rng, (0.3, 0.3, 0.2, 0.2, 0.0))
        cname = _pick(rng, ("white", "red", "blue", "black"))
        placed = 0
        for _ in range(m):
            p = roads[int(rng.integers(len(roads)))]
            (x, y), (tx, ty) = p.at(rng.uniform(0.05, 0.95))
            side = _pick(rng, (-1, 1)) * rw * 0.25
            lay.add(
                car(x - ty * side, y + tx * side, 0.04, math.atan2(ty, tx), _jitter(rng, COLOURS[cname], 6))
            )
            placed += 1
        lay.group("car", placed, cname)
    _transform(lay, int(rng.integers(8)))
    return lay


def _industrial(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    lay.ground = "grey"
    lay.regions.append(Region("concrete", _jitter(rng, _pick(rng, ((168, 166, 160), (146, 142, 132))), 8)))
    rpath = Path2([(-0.02, rng.uniform(0.4, 0.6)), (1.02, rng.uniform(0.4, 0.6))])
    lay.add(road(rpath, 0.04, _jitter(rng, (96, 96, 98), 5), (220, 220, 210)))
    placer.add_path(rpath, 0.02)
    main = _pick(rng, ("storage tank", "building"))
    second = rng.random() < 0.75
    next_to = second and rng.random() < 0.5
    word = _pick(rng, POS_WORDS)
    bname = _pick(rng, ("white", "blue", "grey", "red"), (0.35, 0.3, 0.25, 0.1))
    tname = _pick(rng, ("white", "grey", "blue"), (0.6, 0.3, 0.1))
    nb = int(rng.integers(1, 4)) if main == "building" else int(rng.integers(1, 3))
    nt = _sample_count(rng, (0.15, 0.15, 0.2, 0.25, 0.25), (7, 12))
    bc, tc = _jitter(rng, COLOURS[bname], 8), _jitter(rng, COLOURS[tname], 6)
    rt = rng.uniform(0.045, 0.075) if nt <= 3 else rng.uniform(0.03, 0.05)

    def place_buildings(box: Sequence[float]) -> list[Point]:
        centres: list[Point] = []
        for _ in range(nb):
            bw, bh = rng.uniform(0.18, 0.34), rng.uniform(0.1, 0.18)
            p = placer.in_box(rng, box, bh / 2 + 0.005)
            if p is None:
                continue
            placer.circles.pop()
            if all(placer.free(p[0] + dx, p[1], bh / 2) for dx in (-bw / 3, 0.0, bw / 3)):
                for dx in (-bw / 3, 0.0, bw / 3):
                    placer.add(p[0] + dx, p[1], bh / 2)
                lay.add(building(p[0], p[1], bw, bh, 0.0, bc, roof=_pick(rng, ("ribs", "flat"))))
                centres.append(p)
        return centres

    def place_tanks(box: Sequence[float]) -> int:
        got = _place_group(rng, placer, nt, rt, ("box", _clip_box(box, (0, 0, 1, 1))))
        for x, y, _ in got:
            lay.add(tank(x, y, rt, tc))
        return len(got)

    full = (0.0, 0.0, 1.0, 1.0)
    if next_to:
        centres = place_buildings(full)
        if centres:
            bx, by = centres[0]
            nt_got = place_tanks((bx - 0.32, by - 0.3, bx + 0.32, by + 0.3))
        else:
            nt_got = place_tanks(full)
        counts = {"building": len(centres), "storage tank": nt_got}
        lay.relation = (
            {"subject": "storage tank", "type": "next_to", "object": "building"} if centres else None
        )
    else:
        counts = {}
        for kind in [main] + ([("building" if main == "storage tank" else "storage tank")] if second else []):
            box = POS_BOXES[word] if kind == main else full
            counts[kind] = len(place_buildings(box)) if kind == "building" else place_tanks(box)
        lay.relation = {"subject": main, "type": "position", "object": word}
    for kind in [main] + [k for k in counts if k != main]:
        lay.group(kind, counts[kind], bname if kind == "building" else tname)
    if lay.relation is None or counts.get(lay.relation["subject"], 0) == 0:
        kind = max(counts, key=lambda k: (counts[k], k))
        lay.relation = {"subject": kind, "type": "position", "object": "center"} if counts[kind] else None
    if rng.random() < 0.35:
        m = _sample_count(rng, (0.3, 0.3, 0.2, 0.2, 0.0))
        cname = _pick(rng, ("white", "red", "blue"))
        for _ in range(m):
            (x, y), _t = rpath.at(rng.uniform(0.05, 0.95))
            lay.add(car(x, y + _pick(rng, (-1, 1)) * 0.009, 0.045, 0.0, _jitter(rng, COLOURS[cname], 6)))
        lay.group("car", m, cname)
    lay.group("road", 1, "grey")
    _transform(lay, int(rng.integers(8)))
    return lay


def _parking(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    lay.ground = "grey"
    lay.regions.append(Region("asphalt", _jitter(rng, _pick(rng, ((78, 78, 82), (104, 104, 106))), 6)))
    has_b = rng.random() < 0.55
    y_end = 0.97
    if has_b:
        bname = _pick(rng, ("white", "grey", "blue", "red"), (0.35, 0.3, 0.2, 0.15))
        bh = rng.uniform(0.12, 0.18)
        lay.regions.append(
            Region("concrete", _jitter(rng, (170, 168, 160), 6), _box(-0.01, 1 - bh - 0.04, 1.01, 1.01))
        )
        bw = rng.uniform(0.45, 0.85)
        bx = rng.uniform(bw / 2, 1 - bw / 2)
        lay.add(building(bx, 1 - bh / 2 - 0.01, bw, bh, 0.0, _jitter(rng, COLOURS[bname], 8), roof="flat"))
        y_end = 1 - bh - 0.06
    line = _jitter(rng, (196, 196, 190), 8)
    clen = rng.uniform(0.07, 0.085)
    bay = clen * 0.6
    depth = clen * 1.3
    rows = []
    y = 0.04
    while y + depth <= y_end:
        rows.append(y)
        y += depth + (depth + 0.03 if len(rows) % 2 == 0 else 0.0)
    x0 = rng.uniform(0.02, 0.06)
    xs = np.arange(x0, 0.98 - bay, bay)
    slots = []
    for i, y in enumerate(rows):
        face = 1 if i % 2 == 0 else -1
        for x in xs:
            lay.add([Prim("line", [(x, y), (x, y + depth)], line, width=0.004, layer=0, shadow=False)])
            slots.append((float(x + bay / 2), float(y + depth / 2), face))
        lay.add(
            [
                Prim(
                    "line",
                    [(xs[-1] + bay, y), (xs[-1] + bay, y + depth)],
                    line,
                    width=0.004,
                    layer=0,
                    shadow=False,
                )
            ]
        )
    mixed = rng.random() < 0.35
    cname = "mixed" if mixed else _pick(rng, ("white", "black", "red", "blue", "grey"))
    n = _sample_count(rng, (0.1, 0.1, 0.15, 0.25, 0.4), (7, 30))
    opts = list(POS_WORDS) + (["next_to", "next_to"] if has_b else [])
    rel = _pick(rng, opts)
    if rel == "next_to":
        last = max(s[1] for s in slots)
        cand = [s for s in slots if s[1] >= last - depth * 2.5]
        _finish_relation(lay, "car", "next_to", "building")
    else:

        def inside(word: str) -> list[tuple[float, float, int]]:
            x0b, y0b, x1b, y1b = POS_BOXES[word]
            return [s for s in slots if x0b <= s[0] <= x1b and y0b <= s[1] <= y1b]

        cand = inside(rel)
        if not cand:  # e.g. a building fills the bottom: pick a part of the lot that has bays
            rel = _pick(rng, [w for w in POS_WORDS if inside(w)])
            cand = inside(rel)
        _finish_relation(lay, "car", "position", rel)
    take = np.sort(rng.permutation(len(cand))[: min(n, len(cand))])
    for i in take:
        x, y, face = cand[i]
        c = COLOURS[_pick(rng, _MIXED)] if mixed else COLOURS[cname]
        lay.add(
            car(
                x,
                y + rng.normal(0, 0.003),
                clen,
                face * math.pi / 2 + rng.normal(0, 0.04),
                _jitter(rng, c, 8),
            )
        )
    lay.group("car", len(take), cname)
    if has_b:
        lay.group("building", 1, bname)
    if rng.random() < 0.4 and rows:
        tname = _pick(rng, ("green", "dark green"))
        m = int(rng.integers(3, 9))
        r = rng.uniform(0.02, 0.03)
        xs_t = np.linspace(0.05, 0.95, m)
        lay.regions.append(Region("grass", _jitter(rng, (110, 140, 80), 6), _box(-0.01, -0.01, 1.01, 0.035)))
        for x in xs_t:
            lay.add(tree(float(x), 0.02, r, _jitter(rng, COLOURS[tname], 10)))
        lay.group("tree", m, tname)
    _transform(lay, int(rng.integers(8)))
    return lay


def _meadow(rng: np.random.Generator) -> Layout:
    lay = _new_layout(rng)
    placer = Placer()
    gname = _pick(rng, ("green", "light green", "yellow"), (0.5, 0.3, 0.2))
    lay.ground = gname
    base = {"green": (108, 150, 74), "light green": (146, 176, 96), "yellow": (176, 170, 96)}[gname]
    lay.regions.append(Region("grass", _jitter(rng, base, 8)))
    path = None
    if rng.random() < 0.5:
        path = _linear(
            rng,
            lay,
            placer,
            _pick(rng, ("river", "road"), (0.65, 0.35)),
            _pick(rng, ("horizontal", "diagonal"), (0.6, 0.4)),
            on="grass",
        )
    tname = _pick(rng, ("green", "dark green"), (0.5, 0.5))
    n = _sample_count(rng, (0.2, 0.2, 0.2, 0.2, 0.2), (7, 16))
    r = rng.uniform(0.03, 0.05) if n <= 3 else rng.uniform(0.02, 0.035)
    if path is not None and rng.random() < 0.6:
        how: tuple[str, Any] = ("path", (path, placer.paths[-1][1] + 0.01))
        _finish_relation(lay, "tree", "along", lay.objects[-1]["kind"])
    else:
        word = _pick(rng, POS_WORDS)
        how = ("box", POS_BOXES[word])
        _finish_relation(lay, "tree", "position", word)
    got = _place_group(rng, placer, n, r, how)
    for x, y, _ in got:
        lay.add(tree(x, y, r * rng.uniform(0.85, 1.1), _jitter(rng, COLOURS[tname], 10)))
    g = lay.group("tree", len(got), tname)
    lay.objects.insert(0, lay.objects.pop(lay.objects.index(g)))
    _transform(lay, int(rng.integers(8)))
    return lay


BUILDERS: dict[str, Callable[[np.random.Generator], Layout]] = {
    "airport": _airport,
    "harbor": _harbor,
    "sea": _sea,
    "farmland": _farmland,
    "forest": _forest,
    "desert": _desert,
    "residential": _residential,
    "industrial": _industrial,
    "parking": _parking,
    "meadow": _meadow,
}


# --------------------------------------------------------------------------------------------------
# rendering


class _Window:
    """A pixel rectangle (x0, y0, w, h) of a size x size canvas on which a texture is computed."""

    def __init__(self, size: int, x0: int = 0, y0: int = 0, w: int | None = None, h: int | None = None):
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
    if p.kind == "poly":
        draw.polygon([(x + dx, y + dy) for x, y in _px(p.pts, s)], fill=fill)
    elif p.kind == "circle":
        (cx, cy), r = p.pts[0], p.radius * s
        cx, cy = cx * s + dx, cy * s + dy
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        w = max(1, round(p.width * s))
        draw.line([(x + dx, y + dy) for x, y in _px(p.pts, s)], fill=fill, width=w, joint="curve")


def _render(lay: Layout, image_size: int, rng: np.random.Generator) -> Image.Image:
    ss = 2 if image_size <= 160 else 1  # supersampling for smooth edges at small sizes
    size = image_size * ss
    arr = np.zeros((size, size, 3), np.float32)
    for reg in lay.regions:
        if reg.poly is None:
            arr[:] = _texture(reg, _Window(size), rng)
            continue
        pts = _px(reg.poly, size)
        x0 = max(0, math.floor(min(p[0] for p in pts)))
        y0 = max(0, math.floor(min(p[1] for p in pts)))
        x1 = min(size, math.ceil(max(p[0] for p in pts)) + 1)
        y1 = min(size, math.ceil(max(p[1] for p in pts)) + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        m = Image.new("L", (x1 - x0, y1 - y0), 0)
        ImageDraw.Draw(m).polygon([(x - x0, y - y0) for x, y in pts], fill=255)
        mask = np.asarray(m, np.float32)[..., None] / 255.0
        tex = _texture(reg, _Window(size, x0, y0, x1 - x0, y1 - y0), rng)
        sub = arr[y0:y1, x0:x1]
        arr[y0:y1, x0:x1] = sub * (1 - mask) + tex * mask
    arr *= 1.0 + rng.normal(0.0, 0.02, (size, size, 1)).astype(np.float32)  # sensor grain
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for p in lay.prims:
        if p.layer == 0:
            _draw(draw, p, size, p.fill)
    # shadows of raised objects, cast in the sun direction, then the objects themselves
    sh = Image.new("L", (size, size), 0)
    sdraw = ImageDraw.Draw(sh)
    dx, dy = lay.sun[0] * size, lay.sun[1] * size
    for p in lay.prims:
        if p.layer == 1 and p.shadow:
            _draw(sdraw, p, size, 255, dx, dy)
    sh = sh.filter(ImageFilter.BoxBlur(max(1, size // 200)))
    a = np.asarray(img, np.float32) * (1.0 - 0.45 * np.asarray(sh, np.float32)[..., None] / 255.0)
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for p in lay.prims:
        if p.layer == 1:
            _draw(draw, p, size, p.fill)
    if ss > 1:
        img = img.reduce(ss)
    if lay.light != 1.0:
        a = np.asarray(img, np.float32) * lay.light
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")
    return img


# --------------------------------------------------------------------------------------------------
# captions: a small grammar over the recorded scene content

CLASS_NOUNS: dict[str, tuple[str, ...]] = {
    "airport": ("airport", "airport", "airfield"),
    "harbor": ("harbor", "harbor", "port", "harbour"),
    "sea": ("sea", "sea", "ocean", "sea area"),
    "farmland": ("farmland", "farmland", "farm land", "farmland area"),
    "forest": ("forest", "forest", "woodland"),
    "desert": ("desert", "desert", "desert area"),
    "residential": ("residential area", "residential area", "residential district", "neighborhood"),
    "industrial": ("industrial area", "industrial area", "factory area", "industrial zone"),
    "parking": ("parking lot", "parking lot", "car park", "parking area"),
    "meadow": ("meadow", "meadow", "grassland", "lawn"),
}

_NOUNS: dict[str, tuple[tuple[str, str], ...]] = {
    "plane": (("plane", "planes"), ("plane", "planes"), ("airplane", "airplanes"), ("aircraft", "aircraft")),
    "ship": (("ship", "ships"), ("ship", "ships"), ("vessel", "vessels"), ("cargo ship", "cargo ships")),
    "boat": (("boat", "boats"), ("boat", "boats"), ("motorboat", "motorboats"), ("yacht", "yachts")),
    "storage tank": (
        ("storage tank", "storage tanks"),
        ("storage tank", "storage tanks"),
        ("oil tank", "oil tanks"),
        ("tank", "tanks"),
    ),
    "building": (("building", "buildings"), ("building", "buildings"), ("house", "houses")),
    "car": (("car", "cars"), ("car", "cars"), ("vehicle", "vehicles")),
    "tree": (("tree", "trees"),),
    "road": (("road", "roads"), ("road", "roads"), ("street", "streets")),
    "river": (("river", "rivers"),),
    "runway": (("runway", "runways"),),
    "dock": (("dock", "docks"), ("pier", "piers"), ("wharf", "wharves")),
}
_CLASS_NOUNS_OVERRIDE: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("residential", "building"): (("house", "houses"), ("building", "buildings"), ("house", "houses")),
    ("industrial", "building"): (
        ("building", "buildings"),
        ("factory building", "factory buildings"),
        ("warehouse", "warehouses"),
    ),
    ("harbor", "building"): (("building", "buildings"), ("warehouse", "warehouses")),
    ("airport", "building"): (
        ("building", "buildings"),
        ("terminal building", "terminal buildings"),
        ("terminal", "terminals"),
    ),
    ("desert", "tree"): (("plant", "plants"), ("shrub", "shrubs"), ("tree", "trees")),
}

_QTY: dict[str, tuple[str, ...]] = {
    "one": ("a", "a", "one"),
    "two": ("two",),
    "three": ("three",),
    "several": ("several", "some", "a few"),
    "many": ("many", "many", "lots of", "a lot of", "a large number of", "numerous"),
}

_VERBS: dict[str, tuple[str, ...]] = {
    "plane": ("parked", "parked", "stopped"),
    "ship": ("docked", "moored", "anchored"),
    "boat": ("moored", "docked", "anchored"),
    "storage tank": ("located", "built", "standing"),
    "building": ("located", "built", "standing"),
    "car": ("parked", "parked"),
    "tree": ("planted", "growing", "standing"),
}
_SAIL = ("sailing", "floating", "sailing")

_POS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "in the left part of the image", "at the left"),
    "right": ("on the right", "on the right side", "in the right part of the image", "at the right"),
    "top": ("at the top", "in the upper part", "at the top of the image", "on the top side"),
    "bottom": ("at the bottom", "in the lower part", "at the bottom of the image", "on the bottom side"),
    "center": (
        "in the center",
        "in the middle",
        "in the middle of the image",
        "in the center of the picture",
    ),
}
_ORIENT: dict[str, tuple[str, ...]] = {
    "horizontal": ("from left to right", "horizontally across the image"),
    "vertical": ("from top to bottom", "vertically across the image"),
    "diagonal": ("diagonally across the image", "from one corner to another"),
}
_THROUGH = ("goes through", "passes through", "runs through", "crosses")
_NEAR = ("next to", "beside", "near", "close to")
_ALONG = ("along", "along", "beside", "by")
_EVERYWHERE = ("everywhere", "all over the image", "covering the whole area")
_BIG = ("large", "big", "", "")


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _noun(kind: str, cls: str, plural: bool, rng: np.random.Generator) -> str:
    opts = _CLASS_NOUNS_OVERRIDE.get((cls, kind), _NOUNS.get(kind, ((kind, kind + "s"),)))
    return _pick(rng, opts)[1 if plural else 0]


def _np(g: dict[str, Any], cls: str, rng: np.random.Generator, p_colour: float = 0.85) -> str:
    """'three white planes', 'a red ship', 'many cars of different colors'."""
    plural = g["count"] != 1
    noun = _noun(g["kind"], cls, plural, rng)
    colour = g["colour"]
    words: list[str] = []
    qty = _pick(rng, _QTY[g["count_word"]])
    suffix = ""
    if colour == "mixed":
        if rng.random() < 0.5:
            suffix = _pick(rng, (" of different colors", " of various colors", " of different colours"))
        else:
            words.append("colorful")
    elif colour and rng.random() < p_colour:
        words.append(colour)
    words.append(noun)
    if qty == "a":
        qty = _article(words[0])
    return f"{qty} {' '.join(words)}{suffix}"


def _the(kind: str, cls: str, count: int, rng: np.random.Generator) -> str:
    return "the " + _noun(kind, cls, count > 1, rng)


def _class_np(cls: str, rng: np.random.Generator, article: str = "a") -> str:
    noun = _pick(rng, CLASS_NOUNS[cls])
    if article == "the":
        return "the " + noun
    return f"{_article(noun)} {noun}"


class _Facts:
    """What the captions of one scene can say; every call draws fresh paraphrases."""

    def __init__(self, scene: dict[str, Any], cls: str, rng: np.random.Generator):
        self.cls, self.rng = cls, rng
        self.objects = scene["objects"]
        self.rel = scene["relation"]
        self.ground = scene.get("ground", "")
        by_kind = {g["kind"]: g for g in self.objects}
        self.subj = by_kind.get(self.rel["subject"]) if self.rel else None
        if self.subj is None and self.objects:
            self.subj = self.objects[0]
        self.others = [g for g in self.objects if g is not self.subj]
        self.anchor = (
            by_kind.get(self.rel["object"]) if self.rel and self.rel["type"] in ("next_to", "along") else None
        )
        self.free_others = [g for g in self.others if g is not self.anchor]

    def be(self, g: dict[str, Any]) -> str:
        return "is" if g["count"] == 1 else "are"

    def cnp(self, article: str = "a") -> str:
        return _class_np(self.cls, self.rng, article)

    def subject(self) -> str:
        assert self.subj is not None
        return _np(self.subj, self.cls, self.rng)

    def locative(self) -> str:
        """Where the subject is: 'on the left', 'next to the building', 'along the river'."""
        r, rng = self.rel, self.rng
        if r is None:
            return ""
        if r["type"] == "position":
            return _pick(rng, _POS[r["object"]])
        if r["type"] in ("next_to", "along"):
            cnt = self.anchor["count"] if self.anchor else 1
            return f"{_pick(rng, _NEAR if r['type'] == 'next_to' else _ALONG)} {_the(r['object'], self.cls, cnt, rng)}"
        if r["type"] == "through":
            if r["object"] in _ORIENT and rng.random() < 0.5:
                return _pick(rng, _ORIENT[r["object"]])
            return "through " + self.cnp("the")
        return _pick(rng, _EVERYWHERE)

    def predicate(self, mention_class: bool = True) -> str:
        """'are parked on the left', 'goes through the forest', 'cover the whole area'."""
        assert self.subj is not None
        rng, kind, r = self.rng, self.subj["kind"], self.rel
        be = self.be(self.subj)
        if r is None:
            return (
                f"{be} in " + self.cnp() if mention_class else f"{be} {_pick(rng, ('here', 'in the image'))}"
            )
        if r["type"] == "through":
            verb = _pick(rng, _THROUGH)
            if r["object"] in _ORIENT and (rng.random() < 0.4 or not mention_class):
                return f"{_pick(rng, ('runs', 'goes', 'extends'))} {_pick(rng, _ORIENT[r['object']])}"
            return f"{verb} {self.cnp('the')}"
        if r["type"] == "everywhere":
            cover = f"cover {self.cnp('the')}" if mention_class else f"{be} growing densely"
            return _pick(rng, (f"{be} everywhere", cover, f"{be} all over the image"))
        if kind in ("ship", "boat") and self.cls == "sea":
            verbs: tuple[str, ...] = _SAIL
        elif kind in ("ship", "boat") and r["type"] == "position":
            verbs = ("moored", "anchored", "floating")
        else:
            verbs = _VERBS.get(kind, ("located",))
        verb = _pick(rng, verbs) if rng.random() < 0.75 else ""
        return " ".join(w for w in (be, verb, self.locative()) if w)

    def other(self, free: bool = False) -> str:
        """Another object group; with free=True not the one the relation refers to."""
        pool = self.free_others if free else self.others
        return _np(pool[int(self.rng.integers(len(pool)))], self.cls, self.rng)

    def short(self) -> str:
        rng = self.rng
        noun = _pick(rng, CLASS_NOUNS[self.cls])
        adj = self.ground if self.ground and rng.random() < 0.5 else _pick(rng, _BIG)
        if self.cls in ("harbor", "airport", "parking", "industrial", "residential") and adj == self.ground:
            adj = _pick(rng, _BIG)
        phrase = " ".join(w for w in (adj, noun) if w)
        return _pick(rng, ("", "this is ", "it is ", "here is ")) + f"{_article(phrase)} {phrase}"


def _templates(f: _Facts) -> list[Callable[[], str]]:
    out: list[Callable[[], str]] = []
    if f.subj is None:
        return [f.short]
    where = f.rel is not None and f.rel["type"] in ("position", "next_to", "along")
    out.append(
        lambda: f"{f.subject()} {f.predicate()} in {f.cnp()}" if where else f"{f.subject()} {f.predicate()}"
    )
    out.append(lambda: f"{f.cnp()} with {f.subject()} {f.locative()}".rstrip())
    out.append(lambda: f"{f.subject()} {f.predicate()}")
    out.append(lambda: f"{f.cnp()} where {f.subject()} {f.predicate(mention_class=False)}")
    if where:
        out.append(lambda: f"there {f.be(f.subj)} {f.subject()} {f.locative()} in {f.cnp('the')}")  # type: ignore[arg-type]
        out.append(lambda: f"{f.locative()} , there {f.be(f.subj)} {f.subject()}")  # type: ignore[arg-type]
        out.append(
            lambda: f"we can see {f.subject()} {f.locative()} in this {_pick(f.rng, CLASS_NOUNS[f.cls])}"
        )
    if f.others:
        out.append(lambda: f"{f.subject()} and {f.other()} are in {f.cnp()}")
        out.append(lambda: f"{f.cnp()} with {f.subject()} and {f.other()}")
        if where and f.free_others:
            out.append(lambda: f"{f.other(free=True)} and {f.subject()} {f.locative()}")
    out.append(f.short)
    return out


def _mess(raw: str, rng: np.random.Generator) -> str:
    """Occasional realistic noise: capitals, double spaces, stray punctuation."""
    u = rng.random(4)
    if u[0] < 0.08:
        raw = raw[:1].upper() + raw[1:]
    if u[1] < 0.06:
        spaces = [i for i, ch in enumerate(raw) if ch == " "]
        if spaces:
            i = spaces[int(rng.integers(len(spaces)))]
            raw = raw[:i] + " " + raw[i:]
    end = " ."
    if u[2] < 0.1:
        end = _pick(rng, (".", "", " . ", " ..", " , .", " .."))
    if u[3] < 0.03:
        raw = raw.upper() if rng.random() < 0.3 else raw.replace(" ,", ",")
    return raw + end


_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(raw: str) -> list[str]:
    return _TOKEN.findall(raw.lower())


def _captions(scene: dict[str, Any], cls: str, rng: np.random.Generator, k: int) -> list[str]:
    f = _Facts(scene, cls, rng)
    temps = _templates(f)
    short = temps[-1]
    order: list[Callable[[], str]] = []
    while len(order) < k:
        perm = rng.permutation(len(temps) - 1)
        order += [temps[int(i)] for i in perm]
    order = order[:k]
    if k >= 3 and rng.random() < 0.5:  # a class-only caption in about half of the images
        order[int(rng.integers(k))] = short
    caps = [re.sub(r"\s+", " ", t()).strip() for t in order]
    if k >= 2 and rng.random() < 0.25:  # duplicated sentences are common in the real sets
        i, j = rng.choice(k, 2, replace=False)
        caps[int(j)] = caps[int(i)]
    return [_mess(c, rng) for c in caps]


# --------------------------------------------------------------------------------------------------
# splits and the generator


def _assign_splits(classes: Sequence[int], fractions: Sequence[float], rng: np.random.Generator) -> list[str]:
    """Stratified by class: within each class a random order, then a global cut by fractional rank."""
    classes = np.asarray(classes)
    n = len(classes)
    n_val = round(n * fractions[1])
    n_test = round(n * fractions[2])
    n_train = n - n_val - n_test
    q = np.zeros(n)
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        q[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + 0.5) / len(idx)
    order = np.lexsort((np.arange(n), classes, q))
    out = [""] * n
    for pos, i in enumerate(order):
        out[i] = "train" if pos < n_train else "val" if pos < n_train + n_val else "test"
    return out


def _check_args(
    n_images: int, image_size: int, seed: int, captions_per_image: int, fr: Sequence[float]
) -> None:
    def bad(msg: str) -> UserError:
        return UserError(f"synthetic dataset: {msg}")

    if int(n_images) != n_images or n_images < 1:
        raise bad(f"n_images must be a positive integer, got {n_images!r}")
    if int(image_size) != image_size or not 16 <= image_size <= 4096:
        raise bad(f"image_size must be an integer in 16..4096, got {image_size!r}")
    if int(seed) != seed or seed < 0:
        raise bad(f"seed must be a non-negative integer, got {seed!r}")
    if int(captions_per_image) != captions_per_image or captions_per_image < 1:
        raise bad(f"captions_per_image must be a positive integer, got {captions_per_image!r}")
    if len(fr) != 3 or any(x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise bad(f"split_fractions must be three non-negative numbers summing to 1, got {tuple(fr)!r}")


def _image_rngs(seed: int, class_index: int, n: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(SYNTHETIC_VERSION, class_index, n))
    return [np.random.Generator(np.random.PCG64(s)) for s in ss.spawn(3)]


def make_scene(
    cls: str, n: int, seed: int = 0, image_size: int = 64, captions_per_image: int = 5
) -> tuple[Image.Image, dict[str, Any], list[str]]:
    """Image, recorded scene content and captions of image `<cls>_<n>` (n is 1-based)."""
    ci = CLASSES.index(cls)
    r_scene, r_tex, r_cap = _image_rngs(seed, ci, n)
    lay = BUILDERS[cls](r_scene)
    scene = lay.scene()
    img = _render(lay, image_size, r_tex)
    return img, scene, _captions(scene, cls, r_cap, captions_per_image)


def generate_synthetic(
    out_dir: Path,
    n_images: int = 300,
    image_size: int = 64,
    seed: int = 0,
    captions_per_image: int = 5,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Path:
    """Write a synthetic dataset to `out_dir` (dataset.json + images/); returns the JSON path.

    Classes are balanced (image k has class CLASSES[k % 10]); splits are stratified by class.
    The folder is built next to `out_dir` and renamed into place at the end, so `out_dir` either
    does not exist or is complete. Refuses (UserError) an `out_dir` that exists and is not empty.
    """
    _check_args(n_images, image_size, seed, captions_per_image, split_fractions)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not empty; choose a new folder or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        k_cls = len(CLASSES)
        cls_idx = [k % k_cls for k in range(n_images)]
        split_rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(SYNTHETIC_VERSION, 999)))
        )
        splits = _assign_splits(cls_idx, split_fractions, split_rng)
        images, sentid = [], 0
        for k in range(n_images):
            cls, n = CLASSES[cls_idx[k]], k // k_cls + 1
            img, scene, caps = make_scene(cls, n, seed, image_size, captions_per_image)
            fname = f"{cls}_{n}.png"
            img.save(tmp / "images" / fname, format="PNG", compress_level=3)
            sents = [
                {"raw": c, "tokens": tokenize(c), "imgid": k, "sentid": sentid + j}
                for j, c in enumerate(caps)
            ]
            images.append(
                {
                    "filename": fname,
                    "imgid": k,
                    "split": splits[k],
                    "class": cls,
                    "sentids": [s["sentid"] for s in sents],
                    "sentences": sents,
                    "scene": scene,
                }
            )
            sentid += len(caps)
        params = {
            "n_images": n_images,
            "image_size": image_size,
            "seed": seed,
            "captions_per_image": captions_per_image,
            "split_fractions": [float(x) for x in split_fractions],
            "version": SYNTHETIC_VERSION,
            "classes": list(CLASSES),
        }
        write_json(tmp / "dataset.json", {"images": images, "dataset": "synthetic", "params": params})
        try:
            os.rename(tmp, out_dir)  # replaces an empty folder on POSIX
        except OSError as e:
            raise UserError(
                f"{out_dir}: could not move the generated dataset into place ({e.strerror})"
            ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "dataset.json"
