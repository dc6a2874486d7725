"""Captions: a small grammar over a scene's recorded content, with paraphrases and realistic mess.

Every caption says only what the scene holds (class, object groups with their counts and colours,
the one relation); its wording is drawn from `rng`, so captions vary between images of a scene type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from .palette import pick

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
    """'a' or 'an' before `word`."""
    return "an" if word[:1] in "aeiou" else "a"


def _noun(kind: str, cls: str, plural: bool, rng: np.random.Generator) -> str:
    """A name for an object kind, as people would say it in this class of scene."""
    opts = _CLASS_NOUNS_OVERRIDE.get((cls, kind), _NOUNS.get(kind, ((kind, kind + "s"),)))
    return pick(rng, opts)[1 if plural else 0]


def _np(g: dict[str, Any], cls: str, rng: np.random.Generator, p_colour: float = 0.85) -> str:
    """'three white planes', 'a red ship', 'many cars of different colors'."""
    plural = g["count"] != 1
    noun = _noun(g["kind"], cls, plural, rng)
    colour = g["colour"]
    words: list[str] = []
    qty = pick(rng, _QTY[g["count_word"]])
    suffix = ""
    if colour == "mixed":
        if rng.random() < 0.5:
            suffix = pick(rng, (" of different colors", " of various colors", " of different colours"))
        else:
            words.append("colorful")
    elif colour and rng.random() < p_colour:
        words.append(colour)
    words.append(noun)
    if qty == "a":
        qty = _article(words[0])
    return f"{qty} {' '.join(words)}{suffix}"


def _the(kind: str, cls: str, count: int, rng: np.random.Generator) -> str:
    """'the river', 'the buildings': the anchor of a relation."""
    return "the " + _noun(kind, cls, count > 1, rng)


def _class_np(cls: str, rng: np.random.Generator, article: str = "a") -> str:
    """'a parking lot', 'the meadow'."""
    noun = pick(rng, CLASS_NOUNS[cls])
    if article == "the":
        return "the " + noun
    return f"{_article(noun)} {noun}"


class _Facts:
    """What the captions of one scene can say; every call draws fresh paraphrases."""

    def __init__(self, scene: dict[str, Any], cls: str, rng: np.random.Generator) -> None:
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
        """'is' or 'are' for a group."""
        return "is" if g["count"] == 1 else "are"

    def cnp(self, article: str = "a") -> str:
        """The scene's class as a noun phrase."""
        return _class_np(self.cls, self.rng, article)

    def subject(self) -> str:
        """The subject group as a noun phrase."""
        assert self.subj is not None
        return _np(self.subj, self.cls, self.rng)

    def locative(self) -> str:
        """Where the subject is: 'on the left', 'next to the building', 'along the river'."""
        r, rng = self.rel, self.rng
        if r is None:
            return ""
        if r["type"] == "position":
            return pick(rng, _POS[r["object"]])
        if r["type"] in ("next_to", "along"):
            cnt = self.anchor["count"] if self.anchor else 1
            return f"{pick(rng, _NEAR if r['type'] == 'next_to' else _ALONG)} {_the(r['object'], self.cls, cnt, rng)}"
        if r["type"] == "through":
            if r["object"] in _ORIENT and rng.random() < 0.5:
                return pick(rng, _ORIENT[r["object"]])
            return "through " + self.cnp("the")
        return pick(rng, _EVERYWHERE)

    def predicate(self, mention_class: bool = True) -> str:
        """'are parked on the left', 'goes through the forest', 'cover the whole area'."""
        assert self.subj is not None
        rng, kind, r = self.rng, self.subj["kind"], self.rel
        be = self.be(self.subj)
        if r is None:
            return (
                f"{be} in " + self.cnp() if mention_class else f"{be} {pick(rng, ('here', 'in the image'))}"
            )
        if r["type"] == "through":
            verb = pick(rng, _THROUGH)
            if r["object"] in _ORIENT and (rng.random() < 0.4 or not mention_class):
                return f"{pick(rng, ('runs', 'goes', 'extends'))} {pick(rng, _ORIENT[r['object']])}"
            return f"{verb} {self.cnp('the')}"
        if r["type"] == "everywhere":
            cover = f"cover {self.cnp('the')}" if mention_class else f"{be} growing densely"
            return pick(rng, (f"{be} everywhere", cover, f"{be} all over the image"))
        if kind in ("ship", "boat") and self.cls == "sea":
            verbs: tuple[str, ...] = _SAIL
        elif kind in ("ship", "boat") and r["type"] == "position":
            verbs = ("moored", "anchored", "floating")
        else:
            verbs = _VERBS.get(kind, ("located",))
        verb = pick(rng, verbs) if rng.random() < 0.75 else ""
        return " ".join(w for w in (be, verb, self.locative()) if w)

    def other(self, free: bool = False) -> str:
        """Another object group; with free=True not the one the relation refers to."""
        pool = self.free_others if free else self.others
        return _np(pool[int(self.rng.integers(len(pool)))], self.cls, self.rng)

    def short(self) -> str:
        """A class-only caption: 'this is a large green meadow'."""
        rng = self.rng
        noun = pick(rng, CLASS_NOUNS[self.cls])
        adj = self.ground if self.ground and rng.random() < 0.5 else pick(rng, _BIG)
        if self.cls in ("harbor", "airport", "parking", "industrial", "residential") and adj == self.ground:
            adj = pick(rng, _BIG)
        phrase = " ".join(w for w in (adj, noun) if w)
        return pick(rng, ("", "this is ", "it is ", "here is ")) + f"{_article(phrase)} {phrase}"


def _templates(f: _Facts) -> list[Callable[[], str]]:
    """The sentence patterns this scene supports; the class-only one (`short`) is last."""
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
            lambda: f"we can see {f.subject()} {f.locative()} in this {pick(f.rng, CLASS_NOUNS[f.cls])}"
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
        end = pick(rng, (".", "", " . ", " ..", " , .", " .."))
    if u[3] < 0.03:
        raw = raw.upper() if rng.random() < 0.3 else raw.replace(" ,", ",")
    return raw + end


def captions(scene: dict[str, Any], cls: str, rng: np.random.Generator, k: int) -> list[str]:
    """k captions of one scene: distinct patterns, sometimes a class-only one or a repeated one."""
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
