"""A scoring request: a table of base64 images in, a table of base64 PNGs out; bad input named, never served."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pandas as pd

from bgremoval.serving.options import MAX_PIXELS_ENV, Options, RequestError, decode_base64_image, options_from
from bgremoval.serving.refine import Predictor
from bgremoval.serving.render import png_bytes, render

__all__ = ["MAX_PIXELS_ENV", "MAX_REQUEST_ENV", "RequestError", "RequestTooLarge", "check_request_size", "cut_out",
           "decode_base64_image"]

INPUT_COLUMN = "image"
# Environment override of what the served model was logged with (params serve.max_request_mb); serve.max_pixels'
# is options.MAX_PIXELS_ENV.
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


def cut_out(predictor_for: Callable[[Options], Predictor], frame: pd.DataFrame, params: dict[str, Any] | None,
            defaults: dict[str, Any], max_pixels: int, max_request_mb: float) -> pd.DataFrame:
    """A request frame (column `image`, base64) -> one row per image: `png` (base64), width, height,
    foreground (share of pixels with alpha >= 0.5). `predictor_for` gives the network refined as a request's
    options ask. Raises RequestError naming the bad row or parameter."""
    if not isinstance(frame, pd.DataFrame) or INPUT_COLUMN not in frame.columns:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise RequestError(f"expected a column named {INPUT_COLUMN!r} of base64-encoded images; got {got}")
    if len(frame) == 0:
        raise RequestError("the request has no rows; send at least one image")
    check_request_size([*frame[INPUT_COLUMN], (params or {}).get("bg_image")], max_request_mb)
    opts = options_from(params, defaults, max_pixels)
    images = [decode_base64_image(v, max_pixels, f"row {i} ({INPUT_COLUMN})") for i, v in enumerate(frame[INPUT_COLUMN])]
    predict = predictor_for(opts)
    rows = []
    for image in images:  # all decoded first: a bad row fails the request before any work is done
        prob = predict(image)
        rows.append({
            "png": base64.b64encode(png_bytes(render(image, prob, opts))).decode("ascii"),
            "width": image.shape[1], "height": image.shape[0],
            "foreground": float((prob >= 0.5).mean()),
        })
    return pd.DataFrame(rows)
