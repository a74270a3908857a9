"""The network's input and output, as U²-Net and rembg define them: what both training and serving feed a network
and read back from it. It imports only numpy and Pillow, so the served model carries it and training needs
nothing of serving."""

from __future__ import annotations

import numpy as np
from PIL import Image

# U²-Net's input normalisation (ImageNet statistics), as rembg applies it: the Keras model's
# RembgNormalize layer is the in-graph copy of `preprocess` here.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def squash(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) float32 in [0, 1]: the whole image, aspect ratio not kept (as trained)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, size, size) float32: squashed, scaled by its own maximum, normalised."""
    x = squash(image, size)
    x = x / max(float(x.max()), 1e-6)
    return ((x - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def resize_back(prob: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (size, size) probability map -> (height, width) in [0, 1]."""
    back = Image.fromarray(np.asarray(prob, np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(back), 0.0, 1.0)
