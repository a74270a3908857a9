"""What one request (or one `bgremoval predict` run) asks for: one set of names, one set of defaults.

The names are the keys of params.yaml's serve.defaults; their values there are logged with the served
model and are what a request gets when it names none. The server's params (and the MLflow signature's,
built from KINDS), and the CLI's flags are these same names, parsed by `options_from`.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import ImageColor

from bgremoval.images import ImageReadError, load_rgb

if TYPE_CHECKING:
    from bgremoval.serving.refine import Refine

OUTPUTS = ("mask", "cutout", "composite")
BACKGROUNDS = ("color", "blur", "image")
MAX_BLUR = 25.0  # % of the shorter side: beyond it the background is one flat colour anyway
MAX_PIXELS_ENV = "BGREMOVAL_MAX_PIXELS"  # where the model is served: overrides serve.max_pixels
MAX_PIXELS_NAME = f"serve.max_pixels / {MAX_PIXELS_ENV}"  # what an image over the served cap is told to change
# Where the model is served: overrides serve.max_request_mb (image data per request, in MB of base64).
MAX_REQUEST_ENV = "BGREMOVAL_MAX_REQUEST_MB"
# Every option, by name, with the MLflow type of its param. A null (unset) value of main_object or sharpen
# means "the served model's own refinement", which export chose on val (ServingConfig.refine).
KINDS = {
    "output": "string",                # mask | cutout | composite
    "threshold": "double",             # null or negative: soft edges; in [0, 1]: a hard mask
    "background": "string",            # composite's background: color | blur | image
    "bg_color": "string",              # background "color": '#rrggbb', 'r,g,b' or a CSS name
    "bg_image": "string",              # background "image": base64 (a file for the CLI), fitted to cover
    "bg_blur": "double",               # background "blur": Gaussian sigma, % of the photo's shorter side
    "estimate_foreground": "boolean",  # cut-out and composite colours re-estimated under soft alpha
    "matting": "boolean",              # the edge band's alpha re-estimated by closed-form matting
    "main_object": "boolean",          # keep only the main object; null: the model's own choice
    "sharpen": "double",               # edge sharpening k > 0 (1: none); null, 0 or negative: the model's own
}
# What each option does, as `bgremoval predict --help` and the demo page say it (flags as the CLI spells them).
OPTION_HELP = {
    "output": "what to write",
    "threshold": "binarise the mask at this probability; negative: soft edges",
    "background": "a composite's background: --bg-color, the photo blurred (--bg-blur) or --bg-image",
    "bg_color": "background color: '#rrggbb', 'r,g,b' or a name",
    "bg_image": "background image: scaled to cover each photo, centre-cropped",
    "bg_blur": "background blur: Gaussian sigma in % of the photo's shorter side, in (0, 25]",
    "estimate_foreground": "cut-outs and composites take the subject's own colours at soft edges",
    "matting": "re-estimate the edge band's alpha by closed-form matting (hair, fur; slower)",
    "main_object": "keep only the main object, or (--no-main-object) every one; neither: the model's own refinement",
    "sharpen": "edge sharpening k > 0 (1: none); 0 or negative: the model's own refinement",
}
# The command-line spelling of the options that take a value (`bgremoval predict`, `bgremoval spark-cutout`).
_METAVARS = {"bg_image": "FILE", "bg_blur": "PERCENT", "sharpen": "K"}


def add_option_flags(parser, skip: tuple[str, ...] = ()) -> None:
    """Each request option but `skip` as a flag of an argparse parser (--bg-color for bg_color), typed as KINDS
    says, described by OPTION_HELP, defaulting to None: an option not given takes the model's serve.defaults."""
    import argparse

    for name, kind in KINDS.items():
        if name in skip:
            continue
        flag, words = "--" + name.replace("_", "-"), OPTION_HELP[name].replace("%", "%%")
        if kind == "boolean":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=words)
        else:
            choices = {"output": OUTPUTS, "background": BACKGROUNDS}.get(name)
            if name == "background" and "bg_image" in skip:
                choices, words = [b for b in BACKGROUNDS if b != "image"], words.replace(" or --bg-image", "")
            parser.add_argument(flag, type=float if kind == "double" else str, choices=choices,
                                metavar=_METAVARS.get(name), help=words)


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
# How a request treats an image that cannot be served: "fail", the whole request fails naming the row (the HTTP
# server's 400), or "row", that row's `error` column says why and the other rows are served (a batch job's way:
# MLflow's spark_udf hands the model many photos at once, and one bad file must not stop the job). A request
# param beside the options, not one of them (nor of serve.defaults): it changes what is answered, not how a
# picture looks.
ERRORS_PARAM = "errors"
ERRORS = ("fail", "row")


class RequestError(ValueError):
    """Input that cannot be served; the message says which row or parameter and why."""


@dataclass(frozen=True)
class Options:
    """How a predicted mask becomes the returned picture (the names and meanings of KINDS)."""

    output: str
    threshold: float | None
    background: str
    bg_color: tuple[int, int, int]
    bg_image: np.ndarray | None = field(compare=False, repr=False)  # (H, W, 3) uint8, decoded and capped
    bg_blur: float
    estimate_foreground: bool
    matting: bool
    main_object: bool | None
    sharpen: float | None

    def refine(self, own: Refine) -> Refine:
        """The served model's refinement (`own`) with this request's overrides."""
        from bgremoval.serving.refine import Refine  # scipy: not for the CLI's flags, which read this module

        return Refine(own.flip, own.main_object if self.main_object is None else self.main_object,
                      own.sharpen if self.sharpen is None else self.sharpen)


