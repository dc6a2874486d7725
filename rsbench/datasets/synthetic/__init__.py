"""A synthetic remote-sensing image-caption dataset in the Karpathy JSON layout.

`generate_synthetic(out_dir, ...)` draws aerial-like scenes (numpy + PIL only) of ten land-cover
classes, each with objects at several scales (planes, ships, boats, storage tanks, buildings,
cars, trees, roads, rivers, runways, docks), and writes five varied RSICD-style captions per image
built from a small grammar over the scene's actual content (class, object counts and colours, one
spatial relation). The recorded content is kept per image under the key "scene".

Layout written (atomically: built in a temp sibling folder, then renamed into place):

    <out_dir>/dataset.json          {"images": [...], "dataset": "synthetic", "params": {...}}
    <out_dir>/images/<class>_<n>.png

Modules, in the order an image is made (generate.make_scene):
    scenes.py         CLASSES and the builder of each class
    scenes_built.py   airport, residential, industrial, parking     (builders: a Layout per scene)
    scenes_water.py   harbor, sea
    scenes_rural.py   farmland, forest, desert, meadow
    steps.py          drawing steps the builders share (opening, road/river, placement, relation)
    shapes.py         objects as primitives; geometry.py: paths, placement; palette.py: colours, draws
    layout.py         Layout (regions, primitives, recorded content) and its 8 orientations
    render.py         Layout -> image (textures, shadows)
    captions.py       recorded content -> captions
    generate.py       seeds, splits, SYNTHETIC_VERSION, the atomic write

The bytes written are part of published results: a change that alters any of them must bump
SYNTHETIC_VERSION (generate.py). Mind the order of random draws when rearranging a builder.
"""

from .generate import SYNTHETIC_VERSION, generate_synthetic, make_scene, synthetic_params_key
from .scenes import CLASSES

__all__ = ["CLASSES", "SYNTHETIC_VERSION", "generate_synthetic", "make_scene", "synthetic_params_key"]
