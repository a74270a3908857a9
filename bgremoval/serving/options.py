"""What one request (or one `bgremoval predict` run) asks for: one set of names, one set of defaults.

The names are the keys of params.yaml's serve.defaults; their values there are logged with the served
model and are what a request gets when it names none. The server's params and the CLI's flags are
these same names, parsed by the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import ImageColor

OUTPUTS = ("mask", "cutout", "composite")


class RequestError(ValueError):
    """Input that cannot be served; the message says which row or parameter and why."""


@dataclass(frozen=True)
class Options:
    """How a predicted mask becomes the returned picture."""

    output: str                       # mask | cutout | composite
    threshold: float | None           # None: soft alpha; else alpha = prob >= threshold
    bg_color: tuple[int, int, int]    # composite's background colour


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


def _threshold(value: Any) -> float | None:
    if value is None:
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"threshold {value!r} is not a number") from None
    if threshold < 0:  # a negative threshold means "soft mask" (a request cannot send null for a double)
        return None
    if threshold > 1:
        raise RequestError(f"threshold {threshold} is outside [0, 1] (or negative for a soft mask)")
    return threshold


def options_from(request: dict[str, Any] | None, defaults: dict[str, Any]) -> Options:
    """Options from a request's params (strings or numbers; missing or empty ones take `defaults`, the
    served model's serve.defaults), with errors naming the parameter."""
    unknown = sorted(set(request or {}) - set(defaults))
    if unknown:
        raise RequestError(f"unknown parameter(s) {', '.join(unknown)}; the parameters are {', '.join(sorted(defaults))}")
    given = {k: v for k, v in (request or {}).items() if v is not None and v != ""}
    merged = {**defaults, **given}
    output = str(merged["output"]).lower()
    if output not in OUTPUTS:
        raise RequestError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")
    return Options(output=output, threshold=_threshold(merged["threshold"]), bg_color=parse_color(merged["bg_color"]))
