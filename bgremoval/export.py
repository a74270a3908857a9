"""ONNX export of a fine-tuned U²-NetP, and an onnxruntime segmenter for serving it.

The Keras U²-NetP was built from rembg's ONNX graph (bgremoval/u2netp.py), conv by conv, so the
export is the exact inverse: the fine-tuned kernels and biases are written back into a copy of
that same graph. The served graph is then the one stock u2netp runs in rembg, with new weights:
same operators, same speed, and a like-for-like comparison. Preprocessing (squash to size x size,
scale by the image's maximum, ImageNet mean/std) runs in numpy, as rembg does it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


class ExportError(RuntimeError):
    """The model cannot be exported, or the export does not match Keras."""


def u2netp_core(model):
    """The U²-NetP sub-model inside a saved inference model (or the model itself)."""
    for layer in getattr(model, "layers", []):
        if layer.name == "u2netp":
            return layer
    if model.name == "u2netp":
        return model
    raise ExportError(f"model {model.name!r} has no U²-NetP inside: ONNX export supports model.family u2netp only")


def export_u2netp(model, out: Path, size: int, template: Path | None = None) -> Path:
    """Write `model`'s U²-NetP weights into rembg's u2netp graph, fixed at 1x3xSIZExSIZE, fused output only."""
    import onnx
    from onnx import numpy_helper

    from bgremoval.u2netp import conv_names_in_forward_order, find_u2netp_onnx

    core = u2netp_core(model)
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
    for dim, value in zip(graph.input[0].type.tensor_type.shape.dim, (1, 3, size, size)):
        dim.dim_value = value
    for dim, value in zip(fused.type.tensor_type.shape.dim, (1, 1, size, size)):
        dim.dim_value = value
    onnx.checker.check_model(graph_model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, str(out))
    return out


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, size, size) float32: what the Keras model's RembgNormalize does."""
    x = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255
    x = x / max(float(x.max()), 1e-6)
    return ((x - _MEAN) / _STD).transpose(2, 0, 1)[None].astype(np.float32)


class OnnxSegmenter:
    """Same contract as serving.Segmenter: (H, W, 3) uint8 in, (H, W) probability out, via onnxruntime."""

    def __init__(self, path: Path, size: int, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.size = int(size)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """(1, 3, size, size) preprocessed -> (size, size) probability."""
        return self.session.run(None, {self.input: x})[0][0, 0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        prob = self.probability(preprocess(image, self.size))
        back = Image.fromarray(prob.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
        return np.clip(np.asarray(back), 0.0, 1.0)


@dataclass(frozen=True)
class ExportCheck:
    """How far onnxruntime's fused probabilities are from Keras' on the same images."""

    max_abs: float        # worst pixel
    mean_abs: float
    share_over: float     # share of pixels differing by more than the tolerance

    def passes(self, tolerance: float, max_share: float = 1e-4, hard_max: float = 1e-3) -> bool:
        return self.share_over <= max_share and self.max_abs <= hard_max


def compare(model, onnx_path: Path, size: int, images: list[np.ndarray], tolerance: float = 1e-4) -> ExportCheck:
    """Keras vs onnxruntime on the images at `size` (both are float32: through 119 convs their
    rounding differs at the 1e-4 level on a few pixels, and by ~4e-8 on average)."""
    seg = OnnxSegmenter(onnx_path, size)
    diffs = []
    for image in images:
        x = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255
        keras_prob = np.asarray(model.predict_on_batch(x[None]))[0, ..., 0]
        diffs.append(np.abs(keras_prob.astype(np.float64) - seg.probability(preprocess(image, size))).ravel())
    d = np.concatenate(diffs)
    return ExportCheck(float(d.max()), float(d.mean()), float((d > tolerance).mean()))


def export_checked(model, out: Path, size: int, images: list[np.ndarray], tolerance: float = 1e-4,
                   template: Path | None = None) -> ExportCheck:
    """Export and check it against Keras on real images: all but 0.01 % of pixels within
    `tolerance`, none beyond 1e-3; else ExportError."""
    export_u2netp(model, out, size, template)
    check = compare(model, out, size, images, tolerance)
    if not check.passes(tolerance):
        raise ExportError(f"ONNX export differs from Keras at {size}x{size}: max {check.max_abs:.2e}, "
                          f"{check.share_over:.4%} of pixels over {tolerance:.0e}; serve it with Keras (serve.runtime: keras) "
                          "or, if the difference is acceptable, raise serve.onnx_tolerance")
    log.info("exported %s (%.1f MB): |Keras - onnxruntime| max %.1e, mean %.1e, %.4f%% of pixels over %.0e",
             out, Path(out).stat().st_size / 1e6, check.max_abs, check.mean_abs, 100 * check.share_over, tolerance)
    return check

