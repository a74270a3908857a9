"""Masks as users and public data sets store them, decoded into 8-bit foreground alpha (0 = background,
255 = foreground), with what kind of mask each file is.

prepare records each mask's kind in the manifest (`mask_kind`), together with its choices for the masks
that need one (params.yaml prepare.jpeg_masks, prepare.resize_masks); every reader then reads a pair's
mask from its manifest row with `load_mask(row, max_pixels)`, so augment, scoring, export and the reports
all see the same alpha at the photo's size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bgremoval.images import ImageReadError, open_image

# Every kind a mask file can be read as, and how.
KINDS = {
    "binary": "8-bit grey 0/255 (or RGB with three equal channels)",
    "binary-01": "8-bit grey 0/1: 1 is foreground",
    "soft": "8-bit grey 0..255 as alpha",
    "1-bit": "1-bit (PIL mode '1'): set pixels are foreground",
    "palette": "palette (mode 'P'), as VOC and DAVIS store masks: index 0 is background, any other index foreground",
    "16-bit": "16-bit grey: 0/1, 0..255, or the full 0..65535 range, as the values show",
    "alpha": "the alpha channel of an RGBA, LA or PA image",
    "jpeg-threshold": "JPEG grey, thresholded at 128 back to 0/255 (prepare.jpeg_masks: threshold)",
    "jpeg-soft": "JPEG grey 0..255 as decoded (prepare.jpeg_masks: soft)",
}
# Kinds that cannot be read without guessing: the manifest records them and validation names the files.
UNREADABLE = {
    "colour": "a colour image that is not a palette: which colour is foreground is a guess. Save it as a "
              "palette PNG (index 0 = background) or in grey (0 = background, 255 = foreground)",
    "unsupported": "an image mode no mask is stored in. Save it as an 8-bit grey PNG (0 = background, "
                   "255 = foreground) or as the alpha of an RGBA PNG",
}
JPEG_CHOICES = ("threshold", "soft")
# A JPEG pixel at most this far from 0 or 255 is compression noise around a clean value; one further off
# counts toward the mask's `mask_noise` (the share of its pixels that are neither near 0 nor near 255).
NEAR = 8
# RGB JPEG masks: chroma noise makes grey pixels' channels differ a little; a grey mask has at most this
# share of pixels whose channels spread by more than JPEG_GREY_SPREAD.
JPEG_GREY_SPREAD, JPEG_COLOUR_SHARE = 32, 0.01


@dataclass(frozen=True)
class MaskChoices:
    """prepare's choices for masks that need one (params.yaml prepare.jpeg_masks, prepare.resize_masks)."""

    jpeg: str       # threshold | soft
    resize: bool    # resize masks scaled from their photos' size (same aspect ratio) to their photos

    def __post_init__(self):
        if self.jpeg not in JPEG_CHOICES:
            raise ValueError(f"prepare.jpeg_masks must be one of {' | '.join(JPEG_CHOICES)}, not {self.jpeg!r}")


@dataclass(frozen=True)
class MaskInfo:
    """What prepare records about a mask file."""

    width: int
    height: int
    mode: str
    kind: str           # a key of KINDS or UNREADABLE
    fg_fraction: float  # NaN when the kind is unreadable
    noise: float        # JPEG masks: share of pixels neither near 0 nor near 255; NaN for other files


def is_jpeg(path: Path) -> bool:
    """Whether a file holds JPEG data (by its bytes, whatever its name says)."""
    with open(path, "rb") as fh:
        return fh.read(3) == b"\xff\xd8\xff"


