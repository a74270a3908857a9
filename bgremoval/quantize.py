"""Serving the exported U²-NetP faster: static int8 quantisation, kept only when it keeps quality."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bgremoval.export import ExportCheck, ExportError, OnnxSegmenter, export_checked, preprocess

log = logging.getLogger(__name__)


class _Calibration:
    """Feeds preprocessed images to onnxruntime's static quantisation (an ORT CalibrationDataReader)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.items = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self.items, None)


def quantize_int8(f32: Path, out: Path, calibration: list[np.ndarray], size: int) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on real images; deterministic."""
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
        reader = _Calibration(name, [preprocess(image, size) for image in calibration])
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(out)


@dataclass(frozen=True)
class ServedOnnx:
    """What register serves, and what choosing it cost."""

    path: Path
    quantized: bool
    check: ExportCheck             # float32 export vs Keras
    metrics_f32: dict | None       # float32 ONNX on the test split
    metrics_int8: dict | None      # int8 ONNX on the test split (None: not tried)
    reason: str


def build_served_onnx(model, out_dir: Path, size: int, *, check_images: list[np.ndarray], quantize: str,
                      calibration: list[np.ndarray], test, max_pixels: int, metric: str, max_loss: float,
                      tolerance: float = 1e-4, template: Path | None = None) -> ServedOnnx:
    """Export (checked against Keras); with quantize='int8', also quantise and keep the int8 model only
    if it loses at most `max_loss` of `metric` on the test split against the float32 export."""
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
    int8 = quantize_int8(f32, out_dir / "model_int8.onnx", calibration, size)
    m32 = summarise(evaluate(test, OnnxSegmenter(f32, size), max_pixels, progress="float32 check")[1])
    m8 = summarise(evaluate(test, OnnxSegmenter(int8, size), max_pixels, progress="int8 check")[1])
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    loss = sign * (m32[metric] - m8[metric])
    if loss > max_loss:
        reason = f"int8 loses {loss:.4f} {metric} > serve.max_int8_loss {max_loss}: serving float32"
        log.warning(reason)
        return ServedOnnx(f32, False, check, m32, m8, reason)
    reason = f"int8 {metric} {m8[metric]:.4f} vs float32 {m32[metric]:.4f} (loss {loss:+.4f} <= {max_loss})"
    log.info("serving int8: %s", reason)
    return ServedOnnx(int8, True, check, m32, m8, reason)