def parse_color(text: str, name: str = "bg_color") -> tuple[int, int, int]:
    """'#00ff00', '00ff00', '0,255,0' or a CSS name such as 'white' -> (r, g, b)."""
    value = str(text).strip()
    try:
        if "," in value:
            parts = tuple(int(p) for p in value.split(","))
            if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
                raise ValueError
            return parts  # type: ignore[return-value]
        if len(value) == 6 and all(c in "0123456789abcdefABCDEF" for c in value):
            value = "#" + value
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        raise RequestError(
            f"{name} {text!r} is not a colour; use '#rrggbb', 'r,g,b' (0-255) or a CSS name like 'white'"
        ) from None


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
        return load_rgb(raw, max_pixels, label=label, limit_name=MAX_PIXELS_NAME)
    except ImageReadError as exc:
        raise RequestError(str(exc)) from None


def _number(name: str, value: Any, meaning: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise RequestError(f"{name} {value!r} is not a number ({meaning})")
    return number


def _threshold(value: Any) -> float | None:
    if value is None:
        return None
    threshold = _number("threshold", value, "a probability in [0, 1]; negative for a soft mask")
    if threshold < 0:  # a negative threshold means "soft mask": for a model whose default threshold is not
        return None
    if threshold > 1:
        raise RequestError(f"threshold {threshold} is outside [0, 1] (or negative for a soft mask)")
    return threshold


def _switch(name: str, value: Any, unset: bool = False) -> bool | None:
    """true/false (a JSON boolean, 0/1 or their words); with `unset`, also null or 'default' -> None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if unset and (value is None or str(value).strip().lower() == "default"):
        return None
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in TRUE or word in FALSE:
        return word in TRUE
    if unset:
        raise RequestError(f"{name} {value!r} is not true, false or null (null or 'default': the model's own "
                           "refinement)")
    raise RequestError(f"{name} {value!r} is not true or false")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    word = str(value).strip().lower()
    if word not in choices:
        raise RequestError(f"{name} {value!r} is not one of {', '.join(choices)}")
    return word


def _bg_blur(value: Any) -> float:
    meaning = f"the blur's standard deviation in % of the photo's shorter side, in (0, {MAX_BLUR:g}]"
    blur = _number("bg_blur", value, meaning)
    if not 0 < blur <= MAX_BLUR:
        raise RequestError(f"bg_blur {blur:g} is outside (0, {MAX_BLUR:g}] ({meaning})")
    return blur


def _sharpen(value: Any) -> float | None:
    if value is None:
        return None
    sharpen = _number("sharpen", value, "k > 0 overrides the model's sharpening, 1: none; "
                                        "null, 0 or negative: the model's own")
    return sharpen if sharpen > 0 else None


def _bg_image(value: Any, max_pixels: int) -> np.ndarray | None:
    """A base64 image (a request's), an already-read (H, W, 3) uint8 array (the CLI's file), or None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8 or value.shape[0] * value.shape[1] == 0:
            raise RequestError(f"bg_image: expected an RGB image, got an array of shape {value.shape} ({value.dtype})")
        return value
    return decode_base64_image(value, max_pixels, "bg_image")


def check_defaults(defaults: dict[str, Any]) -> None:
    """A served model's defaults name every option and nothing else (and parse: see options_from)."""
    missing, extra = sorted(set(KINDS) - set(defaults)), sorted(set(defaults) - set(KINDS))
    if missing or extra:
        raise ValueError(
            "serve.defaults must name every request option (" + ", ".join(KINDS) + ")"
            + (f"; missing {', '.join(missing)}" if missing else "") + (f"; unknown {', '.join(extra)}" if extra else "")
            + ". A model exported with other options is served by the code it was logged with; "
              "re-export it (`dvc repro export`) to use it here")


def options_from(request: dict[str, Any] | None, defaults: dict[str, Any], max_pixels: int) -> Options:
    """Options from a request's params (strings, numbers or booleans; missing, null or empty ones take
    `defaults`, the served model's serve.defaults), with errors naming the parameter. A background image
    is decoded here (base64, at most `max_pixels`)."""
    check_defaults(defaults)
    unknown = sorted(set(request or {}) - set(defaults))
    if unknown:
        raise RequestError(f"unknown parameter(s) {', '.join(unknown)}; the parameters are {', '.join(sorted(defaults))}")
    given = {k: v for k, v in (request or {}).items() if v is not None and not (isinstance(v, str) and v == "")}
    merged = {**defaults, **given}
    opts = Options(
        output=_choice("output", merged["output"], OUTPUTS),
        threshold=_threshold(merged["threshold"]),
        background=_choice("background", merged["background"], BACKGROUNDS),
        bg_color=parse_color(merged["bg_color"]),
        bg_image=_bg_image(merged["bg_image"], max_pixels),
        bg_blur=_bg_blur(merged["bg_blur"]),
        estimate_foreground=bool(_switch("estimate_foreground", merged["estimate_foreground"])),
        matting=bool(_switch("matting", merged["matting"])),
        main_object=_switch("main_object", merged["main_object"], unset=True),
        sharpen=_sharpen(merged["sharpen"]),
    )
    if opts.bg_image is not None and (opts.output != "composite" or opts.background != "image"):
        raise RequestError(f"bg_image is used only with output 'composite' and background 'image' (here: "
                           f"output {opts.output!r}, background {opts.background!r}); set both, or leave bg_image out")
    if opts.output == "composite" and opts.background == "image" and opts.bg_image is None:
        raise RequestError("background 'image' needs bg_image: the background picture, base64-encoded "
                           "(`bgremoval predict --bg-image FILE`)")
    return opts
