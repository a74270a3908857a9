"""rembg's stock models exactly as rembg runs them: the competition every benchmark compares against.

rembg: RGB, LANCZOS to 320x320, divide by the image's maximum, ImageNet mean/std; onnxruntime;
the first output min-max normalised, made 8-bit, and resized back to the image with LANCZOS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bgremoval.u2netp import preprocess_like_rembg

REMBG_SIZE = 320


class RembgModel:
    """A stock rembg ONNX model (u2netp.onnx, u2net.onnx): (H, W, 3) uint8 in, (H, W) in [0, 1] out."""

    def __init__(self, onnx_path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6

    def normalised(self, image: np.ndarray) -> np.ndarray:
        """The first output at 320x320, min-max normalised to [0, 1]: the mask before rembg makes it 8-bit."""
        x = preprocess_like_rembg(Image.fromarray(image), REMBG_SIZE).transpose(0, 3, 1, 2)
        pred = self.session.run(None, {self.input: x})[0][0, 0]
        lo, hi = float(pred.min()), float(pred.max())
        return (pred - lo) / max(hi - lo, 1e-12)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        mask = Image.fromarray((self.normalised(image) * 255).astype(np.uint8), mode="L")
        back = mask.resize((image.shape[1], image.shape[0]), Image.Resampling.LANCZOS)
        return np.asarray(back, np.float32) / 255
