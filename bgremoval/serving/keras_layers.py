"""The custom Keras layers a saved network of this project contains, registered on import: the Keras runtime
imports this module before it loads a .keras file, so serving needs nothing of bgremoval.model."""

from __future__ import annotations

import keras
from keras import layers, ops

from bgremoval.serving.runtime import MEAN, STD


@keras.saving.register_keras_serializable(package="bgremoval")
class RembgNormalize(layers.Layer):
    """serving.runtime.preprocess inside the graph: divide by the image's max, then ImageNet mean/std."""

    def call(self, x):
        peak = ops.maximum(ops.max(x, axis=(1, 2, 3), keepdims=True), 1e-6)
        return (x / peak - ops.convert_to_tensor(MEAN)) / ops.convert_to_tensor(STD)
