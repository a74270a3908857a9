"""A served model, loaded: its network (onnxruntime or Keras), its configuration, and the caps it enforces."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bgremoval.serving.config import ServingConfig
from bgremoval.serving.options import MAX_PIXELS_ENV, MAX_REQUEST_ENV, Options
from bgremoval.serving.refine import Predictor, Refine, refined


def _positive(env: str, logged: float) -> float:
    """A positive number from an environment override, else the value the model was logged with."""
    text = os.environ.get(env)
    if not text:
        return float(logged)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{env}={text!r} is not a positive number; unset it or give one, e.g. {env}={logged:g}")
    return value


@dataclass
class Served:
    """What serving needs of one model: (H, W, 3) uint8 in, (H, W) probability out, refined as configured."""

    config: ServingConfig
    network: Predictor    # the bare network at config.size, before any refinement
    max_pixels: int       # config.max_pixels, or $BGREMOVAL_MAX_PIXELS where the model is served
    max_request_mb: float

    @classmethod
    def open(cls, model_file: Path, config: ServingConfig) -> "Served":
        """The served file with its configuration (the runtime each needs is imported here, and only it)."""
        if config.runtime == "onnxruntime":
            from bgremoval.serving.runtime import OnnxSegmenter

            network = OnnxSegmenter(Path(model_file), config.size)
        else:
            from bgremoval.serving.runtime import KerasSegmenter

            network = KerasSegmenter.load(Path(model_file), config.size)
        return cls(config, network, int(_positive(MAX_PIXELS_ENV, config.max_pixels)),
                   _positive(MAX_REQUEST_ENV, config.max_request_mb))

    @classmethod
    def from_folder(cls, folder: Path) -> "Served":
        """A served folder as the export stage writes it: serving.json and the file it names."""
        config = ServingConfig.read(folder)
        return cls.open(Path(folder) / config.model_file, config)

    def predictor(self, refine: Refine | None = None) -> Predictor:
        """The network with a refinement: the configured one unless another is given."""
        return refined(self.network, self.config.refine if refine is None else refine)

    def predictor_for(self, opts: Options) -> Predictor:
        """The network refined as a request's options ask: the configured refinement, overridden by the
        main_object and sharpen they name."""
        return self.predictor(opts.refine(self.config.refine))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.predictor()(image)
