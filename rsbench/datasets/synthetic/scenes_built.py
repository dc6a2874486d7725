"""Scene builders of built-up land: airport, residential area, industrial area, parking lot."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .geometry import POS_BOXES, POS_WORDS, Box, Path2, Placer, box, clip_box
from .layout import Layout, Prim, Region, new_layout
from .palette import ASPHALT, COLOURS, COUNTS_UNIFORM, MIXED, RGB, jitter, pick, sample_count, some_of
from .shapes import building, car, dashes, flat_line, plane, road, tree
from .steps import Spot, open_scene, place_group, tanks, turned

_MARKING = (226, 226, 220)
_CARS_FEW = (0.3, 0.3, 0.2, 0.2, 0.0)


def _airfield(rng: np.random.Generator, lay: Layout, placer: Placer) -> float:
    """Concrete, grass strip, runway with markings, taxiway and links; returns the taxiway's y."""
    dark = rng.random() < 0.4
    lay.ground = "grey"
    lay.regions.append(Region("concrete", jitter(rng, (120, 120, 118) if dark else (164, 162, 156), 8)))
    lay.regions.append(Region("grass", jitter(rng, (112, 136, 78), 10), box(-0.01, 0.0, 1.01, 0.32)))
    y0, rw = rng.uniform(0.05, 0.1), rng.uniform(0.09, 0.12)
    lay.add([Prim("poly", box(-0.02, y0, 1.02, y0 + rw), jitter(rng, ASPHALT, 6), layer=0, shadow=False)])
    lay.add(dashes(Path2([(-0.02, y0 + rw / 2), (1.02, y0 + rw / 2)]), 0.05, 0.035, _MARKING, rw * 0.06))
    for xe in (0.03, 0.97):  # threshold bars at both ends
        for k in range(4):
            yy = y0 + rw * (0.15 + 0.7 * k / 3)
            lay.add([flat_line([(xe - 0.02, yy), (xe + 0.02, yy)], _MARKING, rw * 0.07)])
    lay.group("runway", 1, "grey")
    ty = y0 + rw + rng.uniform(0.06, 0.1)
    lay.add(road(Path2([(-0.02, ty), (1.02, ty)]), 0.03, jitter(rng, (90, 90, 92), 5), (210, 190, 70)))
    for xc in rng.uniform(0.1, 0.9, 2):
        lay.add(road(Path2([(xc, y0 + rw / 2), (xc, 0.34)]), 0.028, jitter(rng, (90, 90, 92), 5), None))
    placer.add_box(-1, -1, 2, ty + 0.03)
    return ty


def _terminal(rng: np.random.Generator, lay: Layout, placer: Placer) -> tuple[Box, str]:
    """A long flat-roofed terminal near the bottom; (its box, its colour word)."""
    bw, bh = rng.uniform(0.3, 0.55), rng.uniform(0.07, 0.11)
    bx, by = rng.uniform(bw / 2 + 0.02, 1 - bw / 2 - 0.02), rng.uniform(0.82, 0.9)
    bname = pick(rng, ("white", "grey", "blue"), (0.45, 0.35, 0.2))
    lay.add(building(bx, by, bw, bh, 0.0, jitter(rng, COLOURS[bname], 8), roof="flat"))
    bbox = (bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2)
    placer.add_box(*bbox)
    return bbox, bname


def _plane_row(
    rng: np.random.Generator, placer: Placer, n: int, r: float, y: float, ang: float, xs: tuple[float, float]
) -> list[Spot]:
    """Up to n planes side by side on the line y between xs, in random free slots."""
    slots = np.arange(xs[0] + r, xs[1] - r + 1e-9, 2 * r + 0.012)
    spots = []
    for x in slots[some_of(rng, len(slots), n)]:
        if placer.free(float(x), y, r * 0.9):
            placer.add(float(x), y, r * 0.9)
            spots.append((float(x), y, ang + rng.normal(0, 0.05)))
    return spots


