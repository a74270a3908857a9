"""The custom Keras layers a saved network of this project contains, registered on import: the Keras runtime
imports this module before it loads a .keras file, so serving needs nothing of bgremoval.model,
and the model code takes its layers from here, below both."""

from __future__ import annotations

import keras
from keras import layers, ops

from bgremoval.network_io import MEAN, STD


@keras.saving.register_keras_serializable(package="bgremoval")
class RembgNormalize(layers.Layer):
    """network_io.preprocess inside the graph: divide by the image's max, then ImageNet mean/std."""

    def call(self, x):
        peak = ops.maximum(ops.max(x, axis=(1, 2, 3), keepdims=True), 1e-6)
        return (x / peak - ops.convert_to_tensor(MEAN)) / ops.convert_to_tensor(STD)


@keras.saving.register_keras_serializable(package="bgremoval")  # so saved .keras models load by name
class ResizeLike(layers.Layer):
    """Bilinearly resize `x` to the spatial size of `reference` (PyTorch `_upsample_like`)."""

    def call(self, x, reference):
        # The ONNX graph uses Resize(mode=linear, coordinate_transformation_mode=pytorch_half_pixel)
        # to a target *size*: src = (dst + 0.5) * in/out - 0.5, clamped at the border, no antialias.
        # tf.image.resize(bilinear, antialias=False) is the same half-pixel-centre formula (with
        # the same clamping), so non-integer ratios such as 3 -> 5 from ceil-mode pooling match too.
        # tf.image.resize takes the size as a tensor: keras.ops.image.resize wants Python ints and
        # fails when a traced predict function meets a second input size (dynamic shapes).
        import tensorflow as tf

        return tf.image.resize(x, tf.shape(reference)[1:3], method="bilinear", antialias=False)

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])
