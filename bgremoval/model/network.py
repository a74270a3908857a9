"""The network a run trains: U²-NetP with rembg's pretrained weights, or a U-Net from scratch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras

from bgremoval.model.u2netp import ENCODER_STAGES, pretrained_u2netp
from bgremoval.model.unet import build_unet
from bgremoval.keras_layers import RembgNormalize

FAMILIES = ("u2netp", "unet")


@dataclass(frozen=True)
class ModelConfig:
    """Which network, and how big (params.yaml model:)."""

    family: str                 # u2netp (pretrained) | unet (from scratch)
    unet_filters: list[int]     # one encoder level per entry, the last the bottleneck
    unet_separable: bool        # depthwise-separable convolutions in the U-Net
    onnx_path: str | None       # u2netp.onnx; None = the one inside the installed rembg wheel


def build_network(cfg: ModelConfig) -> keras.Model:
    """The network for [0, 1] RGB input of any size; U²-NetP returns [fused, side1..side6], the U-Net one mask.
    Both normalise their input as rembg does (RembgNormalize), so both serve from ONNX graphs that take
    network_io.preprocess's input."""
    if cfg.family not in FAMILIES:
        raise ValueError(f"model.family must be one of {FAMILIES}; got {cfg.family!r}")
    inputs = keras.Input((None, None, 3), name="image")
    normalized = RembgNormalize(name="rembg_normalize")(inputs)
    if cfg.family == "unet":
        return keras.Model(inputs, build_unet(cfg.unet_filters, cfg.unet_separable)(normalized), name="unet_from_scratch")
    return keras.Model(inputs, list(pretrained_u2netp(cfg.onnx_path)(normalized)), name="u2netp_finetune")


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
    body = unet_core(network)
    return [l for l in (network if body is None else body).layers if l.name.startswith(("enc", "bottleneck"))]


def load_model(path: Path) -> keras.Model:
    """A saved inference model of this project (its custom layers are registered by this module's imports)."""
    return keras.models.load_model(Path(path), compile=False)


def _inner(model: keras.Model, name: str) -> keras.Model | None:
    return next((layer for layer in getattr(model, "layers", []) if layer.name == name), None)


def u2netp_core(model: keras.Model) -> keras.Model | None:
    """The U²-NetP sub-model inside a saved inference model (or the model itself); None for other networks."""
    inner = _inner(model, "u2netp")
    return inner if inner is not None else (model if model.name == "u2netp" else None)


def unet_core(model: keras.Model) -> keras.Model | None:
    """The U-Net inside a network build_network made (behind RembgNormalize); None for other networks, a bare
    build_unet model included (its input is not normalised as ONNX serving feeds it)."""
    return _inner(model, "unet")