def _parked_planes(
    rng: np.random.Generator, lay: Layout, placer: Placer, ty: float, bbox: Box | None, n: int, r: float
) -> list[Spot]:
    """Where the planes stand: in a row along the taxiway or the terminal, or in a part of the apron."""
    rel = pick(rng, ["left", "right", "center", "bottom", "along"] + (["next_to"] * 2 if bbox else []))
    if rel == "along":
        lay.relate("plane", rel, "runway")
        return _plane_row(rng, placer, n, r, ty + 0.035 + r, -math.pi / 2, (0.02, 0.98))
    if rel == "next_to":
        assert bbox is not None
        lay.relate("plane", rel, "building")
        xs = (max(0.02, bbox[0] - 0.1), min(0.98, bbox[2] + 0.1))
        return _plane_row(rng, placer, n, r, bbox[1] - 0.015 - r, math.pi / 2, xs)
    area = clip_box(POS_BOXES[rel], (0, ty + 0.03, 1, 1))
    aligned = rng.random() < 0.5
    a0 = rng.uniform(0, 2 * np.pi)
    lay.relate("plane", "position", rel)
    return [(x, y, a0 if aligned else a) for x, y, a in place_group(rng, placer, n, r, ("box", area))]


def airport(rng: np.random.Generator) -> Layout:
    """Runway and taxiway, often a terminal; the subject: parked planes."""
    lay, placer = new_layout(rng), Placer()
    ty = _airfield(rng, lay, placer)
    terminal = _terminal(rng, lay, placer) if rng.random() < 0.75 else None
    n = sample_count(rng, COUNTS_UNIFORM, (7, 11))
    length = (
        rng.uniform(0.13, 0.2) if n <= 3 else rng.uniform(0.1, 0.14) if n <= 6 else rng.uniform(0.08, 0.11)
    )
    pname = pick(rng, ("white", "grey", "red", "blue", "yellow"), (0.4, 0.2, 0.15, 0.15, 0.1))
    colour = jitter(rng, COLOURS[pname], 6)
    spots = _parked_planes(rng, lay, placer, ty, terminal[0] if terminal else None, n, length * 0.5)
    for x, y, a in spots:
        lay.add(plane(x, y, length, a, colour))
    lay.lead("plane", len(spots), pname)
    if terminal:
        lay.group("building", 1, terminal[1])
    return turned(rng, lay)


def _street_grid(rng: np.random.Generator, lay: Layout, placer: Placer) -> tuple[list[Path2], float]:
    """One or two straight streets each way; (the streets, their width)."""
    rcol = jitter(rng, (112, 112, 116), 6)
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
    return roads, rw


def _houses(rng: np.random.Generator, lay: Layout, placer: Placer, roads: list[Path2], rw: float) -> None:
    """The subject: many houses lining the streets or filling one part of the image."""
    bname = pick(rng, ("red", "grey", "white", "blue", "brown"), (0.35, 0.2, 0.2, 0.1, 0.15))
    n = sample_count(rng, (0.0, 0.0, 0.0, 0.3, 0.7), (8, 24))
    hw, hh = rng.uniform(0.05, 0.08), rng.uniform(0.035, 0.05)
    if rng.random() < 0.65:
        got = []
        for _ in range(n):
            p = roads[int(rng.integers(len(roads)))]
            q = placer.along(rng, p, rw / 2 + hh / 2 + 0.01, hh * 0.62, tries=40)
            if q is not None:
                got.append((q[0][0], q[0][1], q[1]))
        lay.relate("building", "along", "road")
    else:
        word = pick(rng, POS_WORDS)
        got = place_group(rng, placer, n, hh * 0.7, ("box", POS_BOXES[word]))
        got = [(x, y, pick(rng, (0.0, np.pi / 2))) for x, y, _ in got]
        lay.relate("building", "position", word)
    for x, y, a in got:
        c = COLOURS[bname] if rng.random() < 0.88 else COLOURS[pick(rng, ("red", "grey", "white"))]
        lay.add(building(x, y, hw, hh, a, jitter(rng, c, 10)))
    lay.lead("building", len(got), bname)


