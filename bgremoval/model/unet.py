"""A from-scratch U-Net: for users without pretrained weights, and for fast tests."""

from __future__ import annotations

import keras
from keras import layers


def _conv_block(x, filters: int, separable: bool, name: str):
    """Two 3x3 convolutions with batch norm and ReLU: the U-Net's basic unit."""
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    for i in range(2):
        x = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        # momentum 0.9, not 0.99: short CPU schedules end before 0.99 moving averages settle
        x = layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(filters: list[int], separable: bool = False, input_shape=(None, None, 3), name: str = "unet") -> keras.Model:
    """U-Net with one encoder level per entry of `filters` (the last is the bottleneck).

    Input RGB in [0, 1]; output the foreground probability (B, H, W, 1). Fully convolutional:
    any H and W divisible by 2 ** (len(filters) - 1).
    """
    inputs = keras.Input(input_shape, name="image")
    x, skips = inputs, []
    # Encoder: convolve, remember the features for the decoder, halve the resolution.
    for level, f in enumerate(filters[:-1]):
        x = _conv_block(x, f, separable, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, filters[-1], separable, "bottleneck")
    # Decoder: double the resolution, join the encoder's features at that scale, convolve.
    for level, f in reversed(list(enumerate(filters[:-1]))):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, f, separable, f"dec{level}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(inputs, outputs, name=name)
