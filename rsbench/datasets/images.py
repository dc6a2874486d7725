"""Decode any image file the four datasets ship (or people's copies of them) into 8-bit RGB.

Why one function: copies of UCM/Sydney/RSITMD differ (8-bit RGB TIFF, 16-bit TIFF, 4-band RGBN,
greyscale, palette PNG), and a model must see the same kind of pixels whatever the copy.

Bit-depth rule (consistent, documented): 16-bit samples become 8-bit by keeping the high byte
(`v >> 8`, i.e. a fixed scale of 65535 -> 255). This is the rule Pillow already applies to 16-bit
RGB/RGBA TIFF and PNG, so single- and multi-band 16-bit images are treated alike and no image is
brightened relative to another. Data that uses only 12 bits of a 16-bit container comes out dark;
`bench data check` reports the modes seen so such a copy can be spotted.
Bands: 4-band images (RGBA, RGBX, RGBN) keep their first three bands; greyscale is replicated to
three channels; palette images are expanded. Float ('F') images are assumed to hold [0, 1].

Truncated or corrupt files raise DataError naming the file: we never enable Pillow's
LOAD_TRUNCATED_IMAGES and always call `.load()` so decoding errors surface here, not in a worker.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, one_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class DecodedImage:
    """An RGB image plus what the file held (for `bench data check`)."""

    image: Image.Image  # mode RGB, uint8
    mode: str  # Pillow mode of the file as opened (e.g. 'RGB', 'I;16', 'P')
    size: tuple[int, int]  # (width, height) of the file


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        arr8 = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr8 = np.clip(np.rint(np.nan_to_num(arr) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("P", "PA"):
        # Expand the palette via RGBA so transparency info does not trigger Pillow warnings.
        return im.convert("RGBA").convert("RGB")
    if mode in ("RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "L", "LA", "La", "1"):
        # RGBA/RGBX -> RGB drops the 4th band (no alpha compositing): "take the first three bands".
        return im.convert("RGB")
    bands = im.getbands()
    if len(bands) >= 3:
        r, g, b = im.split()[:3]
        return Image.merge("RGB", (r.convert("L"), g.convert("L"), b.convert("L")))
    return im.convert("RGB")


def _describe(im: Image.Image) -> str:
    """Pillow mode, plus the stored bit depth / band count when Pillow's mode hides them (TIFF)."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return im.mode
    bits = tags.get(258)
    bits = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,) if bits else ()
    samples = int(tags.get(277, len(bits) or 1))
    extra = []
    if bits and max(bits) > 8 and not im.mode.startswith(("I", "F")):
        extra.append(f"{max(bits)}-bit")
    if samples != len(im.getbands()):
        extra.append(f"{samples} bands")
    return f"{im.mode} ({', '.join(extra)})" if extra else im.mode


_WARNED_LARGE: set[str] = set()


def _warn_large(path: Path, size: tuple[int, int]) -> None:
    """One line of ours per file and process instead of Pillow's raw DecompressionBombWarning.

    Silent inside DataLoader worker processes (each epoch starts new ones, which would repeat it);
    `bench data check` and the main process say it once.
    """
    if str(path) in _WARNED_LARGE:
        return
    _WARNED_LARGE.add(str(path))
    tud = sys.modules.get("torch.utils.data")
    if tud is not None and tud.get_worker_info() is not None:
        return
    print(f"warning: {path}: very large image ({size[0]}x{size[1]} = {size[0] * size[1]} pixels, above Pillow's "
          f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS}); decoded anyway", file=sys.stderr, flush=True)


def decode_image(path: str | Path) -> DecodedImage:
    """Open, fully decode and convert one image file; DataError naming the file if it cannot."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. odd TIFF tags: harmless metadata
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said once by _warn_large
            with Image.open(path) as im:
                if Image.MAX_IMAGE_PIXELS and im.size[0] * im.size[1] > Image.MAX_IMAGE_PIXELS:
                    _warn_large(path, im.size)
                im.load()
                mode, size = _describe(im), im.size
                rgb = _to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (unknown format or corrupt header)") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, MemoryError) as e:
        msg = one_line(e)
        raise DataError(f"{path}: corrupt or truncated image ({msg})") from None
    return DecodedImage(rgb, mode, size)


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file into an 8-bit RGB PIL image (see the module doc for the conversion rules)."""
    return decode_image(path).image


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """Direct resize to size x size (aspect not kept, as the field does), bilinear like torchvision."""
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.BILINEAR)
