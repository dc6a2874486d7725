"""Scene builders with water: harbor (piers, moored vessels, tanks or warehouses) and open sea."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .geometry import POS_BOXES, POS_WORDS, Path2, Placer, box, clip_box
from .layout import Layout, Prim, Region, new_layout
from .palette import COLOURS, COUNTS_UNIFORM, RGB, jitter, pick, sample_count
from .shapes import WHITE_DECK, boat, building, flat_line, road, ship, wake
from .steps import WATER, WATER_P, Spot, open_scene, pick_ground, place_group, tanks, turned

Pier = tuple[float, float, float]  # x, width, length


def _vessels(rng: np.random.Generator, kind: str, n: int) -> tuple[str, RGB, RGB, float, float]:
    """Colour word, colour, deck colour, length and width of n ships or boats."""
    if kind == "ship":
        cname = pick(rng, ("red", "white", "blue", "black", "grey"), (0.25, 0.2, 0.2, 0.15, 0.2))
        length = rng.uniform(0.16, 0.24) if n <= 3 else rng.uniform(0.12, 0.17)
        width = length * rng.uniform(0.18, 0.24)
    else:
        cname = pick(rng, ("white", "red", "blue", "yellow"), (0.5, 0.2, 0.2, 0.1))
        length = rng.uniform(0.05, 0.08)
        width = length * 0.4
    deck = WHITE_DECK if cname != "white" else (150, 150, 152)
    return cname, jitter(rng, COLOURS[cname], 6), deck, length, width


def _vessel(
    kind: str, x: float, y: float, length: float, width: float, a: float, c: RGB, deck: RGB
) -> list[Prim]:
    return ship(x, y, length, width, a, c, deck) if kind == "ship" else boat(x, y, length, a, c)


def _quay(rng: np.random.Generator, lay: Layout, placer: Placer, water: RGB) -> tuple[float, list[Pier]]:
    """Water above a wavy quay line, land below, 1-4 piers into the water and a road; (shore, piers)."""
    shore = rng.uniform(0.5, 0.62)
    lay.regions.append(Region("concrete", jitter(rng, (158, 154, 146), 8)))
    xs = np.linspace(0, 1, 9)
    edge = shore + rng.uniform(-0.01, 0.01, 9)
    lay.regions.append(
        Region("water", water, [(-0.01, -0.01), (1.01, -0.01)] + list(zip(xs[::-1], edge[::-1])))
    )
    quay = jitter(rng, (186, 182, 172), 6)
    lay.add([flat_line(list(zip(xs.tolist(), edge.tolist())), quay, 0.02)])
    n_piers = int(rng.integers(1, 5))
    gaps = np.linspace(0.12, 0.88, n_piers) if n_piers > 1 else np.array([rng.uniform(0.3, 0.7)])
    piers = []
    for px in gaps + rng.uniform(-0.04, 0.04, n_piers):
        plen, pw = rng.uniform(0.2, 0.34), rng.uniform(0.035, 0.05)
        lay.add([Prim("poly", box(px - pw / 2, shore - plen, px + pw / 2, shore + 0.01), quay, layer=0)])
        piers.append((float(px), pw, plen))
        placer.add_box(px - pw / 2, shore - plen, px + pw / 2, shore + 0.05)
    placer.add_box(-1, shore - 0.015, 2, 2)
    quay_road = Path2([(-0.02, shore + 0.12), (1.02, shore + 0.12)])
    lay.add(road(quay_road, 0.03, jitter(rng, (104, 104, 106), 5), None))
    return shore, piers


def _berths(
    rng: np.random.Generator,
    placer: Placer,
    piers: list[Pier],
    shore: float,
    n: int,
    length: float,
    width: float,
) -> list[Spot]:
    """Up to n vessels moored along both sides of the piers, in random free berths."""
    slots = []
    for px, pw, plen in piers:
        for side in (-1, 1):
            x = px + side * (pw / 2 + width / 2 + 0.006)
            for y in np.arange(shore - plen + length / 2, shore - 0.02 - length / 2 + 1e-9, length + 0.01):
                slots.append((float(x), float(y)))
    spots: list[Spot] = []
    for i in rng.permutation(len(slots)):
        if len(spots) >= n:
            break
        x, y = slots[i]
        if placer.free(x, y, width / 2, margin=0.002):
            placer.add(x, y, width / 2)
            spots.append((x, y, math.pi / 2 * pick(rng, (-1, 1))))
    return spots


def _moored(rng: np.random.Generator, lay: Layout, placer: Placer, shore: float, piers: list[Pier]) -> None:
    """The subject: ships or boats at the piers, or in a part of the water (also when they do not fit)."""
    kind = pick(rng, ("ship", "boat"))
    n = sample_count(rng, COUNTS_UNIFORM, (7, 12))
    cname, colour, deck, length, width = _vessels(rng, kind, n)
    rel = pick(rng, ("next_to", "next_to", "left", "right", "center", "top"))
    spots: list[Spot] = []
    if rel == "next_to":
        spots = _berths(rng, placer, piers, shore, n, length, width)
        lay.relate(kind, "next_to", "dock")
    if not spots:  # also when the vessels are longer than the piers
        rel = rel if rel != "next_to" else pick(rng, ("left", "right", "center", "top"))
        area = clip_box(POS_BOXES[rel], (0, 0, 1, shore - 0.03))
        spots = place_group(rng, placer, n, length / 2, ("box", area))
        lay.relate(kind, "position", rel)
    for x, y, a in spots:
        lay.add(_vessel(kind, x, y, length, width, a, colour, deck))
    lay.group(kind, len(spots), cname)
    lay.group("dock", len(piers), "grey")


def _warehouses(rng: np.random.Generator, lay: Layout, placer: Placer, land: Sequence[float]) -> None:
    """One to three long warehouses with ribbed roofs on the land."""
    bname = pick(rng, ("blue", "white", "grey", "red"))
    bc = jitter(rng, COLOURS[bname], 8)
    got = 0
    for _ in range(int(rng.integers(1, 4))):
        bw, bh = rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.12)
        p = placer.footprint(rng, land, bh, 0.01, (-bw / 4, bw / 4), keep_centre=True)
        if p is not None:
            lay.add(building(p[0], p[1], bw, bh, 0.0, bc, roof="ribs"))
            got += 1
    lay.group("building", got, bname)


def harbor(rng: np.random.Generator) -> Layout:
    """Quay and piers; the subject: moored ships or boats; on land tanks or warehouses."""
    lay, placer = new_layout(rng), Placer()
    _, water = pick_ground(rng, lay, WATER, WATER_P)
    shore, piers = _quay(rng, lay, placer, water)
    _moored(rng, lay, placer, shore, piers)
    land = (0.02, shore + 0.16, 0.98, 0.98)
    if rng.random() < 0.5:
        tname = pick(rng, ("white", "grey"), (0.65, 0.35))
        tc = jitter(rng, COLOURS[tname], 6)
        rt = rng.uniform(0.035, 0.06)
        m = sample_count(rng, (0.15, 0.2, 0.25, 0.25, 0.15), (7, 10))
        lay.group("storage tank", tanks(rng, lay, placer, m, rt, land, tc), tname)
    else:
        _warehouses(rng, lay, placer, land)
    return turned(rng, lay)


def _fleet(
    rng: np.random.Generator,
    lay: Layout,
    placer: Placer,
    kind: str,
    n: int,
    area: Sequence[float],
    moving: bool,
) -> None:
    """n ships or boats at sea in `area`, heading one way when there are many, with wakes if moving."""
    cname, colour, deck, length, width = _vessels(rng, kind, n)
    a0 = rng.uniform(0, 2 * np.pi)
    water = lay.regions[0].colour
    spots = place_group(rng, placer, n, length * 0.55, ("box", area))
    for x, y, a in spots:
        a = a0 + rng.normal(0, 0.3) if n > 3 else a
        if moving:
            lay.add(wake(x, y, length, a, water))
        lay.add(_vessel(kind, x, y, length, width, a, colour, deck))
    lay.group(kind, len(spots), cname)


def sea(rng: np.random.Generator) -> Layout:
    """Open water with ships or boats in one part of it, sometimes a few of the other kind anywhere.

    Not turned: the water has no orientation and the subject's position word is drawn directly."""
    lay, placer = open_scene(rng, "water", WATER, WATER_P, waves=(0.03, 0.06))
    kinds = ("ship", "boat")
    main = pick(rng, kinds)
    n = sample_count(rng, (0.3, 0.25, 0.2, 0.15, 0.1), (7, 10))
    rel = pick(rng, POS_WORDS)
    moving = rng.random() < 0.7
    _fleet(rng, lay, placer, main, n, POS_BOXES[rel], moving)
    lay.relate(main, "position", rel)
    if rng.random() < 0.35:
        other = kinds[1 - kinds.index(main)]
        _fleet(rng, lay, placer, other, sample_count(rng, (0.4, 0.3, 0.2, 0.1, 0.0)), (0, 0, 1, 1), moving)
    return lay
