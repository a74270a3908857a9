"""How a network turns an image into a mask: the two runtimes a served model can use (the input and output
conventions are bgremoval.network_io's).

onnxruntime serves the exported graphs (U²-NetP in rembg's own graph with this project's weights, the
U-Net in its own); a .keras file (export.runtime: keras) runs in Keras, imported only then. Both take
(H, W, 3) uint8 and return the (H, W) foreground probability at the image's own size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from bgremoval.network_io import preprocess, resize_back, squash

log = logging.getLogger(__name__)

PROVIDERS_ENV = "BGREMOVAL_ORT_PROVIDERS"  # e.g. CUDAExecutionProvider,CoreMLExecutionProvider
THREADS_ENV = "BGREMOVAL_THREADS"  # onnxruntime intra-op threads (unset: all cores)


def providers() -> list[str]:
    """onnxruntime's execution providers: those named in $BGREMOVAL_ORT_PROVIDERS that this onnxruntime
    build has, in that order, then the CPU (always there, always last)."""
    import onnxruntime as ort

    wanted = [p.strip() for p in os.environ.get(PROVIDERS_ENV, "").split(",") if p.strip()]
    available = set(ort.get_available_providers())
    missing = [p for p in wanted if p not in available]
    if missing:
        log.warning("%s: %s not in this onnxruntime build (it has %s); using the rest and the CPU", PROVIDERS_ENV,
                    ", ".join(missing), ", ".join(sorted(available)))
    return [p for p in wanted if p in available and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]


def threads() -> int | None:
    """onnxruntime's intra-op threads from $BGREMOVAL_THREADS (None: onnxruntime's own choice)."""
    text = os.environ.get(THREADS_ENV, "")
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{THREADS_ENV}={text!r} is not a positive whole number; unset it or give one, e.g. 2")
    return int(text)


class OnnxSegmenter:
    """A U²-Net-style ONNX graph at a square input size (its height and width may be symbolic)."""

    def __init__(self, path: Path, size: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads():
            opts.intra_op_num_threads = threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path, self.size = Path(path), int(size)
        self.session = ort.InferenceSession(str(path), opts, providers=providers())
        self.input = self.session.get_inputs()[0].name

    def probability(self, x: np.ndarray) -> np.ndarray:
        """(1, 3, size, size) preprocessed -> (size, size) probability (the graph's first, fused output)."""
        return self.session.run(None, {self.input: x})[0][0, 0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return resize_back(self.probability(preprocess(image, self.size)), w, h)


class KerasSegmenter:
    """A saved Keras model (RGB in [0, 1] -> probability) at a square input size."""

    def __init__(self, model, size: int):
        self.model, self.size = model, int(size)
        self._forward = None

    @classmethod
    def load(cls, path: Path, size: int) -> "KerasSegmenter":
        from bgremoval.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
        import keras

        import bgremoval.keras_layers  # noqa: F401 - registers the layers the file may contain

        return cls(keras.models.load_model(Path(path), compile=False), size)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(1, size, size, 3) float32 in [0, 1] -> (1, size, size, 1) probability, through a graph traced once
        for this size. (Keras' own predict function is shared by every caller of the model: called at a second
        size it retraces with unknown height and width, which bilinear upsampling cannot trace.)"""
        if self._forward is None:
            import tensorflow as tf

            spec = tf.TensorSpec((1, self.size, self.size, 3), tf.float32)
            self._forward = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        return np.asarray(self._forward(batch))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        return resize_back(self.forward(squash(image, self.size)[None])[0, ..., 0], w, h)
