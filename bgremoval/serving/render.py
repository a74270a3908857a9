"""The picture a user asked for, from an image and its predicted mask, at the image's own size."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bgremoval.serving.options import Options


def render(image: np.ndarray, prob: np.ndarray, opts: Options) -> Image.Image:
    """A mask (8-bit L), an RGBA cut-out, or a composite on a new background (RGB)."""
    alpha = prob if opts.threshold is None else (prob >= opts.threshold).astype(np.float32)
    alpha8 = np.clip(np.round(alpha * 255), 0, 255).astype(np.uint8)
    if opts.output == "mask":
        return Image.fromarray(alpha8, mode="L")
    if opts.output == "cutout":
        return Image.fromarray(np.dstack([image, alpha8]), mode="RGBA")
    a = alpha8[..., None].astype(np.float32) / 255
    background = np.array(opts.bg_color, np.float32)
    return Image.fromarray(np.round(image * a + background * (1 - a)).astype(np.uint8), mode="RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
