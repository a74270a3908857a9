"""A scoring request: a table of base64 images in, a table of base64 PNGs out; bad input named, never served."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pandas as pd

from bgremoval.serving.options import (ERRORS, ERRORS_PARAM, MAX_PIXELS_ENV, MAX_REQUEST_ENV, Options, RequestError,
                                       decode_base64_image, options_from)
from bgremoval.serving.refine import Predictor
from bgremoval.serving.render import png_bytes, render

__all__ = ["ERRORS", "ERRORS_PARAM", "MAX_PIXELS_ENV", "MAX_REQUEST_ENV", "RequestError", "RequestTooLarge",
           "check_request_size", "cut_out", "decode_base64_image"]

INPUT_COLUMN = "image"


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
    foreground (share of pixels with alpha >= 0.5); with param errors=row also `error`: empty where served,
    else why not (and `png` empty). Empty strings, not nulls: each column keeps one type through Arrow and Spark.
    `predictor_for` gives the network refined as a request's options ask. Raises RequestError naming the bad
    row or parameter (with errors=row, only a bad parameter or an empty request)."""
    if not isinstance(frame, pd.DataFrame) or INPUT_COLUMN not in frame.columns:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise RequestError(f"expected a column named {INPUT_COLUMN!r} of base64-encoded images; got {got}")
    if len(frame) == 0:
        raise RequestError("the request has no rows; send at least one image")
    params = dict(params or {})
    errors = params.pop(ERRORS_PARAM, None) or ERRORS[0]
    if errors not in ERRORS:
        raise RequestError(f"parameter {ERRORS_PARAM}: {errors!r} is not one of {', '.join(ERRORS)}")
    if errors == "row":
        check_request_size([params.get("bg_image")], max_request_mb)
        opts = options_from(params, defaults, max_pixels)
        predict = predictor_for(opts)
        return pd.DataFrame([_row_or_error(predict, opts, value, f"row {i} ({INPUT_COLUMN})", max_pixels=max_pixels,
                                           max_request_mb=max_request_mb) for i, value in enumerate(frame[INPUT_COLUMN])])
    check_request_size([*frame[INPUT_COLUMN], params.get("bg_image")], max_request_mb)
    opts = options_from(params, defaults, max_pixels)
    images = [decode_base64_image(v, max_pixels, f"row {i} ({INPUT_COLUMN})") for i, v in enumerate(frame[INPUT_COLUMN])]
    predict = predictor_for(opts)
    # all decoded first: a bad row fails the request before any work is done
    return pd.DataFrame([_served_row(image, predict(image), opts) for image in images])


def _served_row(image, prob, opts: Options) -> dict[str, Any]:
    return {"png": base64.b64encode(png_bytes(render(image, prob, opts))).decode("ascii"),
            "width": image.shape[1], "height": image.shape[0], "foreground": float((prob >= 0.5).mean())}


def _row_or_error(predict: Predictor, opts: Options, value, label: str, *, max_pixels: int,
                  max_request_mb: float) -> dict[str, Any]:
    """One row of an errors=row request, decoded and served on its own (the request-size cap applies to each
    image): its picture, or `error` naming why not."""
    try:
        check_request_size([value], max_request_mb)
        image = decode_base64_image(value, max_pixels, label)
    except RequestError as exc:
        return {"png": "", "width": 0, "height": 0, "foreground": float("nan"), "error": str(exc)}
    return {**_served_row(image, predict(image), opts), "error": ""}