def _street_cars(rng: np.random.Generator, lay: Layout, roads: list[Path2], rw: float) -> None:
    """A few cars driving on random streets, on either lane."""
    m = sample_count(rng, _CARS_FEW)
    cname = pick(rng, ("white", "red", "blue", "black"))
    for _ in range(m):
        p = roads[int(rng.integers(len(roads)))]
        (x, y), (tx, ty) = p.at(rng.uniform(0.05, 0.95))
        side = pick(rng, (-1, 1)) * rw * 0.25
        lay.add(car(x - ty * side, y + tx * side, 0.04, math.atan2(ty, tx), jitter(rng, COLOURS[cname], 6)))
    lay.group("car", m, cname)


def residential(rng: np.random.Generator) -> Layout:
    """A street grid; the subject: many houses; sometimes trees and cars."""
    grounds = {"green": (118, 146, 86), "beige": (176, 168, 136)}
    lay, placer = open_scene(rng, "grass", grounds, (0.6, 0.4))
    roads, rw = _street_grid(rng, lay, placer)
    _houses(rng, lay, placer, roads, rw)
    if rng.random() < 0.6:
        tname = pick(rng, ("green", "dark green"))
        m = sample_count(rng, (0.0, 0.1, 0.1, 0.3, 0.5), (7, 16))
        spots = place_group(rng, placer, m, rng.uniform(0.018, 0.03), ("box", (0, 0, 1, 1)))
        for x, y, _ in spots:
            lay.add(tree(x, y, rng.uniform(0.016, 0.03), jitter(rng, COLOURS[tname], 10)))
        lay.group("tree", len(spots), tname)
    if rng.random() < 0.35:
        _street_cars(rng, lay, roads, rw)
    return turned(rng, lay)


def _factories(
    rng: np.random.Generator, lay: Layout, placer: Placer, n: int, area: Sequence[float], colour: RGB
) -> list[tuple[float, float]]:
    """Up to n large factory halls in `area`; returns their centres."""
    centres = []
    for _ in range(n):
        bw, bh = rng.uniform(0.18, 0.34), rng.uniform(0.1, 0.18)
        p = placer.footprint(rng, area, bh, 0.005, (-bw / 3, 0.0, bw / 3), keep_centre=False)
        if p is not None:
            lay.add(building(p[0], p[1], bw, bh, 0.0, colour, roof=pick(rng, ("ribs", "flat"))))
            centres.append(p)
    return centres


def _plant(rng: np.random.Generator, lay: Layout, placer: Placer) -> dict[str, int]:
    """Halls and storage tanks: tanks next to the first hall, or the main kind in one part of the
    image and maybe the other anywhere. Records the groups and the relation; returns the counts."""
    main = pick(rng, ("storage tank", "building"))
    second = rng.random() < 0.75
    next_to = second and rng.random() < 0.5
    word = pick(rng, POS_WORDS)
    bname = pick(rng, ("white", "blue", "grey", "red"), (0.35, 0.3, 0.25, 0.1))
    tname = pick(rng, ("white", "grey", "blue"), (0.6, 0.3, 0.1))
    nb = int(rng.integers(1, 4)) if main == "building" else int(rng.integers(1, 3))
    nt = sample_count(rng, (0.15, 0.15, 0.2, 0.25, 0.25), (7, 12))
    bc, tc = jitter(rng, COLOURS[bname], 8), jitter(rng, COLOURS[tname], 6)
    rt = rng.uniform(0.045, 0.075) if nt <= 3 else rng.uniform(0.03, 0.05)
    full = (0.0, 0.0, 1.0, 1.0)
    counts: dict[str, int] = {}
    if next_to:
        centres = _factories(rng, lay, placer, nb, full, bc)
        area: Sequence[float] = full
        if centres:
            x, y = centres[0]
            area = (x - 0.32, y - 0.3, x + 0.32, y + 0.3)
            lay.relate("storage tank", "next_to", "building")
        counts = {
            "building": len(centres),
            "storage tank": tanks(rng, lay, placer, nt, rt, clip_box(area, full), tc),
        }
    else:
        other = "building" if main == "storage tank" else "storage tank"
        for kind in [main] + ([other] if second else []):
            part = POS_BOXES[word] if kind == main else full
            if kind == "building":
                counts[kind] = len(_factories(rng, lay, placer, nb, part, bc))
            else:
                counts[kind] = tanks(rng, lay, placer, nt, rt, clip_box(part, full), tc)
        lay.relate(main, "position", word)
    for kind in [main] + [k for k in counts if k != main]:
        lay.group(kind, counts[kind], bname if kind == "building" else tname)
    return counts


