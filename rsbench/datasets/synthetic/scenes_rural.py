"""Scene builders of open land: farmland, forest, desert, meadow. Each may be crossed by a road or
a river, and its few objects stand beside it or in one part of the image."""

from __future__ import annotations

import numpy as np

from .geometry import Path2, Placer, box
from .layout import Layout, Prim, Region, new_layout
from .palette import COLOURS, COUNTS_FEW, COUNTS_UNIFORM, RGB, jitter, pick, sample_count
from .shapes import building, flat_line, tank, tree
from .steps import (
    crossing,
    lead_or_forget,
    linear,
    open_scene,
    place_group,
    settle,
    through_fallback,
    turned,
    where,
)

_FIELD_COLOURS: dict[str, RGB] = {
    "green": (92, 136, 64),
    "yellow": (204, 184, 100),
    "brown": (146, 110, 74),
    "light green": (140, 170, 88),
}


def _fields(rng: np.random.Generator, lay: Layout, dom: str) -> None:
    """A grid of striped fields, mostly of the dominant colour, separated by tracks."""
    lay.regions.append(Region("soil", jitter(rng, (150, 126, 92), 8)))
    ncol, nrow = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    xs = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.15, 0.85, ncol - 1)]))
    track = jitter(rng, (170, 150, 116), 6)
    for i in range(ncol):
        ys = np.sort(np.concatenate([[0.0, 1.0], rng.uniform(0.15, 0.85, nrow - 1)]))
        for j in range(nrow):
            name = dom if rng.random() < 0.6 else pick(rng, tuple(_FIELD_COLOURS))
            ang = pick(rng, (0.0, np.pi / 2)) + rng.normal(0, 0.03)
            poly = box(xs[i] + 0.006, ys[j] + 0.006, xs[i + 1] - 0.006, ys[j + 1] - 0.006)
            lay.regions.append(
                Region("field", jitter(rng, _FIELD_COLOURS[name], 10), poly, ang, rng.uniform(0.018, 0.04))
            )
            if j > 0:
                lay.add([flat_line([(xs[i], ys[j]), (xs[i + 1], ys[j])], track, 0.008)])
        if i > 0:
            lay.add([flat_line([(xs[i], 0), (xs[i], 1)], track, 0.01)])


def farmland(rng: np.random.Generator) -> Layout:
    """Fields, often a road or river; the subject: farm buildings, else the road or river."""
    lay, placer = new_layout(rng), Placer()
    dom = pick(rng, ("green", "yellow", "brown"), (0.45, 0.3, 0.25))
    lay.ground = dom
    _fields(rng, lay, dom)
    has_lin = rng.random() < 0.65
    has_b = rng.random() < 0.7 or not has_lin
    path, orient = None, ""
    if has_lin:
        path, orient = crossing(rng, lay, placer, ("road", "river"), (0.6, 0.4), (0.7, 0.3), "field")
    if has_b:  # farm buildings, square to the fields unless they line the road
        bname = pick(rng, ("red", "white", "grey", "blue"), (0.35, 0.3, 0.2, 0.15))
        n = sample_count(rng, COUNTS_FEW)
        how, along = settle(rng, lay, placer, path, "building", 0.012)
        bw = rng.uniform(0.06, 0.1)
        got = place_group(rng, placer, n, bw * 0.6, how)
        for x, y, a in got:
            a = a if along else pick(rng, (0.0, np.pi / 2))
            lay.add(building(x, y, bw, bw * 0.65, a, jitter(rng, COLOURS[bname], 10)))
        lead_or_forget(lay, "building", got, bname)
    through_fallback(lay, path, orient)
    return turned(rng, lay)


def forest(rng: np.random.Generator) -> Layout:
    """Tree cover; sometimes a road or river and houses; else the trees are everywhere."""
    lay, placer = open_scene(rng, "forest", {"dark green": (42, 86, 46), "green": (70, 116, 58)}, (0.6, 0.4))
    gname = lay.ground
    path, orient = None, ""
    if rng.random() < 0.55:
        path, orient = crossing(rng, lay, placer, ("road", "river"), None, (0.7, 0.3), "forest")
    if rng.random() < 0.45:  # houses, each in a small clearing
        bname = pick(rng, ("white", "red", "grey", "brown"))
        n = sample_count(rng, COUNTS_FEW)
        how, _ = settle(rng, lay, placer, path, "building", 0.015)
        bw = rng.uniform(0.06, 0.09)
        got = place_group(rng, placer, n, bw * 0.65, how)
        clearing = jitter(rng, (128, 148, 88), 8)
        for x, y, _ in got:
            lay.add([Prim("circle", [(x, y)], clearing, radius=bw * 0.95, layer=0, shadow=False)])
        for x, y, a in got:
            lay.add(building(x, y, bw, bw * 0.65, a, jitter(rng, COLOURS[bname], 10)))
        lead_or_forget(lay, "building", got, bname)
    through_fallback(lay, path, orient)
    lay.group("tree", 12, gname)
    if lay.relation is None:
        lay.relate("tree", "everywhere", None)
    return turned(rng, lay)


