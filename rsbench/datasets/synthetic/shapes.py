"""Object shapes seen from above, as primitives: planes, vessels, tanks, buildings, cars, trees,
roads and rivers. Pure geometry: no random draws here (builders pass sizes and colours in)."""

from __future__ import annotations

from collections.abc import Sequence

from .geometry import Path2, Point, box, rect, rot
from .layout import Prim
from .palette import RGB, shade

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
WHITE_DECK: RGB = (236, 236, 232)


def flat_line(pts: Sequence[Point], colour: RGB, width: float) -> Prim:
    """A line painted on the ground (markings, tracks, roads): no shadow."""
    return Prim("line", list(pts), colour, width=width, layer=0, shadow=False)


def plane(cx: float, cy: float, length: float, ang: float, colour: RGB) -> list[Prim]:
    body = rot([(x * length, y * length) for x, y in _PLANE], cx, cy, ang)
    stripe = rot(
        [(x * length, y * length * 0.35) for x, y in _PLANE_HALF[:3]] + [(0.1 * length, 0)], cx, cy, ang
    )
    return [Prim("poly", body, colour), Prim("poly", stripe, shade(colour, 0.85), shadow=False)]


def ship(cx: float, cy: float, length: float, width: float, ang: float, colour: RGB, deck: RGB) -> list[Prim]:
    hl, hw = length / 2, width / 2
    hull = rot([(-hl, -hw), (0.3 * length, -hw), (hl, 0), (0.3 * length, hw), (-hl, hw)], cx, cy, ang)
    bridge = rot(rect(-0.32 * length, 0, 0.14 * length, 0.75 * width), cx, cy, ang)
    cargo = rot(rect(0.02 * length, 0, 0.42 * length, 0.6 * width), cx, cy, ang)
    return [
        Prim("poly", hull, colour),
        Prim("poly", cargo, shade(colour, 0.78), shadow=False),
        Prim("poly", bridge, deck),
    ]


def boat(cx: float, cy: float, length: float, ang: float, colour: RGB) -> list[Prim]:
    hl, hw = length / 2, length * 0.2
    hull = rot([(-hl, -hw), (0.15 * length, -hw), (hl, 0), (0.15 * length, hw), (-hl, hw)], cx, cy, ang)
    inner = rot(rect(-0.1 * length, 0, 0.45 * length, hw), cx, cy, ang)
    return [Prim("poly", hull, colour), Prim("poly", inner, WHITE_DECK, shadow=False)]


def wake(cx: float, cy: float, length: float, ang: float, water: RGB) -> list[Prim]:
    w = rot(
        [(-0.4 * length, 0), (-1.1 * length, -0.18 * length), (-1.1 * length, 0.18 * length)], cx, cy, ang
    )
    return [Prim("poly", w, shade(water, 1.18), layer=0, shadow=False)]


def tank(cx: float, cy: float, r: float, colour: RGB) -> list[Prim]:
    return [
        Prim("circle", [(cx, cy)], colour, radius=r),
        Prim("circle", [(cx + 0.08 * r, cy + 0.08 * r)], shade(colour, 0.86), radius=0.72 * r, shadow=False),
        Prim("circle", [(cx, cy)], shade(colour, 0.7), radius=0.12 * r, shadow=False),
    ]


def building(
    cx: float, cy: float, w: float, h: float, ang: float, colour: RGB, roof: str = "ridge"
) -> list[Prim]:
    """A w x h building; roof 'ridge' (pitched, a darker half), 'ribs' (industrial) or 'flat'."""
    out = [Prim("poly", rect(cx, cy, w, h, ang), colour)]
    if roof == "ridge":
        out.append(
            Prim("poly", rot(box(-w / 2, 0, w / 2, h / 2), cx, cy, ang), shade(colour, 0.8), shadow=False)
        )
    elif roof == "ribs":  # a few darker ribs across the long side
        n = max(2, int(w / 0.04))
        for i in range(1, n):
            x = -w / 2 + i * w / n
            rib = rot([(x, -h / 2), (x, h / 2)], cx, cy, ang)
            out.append(Prim("line", rib, shade(colour, 0.82), width=0.004, shadow=False))
    else:  # flat roof with a parapet
        out.append(Prim("poly", rect(cx, cy, w * 0.82, h * 0.75, ang), shade(colour, 0.9), shadow=False))
    return out


def car(cx: float, cy: float, length: float, ang: float, colour: RGB) -> list[Prim]:
    body = rect(cx, cy, length, 0.48 * length, ang)
    glass = rot(rect(0.18 * length, 0, 0.16 * length, 0.38 * length), cx, cy, ang)
    return [Prim("poly", body, colour), Prim("poly", glass, (40, 44, 52), shadow=False)]


def tree(cx: float, cy: float, r: float, colour: RGB) -> list[Prim]:
    return [
        Prim("circle", [(cx, cy)], colour, radius=r),
        Prim("circle", [(cx - 0.25 * r, cy - 0.25 * r)], shade(colour, 1.22), radius=0.5 * r, shadow=False),
    ]


def dashes(path: Path2, dash: float, gap: float, colour: RGB, width: float) -> list[Prim]:
    """A dashed centre line along `path`."""
    out, d = [], gap / 2
    while d + dash < path.length:
        a, _ = path.at(d / path.length)
        b, _ = path.at((d + dash) / path.length)
        out.append(flat_line([a, b], colour, width))
        d += dash + gap
    return out


def road(path: Path2, width: float, colour: RGB, marking: RGB | None) -> list[Prim]:
    out = [flat_line(path.points(), colour, width)]
    if marking is not None:
        out += dashes(path, 0.035, 0.03, marking, max(width * 0.09, 0.003))
    return out


def river(path: Path2, width: float, colour: RGB, bank: RGB) -> list[Prim]:
    return [flat_line(path.points(), bank, width * 1.35), flat_line(path.points(), colour, width)]
