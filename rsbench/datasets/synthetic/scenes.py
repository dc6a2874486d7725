"""The ten land-cover classes and the builder that lays out a scene of each.

The order of CLASSES is part of the data: image k has class CLASSES[k % 10], and a class's index
seeds its images' generators.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .layout import Layout
from .scenes_built import airport, industrial, parking, residential
from .scenes_rural import desert, farmland, forest, meadow
from .scenes_water import harbor, sea

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

BUILDERS: dict[str, Callable[[np.random.Generator], Layout]] = {
    "airport": airport,
    "harbor": harbor,
    "sea": sea,
    "farmland": farmland,
    "forest": forest,
    "desert": desert,
    "residential": residential,
    "industrial": industrial,
    "parking": parking,
    "meadow": meadow,
}