def industrial(rng: np.random.Generator) -> Layout:
    """A road through concrete; the subject: halls or storage tanks; sometimes cars on the road."""
    lay, placer = new_layout(rng), Placer()
    lay.ground = "grey"
    lay.regions.append(Region("concrete", jitter(rng, pick(rng, ((168, 166, 160), (146, 142, 132))), 8)))
    rpath = Path2([(-0.02, rng.uniform(0.4, 0.6)), (1.02, rng.uniform(0.4, 0.6))])
    lay.add(road(rpath, 0.04, jitter(rng, (96, 96, 98), 5), (220, 220, 210)))
    placer.add_path(rpath, 0.02)
    counts = _plant(rng, lay, placer)
    if lay.relation is None or counts.get(lay.relation["subject"], 0) == 0:
        kind = max(counts, key=lambda k: (counts[k], k))  # the most numerous placed kind, in the center
        lay.relation = {"subject": kind, "type": "position", "object": "center"} if counts[kind] else None
    if rng.random() < 0.35:
        m = sample_count(rng, _CARS_FEW)
        cname = pick(rng, ("white", "red", "blue"))
        for _ in range(m):
            (x, y), _t = rpath.at(rng.uniform(0.05, 0.95))
            lay.add(car(x, y + pick(rng, (-1, 1)) * 0.009, 0.045, 0.0, jitter(rng, COLOURS[cname], 6)))
        lay.group("car", m, cname)
    lay.group("road", 1, "grey")
    return turned(rng, lay)


def _lot_building(rng: np.random.Generator, lay: Layout) -> tuple[str, float]:
    """A flat-roofed building on concrete along the bottom; (its colour word, where bays must end)."""
    bname = pick(rng, ("white", "grey", "blue", "red"), (0.35, 0.3, 0.2, 0.15))
    bh = rng.uniform(0.12, 0.18)
    lay.regions.append(
        Region("concrete", jitter(rng, (170, 168, 160), 6), box(-0.01, 1 - bh - 0.04, 1.01, 1.01))
    )
    bw = rng.uniform(0.45, 0.85)
    bx = rng.uniform(bw / 2, 1 - bw / 2)
    lay.add(building(bx, 1 - bh / 2 - 0.01, bw, bh, 0.0, jitter(rng, COLOURS[bname], 8), roof="flat"))
    return bname, 1 - bh - 0.06


def _bays(
    rng: np.random.Generator, lay: Layout, y_end: float
) -> tuple[list[tuple[float, float, int]], float, float]:
    """Rows of painted bays, facing in pairs across aisles, down to `y_end`.

    Returns (bay centres with the direction cars face, car length, bay depth)."""
    line = jitter(rng, (196, 196, 190), 8)
    clen = rng.uniform(0.07, 0.085)
    bay, depth = clen * 0.6, clen * 1.3
    rows: list[float] = []
    y = 0.04
    while y + depth <= y_end:
        rows.append(y)
        y += depth + (depth + 0.03 if len(rows) % 2 == 0 else 0.0)
    xs = np.arange(rng.uniform(0.02, 0.06), 0.98 - bay, bay)
    slots = []
    for i, y in enumerate(rows):
        for x in xs:
            lay.add([flat_line([(x, y), (x, y + depth)], line, 0.004)])
            slots.append((float(x + bay / 2), float(y + depth / 2), 1 if i % 2 == 0 else -1))
        lay.add([flat_line([(xs[-1] + bay, y), (xs[-1] + bay, y + depth)], line, 0.004)])
    return slots, clen, depth


