"""The network a run trains: U²-NetP with rembg's pretrained weights, or a U-Net from scratch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers, ops

from bgremoval.model.u2netp import ENCODER_STAGES, pretrained_u2netp
from bgremoval.model.unet import build_unet
from bgremoval.serving.runtime import MEAN, STD

FAMILIES = ("u2netp", "unet")


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and how big (params.yaml model:)."""

    family: str                 # u2netp (pretrained) | unet (from scratch)
    unet_filters: list[int]     # one encoder level per entry, the last the bottleneck
    unet_separable: bool        # depthwise-separable convolutions in the U-Net
    onnx_path: str | None       # u2netp.onnx; None = the one inside the installed rembg wheel


@keras.saving.register_keras_serializable(package="bgremoval")
class RembgNormalize(layers.Layer):
    """serving.runtime.preprocess inside the graph: divide by the image's max, then ImageNet mean/std."""

    def call(self, x):
        peak = ops.maximum(ops.max(x, axis=(1, 2, 3), keepdims=True), 1e-6)
        return (x / peak - ops.convert_to_tensor(MEAN)) / ops.convert_to_tensor(STD)


def build_network(cfg: ModelConfig) -> keras.Model:
    """The network for [0, 1] RGB input of any size; U²-NetP returns [fused, side1..side6], the U-Net one mask."""
    if cfg.family == "unet":
        return build_unet(cfg.unet_filters, cfg.unet_separable)
    if cfg.family == "u2netp":
        net = pretrained_u2netp(cfg.onnx_path)
        inputs = keras.Input((None, None, 3), name="image")
        outputs = net(RembgNormalize(name="rembg_normalize")(inputs))
        return keras.Model(inputs, list(outputs), name="u2netp_finetune")
    raise ValueError(f"model.family must be one of {FAMILIES}; got {cfg.family!r}")


def inference_model(network: keras.Model) -> keras.Model:
    """[0, 1] RGB -> fused foreground probability (B, H, W, 1): what is saved, exported and served."""
    # One input tensor, not a list of one: callers pass a plain batch without structure warnings.
    return keras.Model(network.inputs[0], network.outputs[0], name="bgremoval")


def encoder_layers(network: keras.Model) -> list[keras.layers.Layer]:
    """The layers that are frozen during the first train.freeze_epochs."""
    if network.name == "u2netp_finetune":
        # Layers are named after the PyTorch modules (stage3.rebnconv1, ...); decoder stages end in "d".
        stages = {name for name, _, _ in ENCODER_STAGES}
        return [l for l in network.get_layer("u2netp").layers if l.name.split(".")[0] in stages]
    return [l for l in network.layers if l.name.startswith(("enc", "bottleneck"))]


def load_model(path: Path) -> keras.Model:
    """A saved inference model of this project (its custom layers are registered by this module's imports)."""
    return keras.models.load_model(Path(path), compile=False)


def u2netp_core(model: keras.Model) -> keras.Model | None:
    """The U²-NetP sub-model inside a saved inference model (or the model itself); None for other networks."""
    for layer in getattr(model, "layers", []):
        if layer.name == "u2netp":
            return layer
    return model if model.name == "u2netp" else None
