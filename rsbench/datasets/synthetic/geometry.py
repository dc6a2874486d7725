"""Plane geometry in normalised [0, 1] image coordinates: polygons, paths and object placement."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def rot(local: Sequence[Point], cx: float, cy: float, ang: float) -> list[Point]:
    """`local` points rotated by `ang` and moved to (cx, cy)."""
    c, s = math.cos(ang), math.sin(ang)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in local]


def rect(cx: float, cy: float, w: float, h: float, ang: float = 0.0) -> list[Point]:
    """A w x h rectangle centred on (cx, cy), rotated by `ang`."""
    return rot([(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)], cx, cy, ang)


def box(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    """The corners of an axis-aligned box."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def clip_box(a: Sequence[float], b: Sequence[float]) -> Box:
    """The intersection of two boxes (may be empty: x0 > x1 or y0 > y1)."""
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


# Where "on the left", "at the top", ... puts objects; captions use the keys.
POS_BOXES: dict[str, Box] = {
    "left": (0.03, 0.06, 0.42, 0.94),
    "right": (0.58, 0.06, 0.97, 0.94),
    "top": (0.06, 0.03, 0.94, 0.42),
    "bottom": (0.06, 0.58, 0.94, 0.97),
    "center": (0.28, 0.28, 0.72, 0.72),
}
POS_WORDS = tuple(POS_BOXES)


class Path2:
    """A polyline with arc-length parametrisation (for rivers, roads, rows)."""

    def __init__(self, pts: Sequence[Point]) -> None:
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
        """Distance from (x, y) to the nearest point of the path."""
        a, b = self.pts[:-1], self.pts[1:]
        ab = b - a
        t = np.clip(
            ((x - a[:, 0]) * ab[:, 0] + (y - a[:, 1]) * ab[:, 1]) / np.maximum(self.seglen**2, 1e-12), 0, 1
        )
        px, py = a[:, 0] + t * ab[:, 0], a[:, 1] + t * ab[:, 1]
        return float(np.min(np.hypot(px - x, py - y)))

    def points(self) -> list[Point]:
        return [(float(x), float(y)) for x, y in self.pts]


def meander(rng: np.random.Generator, orient: str, amp: float, n: int = 28) -> Path2:
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
        self.boxes: list[Box] = []

    def free(self, x: float, y: float, r: float, margin: float = 0.004) -> bool:
        """Whether a circle of radius r at (x, y) is inside the image and clear of everything placed."""
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
        self, rng: np.random.Generator, area: Sequence[float], r: float, tries: int = 60
    ) -> Point | None:
        """A free centre inside `area` (taken), or None after `tries` rejections."""
        x0, y0, x1, y1 = area
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

    def footprint(
        self,
        rng: np.random.Generator,
        area: Sequence[float],
        h: float,
        margin: float,
        offsets: Sequence[float],
        keep_centre: bool,
    ) -> Point | None:
        """Centre of a long footprint of depth h in `area`, held by circles at x + `offsets`, or None.

        The centre is drawn by `in_box` with radius h/2 + margin; `keep_centre` keeps that circle too.
        """
        p = self.in_box(rng, area, h / 2 + margin)
        if p is None:
            return None
        if not keep_centre:
            self.circles.pop()
        if not all(self.free(p[0] + dx, p[1], h / 2) for dx in offsets):
            return None
        for dx in offsets:
            self.add(p[0] + dx, p[1], h / 2)
        return p