def _taken_bays(
    rng: np.random.Generator, lay: Layout, slots: list[tuple[float, float, int]], depth: float, has_b: bool
) -> list[tuple[float, float, int]]:
    """The bays the cars may take: next to the building, or in one part of the lot that has bays."""
    rel = pick(rng, list(POS_WORDS) + (["next_to", "next_to"] if has_b else []))
    if rel == "next_to":
        last = max(s[1] for s in slots)
        lay.relate("car", "next_to", "building")
        return [s for s in slots if s[1] >= last - depth * 2.5]

    def inside(word: str) -> list[tuple[float, float, int]]:
        x0, y0, x1, y1 = POS_BOXES[word]
        return [s for s in slots if x0 <= s[0] <= x1 and y0 <= s[1] <= y1]

    cand = inside(rel)
    if not cand:  # e.g. a building fills the bottom: pick a part of the lot that has bays
        rel = pick(rng, [w for w in POS_WORDS if inside(w)])
        cand = inside(rel)
    lay.relate("car", "position", rel)
    return cand


def _park_cars(
    rng: np.random.Generator,
    lay: Layout,
    slots: list[tuple[float, float, int]],
    clen: float,
    depth: float,
    has_b: bool,
) -> None:
    """The subject: cars of one colour or of mixed colours in some bays of one part of the lot."""
    mixed = rng.random() < 0.35
    cname = "mixed" if mixed else pick(rng, ("white", "black", "red", "blue", "grey"))
    n = sample_count(rng, (0.1, 0.1, 0.15, 0.25, 0.4), (7, 30))
    cand = _taken_bays(rng, lay, slots, depth, has_b)
    take = some_of(rng, len(cand), n)
    for i in take:
        x, y, face = cand[i]
        c = COLOURS[pick(rng, MIXED)] if mixed else COLOURS[cname]
        ang = face * math.pi / 2
        lay.add(car(x, y + rng.normal(0, 0.003), clen, ang + rng.normal(0, 0.04), jitter(rng, c, 8)))
    lay.group("car", len(take), cname)


def _tree_row(rng: np.random.Generator, lay: Layout) -> None:
    """A grass verge with a row of trees along the top edge."""
    tname = pick(rng, ("green", "dark green"))
    m = int(rng.integers(3, 9))
    r = rng.uniform(0.02, 0.03)
    lay.regions.append(Region("grass", jitter(rng, (110, 140, 80), 6), box(-0.01, -0.01, 1.01, 0.035)))
    for x in np.linspace(0.05, 0.95, m):
        lay.add(tree(float(x), 0.02, r, jitter(rng, COLOURS[tname], 10)))
    lay.group("tree", m, tname)


def parking(rng: np.random.Generator) -> Layout:
    """Rows of bays, often a building; the subject: parked cars; sometimes a row of trees."""
    lay = new_layout(rng)
    lay.ground = "grey"
    lay.regions.append(Region("asphalt", jitter(rng, pick(rng, ((78, 78, 82), (104, 104, 106))), 6)))
    has_b = rng.random() < 0.55
    bname, y_end = _lot_building(rng, lay) if has_b else ("", 0.97)
    slots, clen, depth = _bays(rng, lay, y_end)
    _park_cars(rng, lay, slots, clen, depth, has_b)
    if has_b:
        lay.group("building", 1, bname)
    if rng.random() < 0.4 and slots:
        _tree_row(rng, lay)
    return turned(rng, lay)
