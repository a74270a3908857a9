"""Masks as users store them: decoded into 8-bit foreground alpha, with what kind of mask each file is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bgremoval.images import ImageReadError, open_image

# Mask modes we accept: 8-bit grey, or the alpha channel of a grey+alpha / RGBA PNG.
MASK_MODES = ("L", "LA", "RGBA")


@dataclass(frozen=True)
class MaskInfo:
    """What prepare records about a mask file."""

    width: int
    height: int
    mode: str
    kind: str  # binary | soft | alpha
    fg_fraction: float



def mask_array(img: Image.Image) -> np.ndarray:
    """The mask's 8-bit foreground alpha (H, W) uint8, from an L image or an alpha channel."""
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("LA", "RGBA"):
        return np.asarray(img.getchannel("A"), dtype=np.uint8)
    raise ImageReadError(
        f"mask mode {img.mode!r} is not 8-bit grey or alpha; save masks as 8-bit L PNG "
        "(0 = background, 255 = foreground) or as the alpha of an RGBA PNG"
    )


def describe_mask(img: Image.Image) -> MaskInfo:
    """Size, mode, kind and foreground fraction of a decoded mask image."""
    if img.mode not in MASK_MODES:
        return MaskInfo(img.width, img.height, img.mode, "invalid", float("nan"))
    alpha = mask_array(img)
    if img.mode in ("LA", "RGBA"):
        kind = "alpha"
    else:
        values = np.unique(alpha)
        kind = "binary" if np.isin(values, (0, 255)).all() else "soft"
    return MaskInfo(img.width, img.height, img.mode, kind, float(alpha.mean() / 255.0))


def load_mask(path: Path, max_pixels: int) -> np.ndarray:
    """Decode a mask file into (H, W) uint8 alpha."""
    img = open_image(path, max_pixels)
    try:
        return mask_array(img)
    except ImageReadError as exc:
        raise ImageReadError(f"{path}: {exc}") from exc