_DESERT_THINGS = {  # kind: (colour words, count weights, 'many' range, size range)
    "building": (("white", "grey", "brown"), COUNTS_FEW, (7, 12), (0.06, 0.1)),
    "tree": (("green", "dark green"), (0.0, 0.1, 0.2, 0.35, 0.35), (7, 14), (0.015, 0.03)),
    "tank": (("white", "grey"), (0.3, 0.3, 0.2, 0.2, 0.0), (7, 12), (0.04, 0.06)),
}


def _desert_things(
    rng: np.random.Generator, lay: Layout, placer: Placer, kind: str, path: Path2 | None
) -> None:
    """Flat-roofed buildings, shrubs or tanks beside the road or in one part of the image."""
    names, weights, many, sizes = _DESERT_THINGS[kind]
    cname = pick(rng, names)
    n, size = sample_count(rng, weights, many), rng.uniform(*sizes)
    name = "storage tank" if kind == "tank" else kind
    how, rtype, obj = where(rng, lay, placer, path, 0.012)
    colour = jitter(rng, COLOURS[cname], 8)
    got = place_group(rng, placer, n, size * (0.6 if kind == "building" else 1.0), how)
    for x, y, a in got:
        if kind == "building":
            lay.add(building(x, y, size, size * 0.7, a, colour, roof="flat"))
        elif kind == "tree":
            lay.add(tree(x, y, size, jitter(rng, colour, 10)))
        else:
            lay.add(tank(x, y, size, colour))
    g = lay.group(name, len(got), cname)
    if got:
        lay.relate(name, rtype, obj)
        lay.to_front(g)


def desert(rng: np.random.Generator) -> Layout:
    """Dunes with a road, buildings, shrubs or tanks (or a road and buildings)."""
    grounds = {"yellow": (214, 186, 128), "orange": (206, 146, 92), "brown": (164, 128, 94)}
    lay, placer = open_scene(rng, "sand", grounds, (0.5, 0.25, 0.25), waves=(0.05, 0.12))
    choice = pick(rng, ("road", "building", "tree", "road+building", "tank"), (0.25, 0.25, 0.2, 0.2, 0.1))
    path, orient = None, ""
    if "road" in choice:
        orient = pick(rng, ("horizontal", "diagonal"), (0.7, 0.3))
        path = linear(rng, lay, placer, "road", orient, on="sand")
    for kind in ("building", "tree", "tank"):
        if kind in choice:
            _desert_things(rng, lay, placer, kind, path)
    through_fallback(lay, path, orient)
    return turned(rng, lay)


def meadow(rng: np.random.Generator) -> Layout:
    """Grass, sometimes a river or road; the subject: trees."""
    grounds = {"green": (108, 150, 74), "light green": (146, 176, 96), "yellow": (176, 170, 96)}
    lay, placer = open_scene(rng, "grass", grounds, (0.5, 0.3, 0.2))
    path = None
    if rng.random() < 0.5:
        path, _ = crossing(rng, lay, placer, ("river", "road"), (0.65, 0.35), (0.6, 0.4), "grass")
    tname = pick(rng, ("green", "dark green"), (0.5, 0.5))
    n = sample_count(rng, COUNTS_UNIFORM, (7, 16))
    r = rng.uniform(0.03, 0.05) if n <= 3 else rng.uniform(0.02, 0.035)
    how, _ = settle(rng, lay, placer, path, "tree", 0.01)
    got = place_group(rng, placer, n, r, how)
    for x, y, _ in got:
        lay.add(tree(x, y, r * rng.uniform(0.85, 1.1), jitter(rng, COLOURS[tname], 10)))
    lay.lead("tree", len(got), tname)
    return turned(rng, lay)
