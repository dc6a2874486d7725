"""A scene before drawing: ground regions, primitives, and the content its captions describe.

Builders (scenes_*.py) fill a Layout; render.py draws it; captions.py reads `Layout.scene()`.
The dihedral transform lets one canonical arrangement appear in 8 orientations, with the words
of its relation ("left", "horizontal") turned along.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import Point
from .palette import RGB, count_word, pick


@dataclass
class Region:
    """A textured ground area."""

    tex: str  # grass | forest | sand | water | concrete | asphalt | field | soil
    colour: RGB
    poly: list[Point] | None = None  # None: the whole image
    angle: float = 0.0  # stripes / dunes direction (radians)
    period: float = 0.03  # stripes / dunes period (normalised)


@dataclass
class Prim:
    """One filled shape: a polygon, a circle (centre in pts[0]) or a wide polyline."""

    kind: str  # poly | circle | line
    pts: list[Point]
    fill: RGB
    width: float = 0.0  # line width (normalised)
    radius: float = 0.0  # circle radius (normalised)
    layer: int = 1  # 0: flat on the ground (no shadow), 1: raised object
    shadow: bool = True


@dataclass
class Layout:
    """What a builder produced; `objects` are the recorded groups, the first one is the subject."""

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
        """Record n objects of one kind and colour (n may be 0: then the scene leaves it out)."""
        g = {"kind": kind, "count": int(n), "count_word": count_word(n), "colour": colour}
        self.objects.append(g)
        return g

    def to_front(self, g: dict[str, Any]) -> None:
        """Make group `g` the first one, the one captions talk about first."""
        self.objects.insert(0, self.objects.pop(self.objects.index(g)))

    def lead(self, kind: str, n: int, colour: str) -> dict[str, Any]:
        """`group`, put first."""
        g = self.group(kind, n, colour)
        self.to_front(g)
        return g

    def relate(self, subject: str, rtype: str, obj: str | None) -> None:
        """Where the subject is: ('position', 'left'), ('along', 'road'), ('through', 'diagonal'), ..."""
        self.relation = {"subject": subject, "type": rtype, "object": obj}

    def scene(self) -> dict[str, Any]:
        """The recorded content (written to dataset.json and read by the caption grammar)."""
        objs = [g for g in self.objects if g["count"] > 0]
        rel = self.relation
        if rel is not None and not any(g["kind"] == rel["subject"] for g in objs):
            rel = None  # the subject could not be placed: say nothing about where it is
        return {"objects": objs, "relation": rel, "ground": self.ground}


def new_layout(rng: np.random.Generator) -> Layout:
    """An empty layout with a random sun direction (shadows) and overall light level."""
    lay = Layout()
    s = rng.uniform(0.007, 0.012)
    lay.sun = (s * pick(rng, (-1, 1)), s * pick(rng, (-1, 1)))
    lay.light = float(rng.uniform(0.92, 1.08))
    return lay


# dihedral transforms (code bits: 1 mirror x, 2 mirror y, 4 swap axes first) -------------------


def _tf_point(p: Point, code: int) -> Point:
    x, y = (p[1], p[0]) if code & 4 else p
    return (1 - x if code & 1 else x, 1 - y if code & 2 else y)


def _tf_vec(v: Point, code: int) -> Point:
    x, y = (v[1], v[0]) if code & 4 else v
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


def transform(lay: Layout, code: int) -> None:
    """Apply dihedral transform `code` (0..7) in place: regions, primitives, sun, relation word."""
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
