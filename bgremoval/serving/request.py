"""A scoring request: a table of base64 images in, a table of base64 PNGs out; bad input named, never served."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from bgremoval.images import ImageReadError, open_image
from bgremoval.serving.options import RequestError, options_from
from bgremoval.serving.render import png_bytes, render

INPUT_COLUMN = "image"
# Environment overrides of what the served model was logged with (params serve.max_pixels, serve.max_request_mb).
MAX_PIXELS_ENV = "BGREMOVAL_MAX_PIXELS"
MAX_REQUEST_ENV = "BGREMOVAL_MAX_REQUEST_MB"  # image data per request, in MB of base64


class RequestTooLarge(RequestError):
    """A request carrying more image data than the server takes (HTTP 413)."""


def check_request_size(values, max_request_mb: float) -> None:
    """Refuse a request whose base64 image data exceeds the cap, before anything is decoded."""
    total = sum(len(v) for v in values if isinstance(v, (str, bytes)))
    if total > max_request_mb * 1e6:
        raise RequestTooLarge(
            f"the request carries {total / 1e6:.1f} MB of image data, over the limit of {max_request_mb:g} MB "
            f"(serve.max_request_mb / {MAX_REQUEST_ENV}); send fewer or smaller images per request")


def decode_base64_image(text, max_pixels: int, label: str) -> np.ndarray:
    """A base64 string (or data: URL) -> (H, W, 3) uint8 RGB, refusing bombs and non-images."""
    if not isinstance(text, (str, bytes)):
        raise RequestError(f"{label}: expected a base64 string, got {type(text).__name__}")
    if isinstance(text, str):
        text = text.strip()
        if text.startswith("data:") and "," in text:  # data:image/png;base64,....
            text = text.split(",", 1)[1]
        text = "".join(text.split())  # `base64` wraps lines at 76 characters
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{label}: is not valid base64 (encode the file's bytes, e.g. `base64 -w0 photo.jpg`)") from None
    try:
        img = open_image(raw, max_pixels, label=label, limit_name=f"serve.max_pixels / {MAX_PIXELS_ENV}")
    except ImageReadError as exc:
        raise RequestError(str(exc)) from None
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def cut_out(segment: Callable[[np.ndarray], np.ndarray], frame: pd.DataFrame, params: dict[str, Any] | None,
            defaults: dict[str, Any], max_pixels: int, max_request_mb: float) -> pd.DataFrame:
    """A request frame (column `image`, base64) -> one row per image: `png` (base64), width, height,
    foreground (share of pixels with alpha >= 0.5). Raises RequestError naming the bad row or parameter."""
    if not isinstance(frame, pd.DataFrame) or INPUT_COLUMN not in frame.columns:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise RequestError(f"expected a column named {INPUT_COLUMN!r} of base64-encoded images; got {got}")
    if len(frame) == 0:
        raise RequestError("the request has no rows; send at least one image")
    check_request_size(frame[INPUT_COLUMN], max_request_mb)
    opts = options_from(params, defaults)
    images = [decode_base64_image(v, max_pixels, f"row {i} ({INPUT_COLUMN})") for i, v in enumerate(frame[INPUT_COLUMN])]
    rows = []
    for image in images:  # all decoded first: a bad row fails the request before any work is done
        prob = segment(image)
        rows.append({
            "png": base64.b64encode(png_bytes(render(image, prob, opts))).decode("ascii"),
            "width": image.shape[1], "height": image.shape[0],
            "foreground": float((prob >= 0.5).mean()),
        })
    return pd.DataFrame(rows)