def _grey_channels(rgb: np.ndarray, jpeg: bool) -> bool:
    """Whether an (H, W, 3) image is grey: equal channels, or nearly so for a JPEG."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    if not jpeg:
        return not spread.any()
    return float(np.mean(spread > JPEG_GREY_SPREAD)) <= JPEG_COLOUR_SHARE


def _grey_kind(grey: np.ndarray) -> str:
    values = np.unique(grey)
    if np.isin(values, (0, 1)).all() and 1 in values:
        return "binary-01"
    return "binary" if np.isin(values, (0, 255)).all() else "soft"


def _opaque_grey(img: Image.Image) -> bool:
    """An LA/RGBA image whose alpha is fully opaque and whose grey carries the mask (saved with a needless
    alpha channel)."""
    if img.mode not in ("LA", "RGBA"):
        return False
    alpha = np.asarray(img.getchannel("A"))
    if (alpha != 255).any():
        return False
    colour = np.asarray(img.convert("RGB"))
    return _grey_channels(colour, False) and np.ptp(colour[..., 0]) > 0


def classify(img: Image.Image, jpeg: bool) -> str:
    """The file's kind; a JPEG is "jpeg" (the reading, thresholded or soft, is prepare's choice)."""
    if jpeg:
        if img.mode == "L":
            return "jpeg"
        if img.mode == "RGB" and _grey_channels(np.asarray(img), True):
            return "jpeg"
        return "colour" if img.mode in ("RGB", "CMYK", "YCbCr") else "unsupported"
    if img.mode == "1":
        return "1-bit"
    if img.mode == "P":
        return "palette"
    if img.mode.startswith("I;16") or img.mode == "I":
        return "16-bit"
    if img.mode in ("LA", "RGBA", "PA"):
        return _grey_kind(np.asarray(img.convert("L"))) if _opaque_grey(img) else "alpha"
    if img.mode == "L":
        return _grey_kind(np.asarray(img))
    if img.mode == "RGB":
        rgb = np.asarray(img)
        return _grey_kind(rgb[..., 0]) if _grey_channels(rgb, False) else "colour"
    return "unsupported"


def decode(img: Image.Image, kind: str, label: str) -> np.ndarray:
    """The (H, W) uint8 alpha of a decoded mask image read as `kind` ("jpeg": as decoded, soft)."""
    if kind in UNREADABLE:
        raise ImageReadError(f"{label}: the mask is {UNREADABLE[kind]}")
    if kind not in KINDS and kind != "jpeg":
        raise ImageReadError(f"{label}: unknown mask kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "1-bit":
        return (np.asarray(img.convert("L")) >= 128).astype(np.uint8) * 255
    if kind == "palette":
        if img.mode != "P":
            raise ImageReadError(f"{label}: recorded as a palette mask but is mode {img.mode!r}; run prepare again")
        return (np.asarray(img) != 0).astype(np.uint8) * 255
    if kind == "16-bit":
        values = np.asarray(img).astype(np.int64)
        top = int(values.max(initial=0))
        if top <= 1:
            return (values * 255).astype(np.uint8)
        if top <= 255:
            return values.astype(np.uint8)
        return np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    if kind == "alpha":
        return np.asarray(img.getchannel("A"), dtype=np.uint8)
    grey = np.asarray(img.convert("L"), dtype=np.uint8)
    if kind == "binary-01":
        return (grey > 0).astype(np.uint8) * 255
    if kind == "jpeg-threshold":
        return (grey >= 128).astype(np.uint8) * 255
    return grey


def jpeg_noise(grey: np.ndarray) -> float:
    """Share of pixels that are neither near 0 nor near 255: JPEG's noise and blur around a hard mask (and
    any soft edge the mask really has)."""
    return float(np.mean((grey > NEAR) & (grey < 255 - NEAR)))


def describe_mask(img: Image.Image, jpeg: bool, choices: MaskChoices) -> MaskInfo:
    """Size, mode, kind, foreground fraction and (JPEG) noise of a decoded mask image. `jpeg`: the file is
    JPEG data; `choices`: prepare's, which decide how a JPEG mask is read."""
    kind = classify(img, jpeg)
    noise = float("nan")
    if kind in UNREADABLE:
        return MaskInfo(width=img.width, height=img.height, mode=img.mode, kind=kind, fg_fraction=float("nan"),
                        noise=noise)
    if kind == "jpeg":
        noise = jpeg_noise(decode(img, "jpeg", ""))
        kind = f"jpeg-{choices.jpeg}"
    alpha = decode(img, kind, "")
    return MaskInfo(width=img.width, height=img.height, mode=img.mode, kind=kind,
                    fg_fraction=float(alpha.mean() / 255.0), noise=noise)


def mask_fit(width: int, height: int, mask_width: int, mask_height: int) -> str:
    """How a mask's size relates to its photo's: "same"; "scaled" (both sides smaller, or both larger, and
    the aspect ratio the same within a pixel at the smaller size, as scaling rounds it); else "different"
    (a photo stored rotated, a crop, a pad)."""
    if (mask_width, mask_height) == (width, height):
        return "same"
    if mask_width == width or mask_height == height or (mask_width < width) != (mask_height < height):
        return "different"
    (sw, sh), (lw, lh) = sorted([(mask_width, mask_height), (width, height)], key=lambda s: s[0] * s[1])
    # Predict the smaller image's short side from its long side: rounding leaves at most a pixel off.
    off = abs(sw * lh / lw - sh) if sw >= sh else abs(sh * lw / lh - sw)
    return "scaled" if off <= 1 else "different"


def resize_mask(alpha: np.ndarray, width: int, height: int, hard: bool) -> np.ndarray:
    """A mask resized to width x height (bilinear); a 0/255 mask stays 0/255 (thresholded at 128)."""
    out = np.asarray(Image.fromarray(alpha, "L").resize((int(width), int(height)), Image.Resampling.BILINEAR))
    return (out >= 128).astype(np.uint8) * 255 if hard else out


def load_mask(source: Mapping | Path | str, max_pixels: int) -> np.ndarray:
    """A pair's mask as (H, W) uint8 alpha, from its manifest row: decoded as its recorded `mask_kind`
    (which carries prepare.jpeg_masks' choice) and, when `mask_resize` is set (a scaled mask with
    prepare.resize_masks on), resized to the row's width x height. A row without a recorded kind, or a bare
    path, is read as its content shows (a JPEG as decoded) and never resized."""
    row = {"mask_path": source} if isinstance(source, (str, os.PathLike)) else source
    path = Path(row["mask_path"])
    img = open_image(path, max_pixels)
    kind = row.get("mask_kind")
    if not isinstance(kind, str):
        kind = classify(img, is_jpeg(path))
    alpha = decode(img, kind, str(path))
    width, height = row.get("width"), row.get("height")
    if _number(width) and _number(height) and alpha.shape != (int(height), int(width)):
        if not _flag(row.get("mask_resize")):
            fit = mask_fit(int(width), int(height), alpha.shape[1], alpha.shape[0])
            fix = ("set prepare.resize_masks: true to resize such masks to their photos, or save masks at "
                   "their photos' sizes" if fit == "scaled" else
                   "its aspect ratio differs (a photo stored rotated, or a crop): fix or remove the pair")
            raise ImageReadError(f"{path}: the mask is {alpha.shape[1]}x{alpha.shape[0]}, its photo "
                                 f"{int(width)}x{int(height)}; {fix}")
        alpha = resize_mask(alpha, int(width), int(height), hard=bool(np.isin(alpha, (0, 255)).all()))
    return alpha


def _flag(v) -> bool:
    return isinstance(v, (bool, np.bool_)) and bool(v)


def _number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and v == v
