"""Static int8 quantisation of the exported U²-NetP (export/choose.py keeps it only when val says it keeps quality)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bgremoval.network_io import preprocess

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
    constant channel at about 17 times the median channel's range, and quantising that conv alone
    costs far more quality than the rest of the network together. Returned: the producer and every
    consumer of each such tensor (both would otherwise put Q/DQ on it).
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
                  outlier_ratio: float) -> tuple[Path, list[str]]:
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
        # onnxruntime's symbolic shape inference cannot follow the U-Net's Resize by scales (and, failing, leaves
        # temporary files in the working directory): ONNX's own shape inference does for the graph export writes.
        ours = onnx.load(str(v13), load_external_data=False).producer_name == "bgremoval"
        quant_pre_process(str(v13), str(pre), skip_symbolic_shape=ours)
        name = onnx.load(str(pre)).graph.input[0].name
        batches = [preprocess(image, size) for image in calibration]
        keep = outlier_nodes(pre, batches, outlier_ratio) if np.isfinite(outlier_ratio) else []
        # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2 only) multiply uint8 activations by int8
        # weights in pairs summed into int16 (VPMADDUBSW), which saturates with full-range weights: on such a
        # CPU a full-range model's output strays by over 10 % of its range; 7 bits cannot overflow there.
        quantize_static(str(pre), str(out), _Calibration(name, batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep)
    return Path(out), keep
