"""Refining a predicted mask at serving time: mirror averaging, keeping the main object, sharper edges.

Each is chosen on the val split by the export stage (export.refine) and travels with the served model as
its default, so the server, the CLI and the benchmarks all cut out with the same refinement; a request
may override it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (H, W) float in [0, 1]

# Pixels above this belong to an object when the main one is picked: low enough that an object's soft rim
# stays attached to it, high enough that two objects touching through a faint halo stay apart.
MAIN_OBJECT_THRESHOLD = 0.3


@dataclass(frozen=True)
class Refine:
    """How the mask of one forward pass becomes the served one."""

    flip: bool          # average with the mask of the mirrored image (two forward passes)
    main_object: bool   # keep only the connected object with the most foreground
    sharpen: float      # k in p^k / (p^k + (1 - p)^k): > 1 makes soft edges more decisive

    def __post_init__(self):
        if not self.sharpen > 0:
            raise ValueError(f"refine: sharpen must be positive; got {self.sharpen}")

    @classmethod
    def none(cls) -> "Refine":
        """The mask as the network gives it."""
        return cls(False, False, 1.0)

    @property
    def cost(self) -> int:
        """Forward passes per image."""
        return 2 if self.flip else 1

    @property
    def name(self) -> str:
        parts = [p for p, on in (("flip", self.flip), ("main_object", self.main_object)) if on]
        if self.sharpen != 1.0:
            parts.append(f"sharpen {self.sharpen:g}")
        return "+".join(parts) or "none"

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, value: dict) -> "Refine":
        """From a serving config's `refine` entry."""
        if set(value) != {"flip", "main_object", "sharpen"}:
            raise ValueError(f"refine: keys {sorted(value)}; expected flip, main_object, sharpen")
        return cls(bool(value["flip"]), bool(value["main_object"]), float(value["sharpen"]))


def sharpen(prob: np.ndarray, k: float) -> np.ndarray:
    """p^k / (p^k + (1 - p)^k): 0, 0.5 and 1 stay where they are, so IoU at 0.5 and the ranking of
    pixels (max F) are unchanged; only how soft the edges are changes (and with it MAE)."""
    if k == 1.0:
        return prob
    p = np.clip(np.asarray(prob, np.float32), 0.0, 1.0)
    with np.errstate(divide="ignore", over="ignore"):  # the same as 1 / (1 + ((1 - p) / p)^k): p = 0 gives 0
        return (1.0 / (1.0 + np.power((1.0 - p) / p, np.float32(k)))).astype(np.float32)


def keep_main_object(prob: np.ndarray, threshold: float = MAIN_OBJECT_THRESHOLD) -> np.ndarray:
    """The mask with every connected object but the one with the most foreground (pixels >= 0.5) set to 0.
    An object is a connected region above `threshold` (8-neighbourhood), so its soft rim comes with it."""
    from scipy import ndimage  # here, not at the top: a mask served without main_object never needs scipy

    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3), bool))
    if n <= 1:
        return prob
    foreground = np.bincount(labels[prob >= 0.5], minlength=n + 1)[1:]  # per object (label 0: the background)
    if foreground.max() <= 0:
        return prob  # nothing is foreground: no object to prefer
    return (prob * (labels == int(np.argmax(foreground)) + 1)).astype(np.float32)


def combine(plain: np.ndarray, mirrored: np.ndarray | None, refine: Refine) -> np.ndarray:
    """One forward pass's mask (and the mirrored image's, mirrored back) -> the refined mask."""
    prob = plain
    if refine.flip:
        if mirrored is None:
            raise ValueError("refine.flip needs the mirrored image's mask")
        prob = (plain + mirrored) / 2
    if refine.main_object:  # on the unsharpened mask: which object is kept does not depend on the sharpening
        prob = keep_main_object(prob)
    return np.clip(sharpen(prob, refine.sharpen), 0.0, 1.0)


def mirrored_prediction(predict: Predictor, image: np.ndarray) -> np.ndarray:
    """The mask of the left-right mirrored image, mirrored back onto the image."""
    return predict(np.ascontiguousarray(image[:, ::-1]))[:, ::-1]


def refined(predict: Predictor, refine: Refine) -> Predictor:
    """`predict` with the refinement; `predict` itself when there is none to apply."""
    return predict if refine == Refine.none() else Refined(predict, refine)


class Refined:
    """A predictor with its refinement: the same contract, (H, W, 3) uint8 in, (H, W) in [0, 1] out."""

    def __init__(self, predict: Predictor, refine: Refine):
        self.predict, self.refine = predict, refine

    @property
    def size(self) -> int:
        """The wrapped segmenter's input size."""
        return self.predict.size  # type: ignore[attr-defined]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        mirrored = mirrored_prediction(self.predict, image) if self.refine.flip else None
        return combine(self.predict(image), mirrored, self.refine)
