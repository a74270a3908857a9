"""Serving the exported U²-NetP faster: static int8 quantisation, kept only when it keeps quality."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bgremoval.export import ExportCheck, ExportError, OnnxSegmenter, export_checked, preprocess
from bgremoval.refine import Refine, refined

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


class _Calibration:
    """Feeds preprocessed images to onnxruntime's static quantisation (an ORT CalibrationDataReader)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self.items, None)


def outlier_nodes(model: Path, batches: list[np.ndarray], ratio: float) -> list[str]:
    """Nodes to keep in float32 because a conv's input has an outlier channel.

    uint8 activations share one scale per tensor. When one channel of a conv's input spans `ratio`
    times the range of the median live channel, that scale leaves the other channels a handful of
    levels. Stock U²-NetP has one such tensor: the input of stage2d's last conv carries a nearly
    constant channel at ~228 beside a median of ~13; quantising that conv alone took DAVIS IoU
    from 0.76 to 0.56, and keeping it and its Concat in float32 restores 0.77 (README). Returned:
    the producer and every consumer of each such tensor (both would otherwise put Q/DQ on it).
    """
    import onnx
    import onnxruntime as ort

    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    inputs = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    tensors = list(dict.fromkeys(n.input[0] for n in graph.node if n.op_type == "Conv" and n.input[0] not in inputs))
    known = {o.name for o in graph.output}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in known)
    session = ort.InferenceSession(graph_model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    peaks: dict[str, np.ndarray] = {}
    for batch in batches:
        for tensor, value in zip(tensors, session.run(tensors, {name: batch})):
            peak = np.abs(value).max(axis=(0, 2, 3))  # per channel (NCHW)
            peaks[tensor] = np.maximum(peaks.get(tensor, peak), peak)
    flagged = []
    for tensor, peak in peaks.items():
        live = peak[peak > 1e-6]
        if live.size > 1 and live.max() > ratio * np.median(live):
            flagged.append(tensor)
            log.info("int8: %s has a channel at %.1f x its median channel's range: kept in float32", tensor,
                     live.max() / np.median(live))
    nodes = [n.name for n in graph.node if any(t in flagged for t in (*n.input, *n.output))]
    return list(dict.fromkeys(nodes))


def quantize_int8(f32: Path, out: Path, calibration: list[np.ndarray], size: int,
                  outlier_ratio: float = float("inf")) -> tuple[Path, list[str]]:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real images; deterministic.
    Convs whose input has an outlier channel (> outlier_ratio x the median channel's range) stay in
    float32 with their neighbours (outlier_nodes). Returns the int8 model and the nodes kept float32."""
    import tempfile

    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        v13 = Path(tmp) / "opset13.onnx"  # per-channel DequantizeLinear needs opset 13; rembg's graph is 11
        onnx.save(version_converter.convert_version(onnx.load(str(f32)), 13), str(v13))
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(v13), str(pre))
        name = onnx.load(str(pre)).graph.input[0].name
        batches = [preprocess(image, size) for image in calibration]
        keep = outlier_nodes(pre, batches, outlier_ratio) if np.isfinite(outlier_ratio) else []
        quantize_static(str(pre), str(out), _Calibration(name, batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    return Path(out), keep


@dataclass(frozen=True)
class ServedOnnx:
    """What register serves, and what choosing it cost."""

    path: Path
    quantized: bool
    check: ExportCheck             # float32 export vs Keras
    metrics_f32: dict | None       # float32 ONNX on the holdout rows that decided (the val split)
    metrics_int8: dict | None      # int8 ONNX on the same rows (None: not tried)
    reason: str
    float_nodes: tuple[str, ...] = ()  # nodes the int8 model keeps in float32 (outlier channels)


def build_served_onnx(model, out_dir: Path, size: int, *, check_images: list[np.ndarray], quantize: str,
                      calibration: list[np.ndarray], holdout, max_pixels: int, metric: str, max_loss: float,
                      outlier_ratio: float, refine: Refine = Refine(), tolerance: float = 1e-4,
                      template: Path | None = None) -> ServedOnnx:
    """Export (checked against Keras); with quantize='int8', also quantise (convs fed an outlier channel
    beyond `outlier_ratio` stay float32) and keep the int8 model only if it loses at most `max_loss` of
    `metric` on the `holdout` rows (manifest rows: the val split, so test plays no part in the choice)
    against the float32 export, both with the `refine` they will be served with."""
    from bgremoval.evaluate import evaluate
    from bgremoval.metrics import summarise
    from bgremoval.registry import HIGHER_IS_BETTER

    out_dir = Path(out_dir)
    f32 = out_dir / "model_f32.onnx"
    check = export_checked(model, f32, size, check_images, tolerance, template)
    if quantize in (None, "none", ""):
        return ServedOnnx(f32, False, check, None, None, "serve.quantize is none")
    if quantize != "int8":
        raise ExportError(f"serve.quantize {quantize!r} is not one of none, int8")
    int8, keep = quantize_int8(f32, out_dir / "model_int8.onnx", calibration, size, outlier_ratio)
    m32 = summarise(evaluate(holdout, refined(OnnxSegmenter(f32, size), refine), max_pixels, progress="float32 check")[1])
    m8 = summarise(evaluate(holdout, refined(OnnxSegmenter(int8, size), refine), max_pixels, progress="int8 check")[1])
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    loss = sign * (m32[metric] - m8[metric])
    if loss > max_loss:
        reason = f"int8 loses {loss:.4f} {metric} > serve.max_int8_loss {max_loss}: serving float32"
        log.warning(reason)
        return ServedOnnx(f32, False, check, m32, m8, reason, tuple(keep))
    reason = f"int8 {metric} {m8[metric]:.4f} vs float32 {m32[metric]:.4f} (loss {loss:+.4f} <= {max_loss})"
    log.info("serving int8: %s", reason)
    if keep:
        reason += f"; {len(keep)} nodes kept float32 for outlier channels"
    return ServedOnnx(int8, True, check, m32, m8, reason, tuple(keep))


def served_test_metrics(served: ServedOnnx, test: pd.DataFrame, size: int, max_pixels: int,
                        refine: Refine = Refine()) -> dict[str, float]:
    """The served ONNX file's scores on the test split, refined as it is served (the evaluate stage's protocol)."""
    from bgremoval.evaluate import evaluate
    from bgremoval.metrics import summarise

    _, scores = evaluate(test, refined(OnnxSegmenter(served.path, size), refine), max_pixels, progress="served model")
    return summarise(scores)


def gate_metrics(metrics: dict, served: ServedOnnx | None, test: pd.DataFrame, size: int,
                 max_pixels: int, refine: Refine = Refine()) -> tuple[dict, dict[str, str]]:
    """What the champion gate judges: the model as it will be served. With an ONNX file (int8 or float32),
    its own test scores replace the evaluate stage's Keras ones; those stay as keras.* tags."""
    if served is None:
        return metrics, {}
    keras_tags = {f"keras.{k}": f"{v:.6f}" for k, v in metrics.items() if isinstance(v, float)}
    ours = served_test_metrics(served, test, size, max_pixels, refine)
    log.info("served %s model on test: %s (Keras float32: %s)", "int8" if served.quantized else "float32",
             ", ".join(f"{k} {v:.4f}" for k, v in ours.items()),
             ", ".join(f"{k} {metrics[k]:.4f}" for k in ours if isinstance(metrics.get(k), float)))
    return {**metrics, **ours}, keras_tags
