"""Drawing steps the scene builders share: the opening, roads and rivers, group placement, the
relation, the closing turn. Each step draws from the generator in a fixed order (see palette.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .geometry import POS_BOXES, POS_WORDS, Path2, Placer, meander
from .layout import Layout, Region, new_layout, transform
from .palette import RGB, jitter, pick
from .shapes import river, road, tank

Spot = tuple[float, float, float]  # x, y, angle of one placed object
How = tuple[str, Any]  # ("box", box) or ("path", (path, offset))

WATER: dict[str, RGB] = {"blue": (44, 88, 132), "dark blue": (26, 52, 88), "green": (40, 104, 104)}
WATER_P = (0.45, 0.35, 0.2)
_RIVER: dict[str, RGB] = {"blue": (46, 84, 122), "green": (52, 96, 84), "brown": (112, 96, 70)}


def pick_ground(
    rng: np.random.Generator, lay: Layout, grounds: Mapping[str, RGB], p: Sequence[float] | None = None
) -> tuple[str, RGB]:
    """Draw the ground's colour word (recorded for captions) and a colour near its base."""
    name = pick(rng, tuple(grounds), p)
    lay.ground = name
    return name, jitter(rng, grounds[name], 8)


def open_scene(
    rng: np.random.Generator,
    tex: str,
    grounds: Mapping[str, RGB],
    p: Sequence[float] | None = None,
    waves: tuple[float, float] | None = None,
) -> tuple[Layout, Placer]:
    """A new layout whose whole ground is one `tex` region; `waves`: a random direction and a period
    in that range (dunes, ripples)."""
    lay, placer = new_layout(rng), Placer()
    _, colour = pick_ground(rng, lay, grounds, p)
    if waves is None:
        lay.regions.append(Region(tex, colour))
    else:
        lay.regions.append(Region(tex, colour, angle=rng.uniform(0, np.pi), period=rng.uniform(*waves)))
    return lay, placer


def turned(rng: np.random.Generator, lay: Layout) -> Layout:
    """The layout in one of its 8 orientations (the last draw of a builder)."""
    transform(lay, int(rng.integers(8)))
    return lay


def linear(
    rng: np.random.Generator, lay: Layout, placer: Placer, kind: str, orient: str, on: str = "grass"
) -> Path2:
    """Add a road or a river crossing the scene; records the object group."""
    if kind == "river":
        width = rng.uniform(0.06, 0.11)
        path = meander(rng, orient, rng.uniform(0.03, 0.09))
        cname = pick(rng, ("blue", "green", "brown"), (0.5, 0.3, 0.2))
        bank = (178, 164, 128) if on != "sand" else (150, 130, 96)
        lay.add(river(path, width, jitter(rng, _RIVER[cname], 8), bank))
        lay.group("river", 1, cname)
        placer.add_path(path, width * 0.7)
    else:
        width = rng.uniform(0.03, 0.05)
        path = meander(rng, orient, rng.uniform(0.0, 0.03))
        dirt = on in ("field", "forest", "sand") and rng.random() < 0.5
        cname = "brown" if dirt else "grey"
        colour = jitter(rng, (150, 118, 84) if dirt else (96, 96, 100), 8)
        lay.add(road(path, width, colour, None if dirt or rng.random() < 0.4 else (220, 220, 210)))
        lay.group("road", 1, cname)
        placer.add_path(path, width * 0.6)
    return path


def place_group(rng: np.random.Generator, placer: Placer, n: int, r: float, how: How) -> list[Spot]:
    """Place up to n objects of radius r in a box or beside a path; (x, y, angle) per placed one."""
    kind, where = how
    out: list[Spot] = []
    for _ in range(n):
        if kind == "box":
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


def where(
    rng: np.random.Generator, lay: Layout, placer: Placer, path: Path2 | None, gap: float
) -> tuple[How, str, str]:
    """Beside the road/river `path` (`gap` off its edge; 60 % when there is one) or in a random part
    of the image: (how to place, relation type, relation object). `path` must be the last one
    added, and its group the last recorded (callers place their objects right after `linear`)."""
    if path is not None and rng.random() < 0.6:
        return ("path", (path, placer.paths[-1][1] + gap)), "along", lay.objects[-1]["kind"]
    word = pick(rng, POS_WORDS)
    return ("box", POS_BOXES[word]), "position", word


def settle(
    rng: np.random.Generator, lay: Layout, placer: Placer, path: Path2 | None, subject: str, gap: float
) -> tuple[How, bool]:
    """`where`, recorded as the relation of `subject`; returns (how, along a path)."""
    how, rtype, obj = where(rng, lay, placer, path, gap)
    lay.relate(subject, rtype, obj)
    return how, rtype == "along"


def lead_or_forget(lay: Layout, kind: str, got: Sequence[Spot], colour: str) -> None:
    """Record the placed subject group first; with none placed, the relation says nothing."""
    lay.lead(kind, len(got), colour)
    if not got:
        lay.relation = None


def through_fallback(lay: Layout, path: Path2 | None, orient: str) -> None:
    """Without another relation, the road or river becomes the subject: it goes through the scene."""
    if lay.relation is None and path is not None:
        g = next(g for g in lay.objects if g["kind"] in ("road", "river"))
        lay.relate(g["kind"], "through", orient)
        lay.to_front(g)


def tanks(
    rng: np.random.Generator,
    lay: Layout,
    placer: Placer,
    n: int,
    r: float,
    area: Sequence[float],
    colour: RGB,
) -> int:
    """Up to n storage tanks of radius r in `area`; returns how many were placed."""
    got = place_group(rng, placer, n, r, ("box", area))
    for x, y, _ in got:
        lay.add(tank(x, y, r, colour))
    return len(got)


def crossing(
    rng: np.random.Generator,
    lay: Layout,
    placer: Placer,
    kinds: Sequence[str],
    kinds_p: Sequence[float] | None,
    orients_p: Sequence[float],
    on: str,
) -> tuple[Path2, str]:
    """A road or river (drawn from `kinds`) running horizontally or diagonally; (path, orientation)."""
    kind = pick(rng, kinds, kinds_p)
    orient = pick(rng, ("horizontal", "diagonal"), orients_p)
    return linear(rng, lay, placer, kind, orient, on=on), orient
