"""rembg's stock models exactly as rembg runs them: the competition every benchmark compares against.

rembg: RGB, LANCZOS to 320x320, divide by the image's maximum, ImageNet mean/std; onnxruntime;
the first output min-max normalised, made 8-bit, and resized back to the image with LANCZOS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bgremoval.network_io import MEAN, STD
from bgremoval.serving.runtime import OnnxSegmenter, providers

REMBG_SIZE = 320  # rembg feeds every U²-Net model a 320 x 320 image


def preprocess_like_rembg(image: Image.Image) -> np.ndarray:
    """rembg's input: RGB, LANCZOS to 320 x 320, / max pixel, ImageNet-normalised; float32 (1, 320, 320, 3)."""
    im = np.asarray(image.convert("RGB").resize((REMBG_SIZE, REMBG_SIZE), Image.LANCZOS))
    # rembg scales by the image's own maximum (not 255) and normalises in float64 before the cast.
    scaled = im / max(float(np.max(im)), 1e-6)
    normalised = (scaled - MEAN.astype(np.float64)) / STD.astype(np.float64)
    return normalised[np.newaxis].astype(np.float32)


class RembgModel:
    """A stock rembg ONNX model (u2netp.onnx, u2net.onnx): (H, W, 3) uint8 in, (H, W) in [0, 1] out."""

    def __init__(self, onnx_path: Path):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), providers=providers())
        self.input = self.session.get_inputs()[0].name

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def normalised(self, image: np.ndarray) -> np.ndarray:
        """The first output at 320x320, min-max normalised to [0, 1]: the mask before rembg makes it 8-bit."""
        x = preprocess_like_rembg(Image.fromarray(image)).transpose(0, 3, 1, 2)
        pred = self.session.run(None, {self.input: x})[0][0, 0]
        lo, hi = float(pred.min()), float(pred.max())
        return (pred - lo) / max(hi - lo, 1e-12)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        mask = Image.fromarray((self.normalised(image) * 255).astype(np.uint8), mode="L")
        back = mask.resize((image.shape[1], image.shape[0]), Image.Resampling.LANCZOS)
        return np.asarray(back, np.float32) / 255
