"""Cutting images out: decode request bytes safely, predict the mask at the model's size, render a
mask, an RGBA cut-out or a composite at the input's size; and the MLflow pyfunc that
`mlflow models serve` runs (the same code the CLI's `bgremoval predict` uses)."""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageColor

from bgremoval.imageio import ImageReadError, open_image
from bgremoval.refine import Refine, Refined, refined

OUTPUTS = ("mask", "cutout", "composite")
INPUT_COLUMN = "image"
# Environment overrides of what the registered model was logged with (serve.* in params.yaml).
MAX_PIXELS_ENV = "BGREMOVAL_MAX_PIXELS"
MAX_REQUEST_ENV = "BGREMOVAL_MAX_REQUEST_MB"  # image data per request, in MB of base64
THREADS_ENV = "BGREMOVAL_THREADS"  # onnxruntime intra-op threads (default: all cores)


class RequestError(ValueError):
    """Input that cannot be served; the message says which row or parameter and why."""


class RequestTooLarge(RequestError):
    """A request carrying more image data than the server takes (HTTP 413)."""


def check_request_size(values, max_request_mb: float) -> None:
    """Refuse a request whose base64 image data exceeds the cap, before anything is decoded."""
    total = sum(len(v) for v in values if isinstance(v, (str, bytes)))
    if total > max_request_mb * 1e6:
        raise RequestTooLarge(
            f"the request carries {total / 1e6:.1f} MB of image data, over the limit of {max_request_mb:g} MB "
            f"(serve.max_request_mb / {MAX_REQUEST_ENV}); send fewer or smaller images per request")


@dataclass(frozen=True)
class RenderOptions:
    """How a predicted mask becomes the returned picture."""

    output: str = "mask"                  # mask | cutout | composite
    threshold: float | None = None        # None: soft alpha; else alpha = prob >= threshold
    bg_color: tuple[int, int, int] = (255, 255, 255)  # composite's background


def parse_color(text: str) -> tuple[int, int, int]:
    """'#00ff00', '00ff00', '0,255,0' or a CSS name such as 'white' -> (r, g, b)."""
    value = str(text).strip()
    try:
        if "," in value:
            parts = tuple(int(p) for p in value.split(","))
            if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
                raise ValueError
            return parts  # type: ignore[return-value]
        if len(value) == 6 and all(c in "0123456789abcdefABCDEF" for c in value):
            value = "#" + value
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        raise RequestError(
            f"bg_color {text!r} is not a colour; use '#rrggbb', 'r,g,b' (0-255) or a CSS name like 'white'"
        ) from None


def options_from(params: dict | None) -> RenderOptions:
    """RenderOptions from request params (strings or numbers), with errors naming the parameter."""
    params = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
    output = str(params.get("output", "mask")).lower()
    if output not in OUTPUTS:
        raise RequestError(f"output {output!r} is not one of {', '.join(OUTPUTS)}")
    threshold = params.get("threshold")
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise RequestError(f"threshold {threshold!r} is not a number") from None
        if threshold < 0:  # a negative threshold means "soft mask" (the signature's default)
            threshold = None
        elif threshold > 1:
            raise RequestError(f"threshold {threshold} is outside [0, 1] (or negative for a soft mask)")
    bg_color = parse_color(params["bg_color"]) if "bg_color" in params else RenderOptions.bg_color
    return RenderOptions(output, threshold, bg_color)


def decode_base64_image(text, max_pixels: int, label: str) -> np.ndarray:
    """A base64 string (or data: URL) -> (H, W, 3) uint8 RGB, refusing bombs and non-images."""
    if not isinstance(text, (str, bytes)):
        raise RequestError(f"{label}: expected a base64 string, got {type(text).__name__}")
    if isinstance(text, str):
        text = text.strip()
        if text.startswith("data:") and "," in text:  # data:image/png;base64,....
            text = text.split(",", 1)[1]
        text = "".join(text.split())  # `base64` wraps lines at 76 characters
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{label}: is not valid base64 (encode the file's bytes, e.g. `base64 -w0 photo.jpg`)") from None
    try:
        img = open_image(raw, max_pixels, label=label, limit_name=f"serve.max_pixels / {MAX_PIXELS_ENV}")
    except ImageReadError as exc:
        raise RequestError(str(exc)) from None
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def render(image: np.ndarray, prob: np.ndarray, opts: RenderOptions) -> Image.Image:
    """The picture a user asked for, at the image's own size."""
    alpha = prob if opts.threshold is None else (prob >= opts.threshold).astype(np.float32)
    alpha8 = np.clip(np.round(alpha * 255), 0, 255).astype(np.uint8)
    if opts.output == "mask":
        return Image.fromarray(alpha8, mode="L")
    if opts.output == "cutout":
        return Image.fromarray(np.dstack([image, alpha8]), mode="RGBA")
    a = alpha8[..., None].astype(np.float32) / 255
    background = np.array(opts.bg_color, np.float32)
    return Image.fromarray(np.round(image * a + background * (1 - a)).astype(np.uint8), mode="RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_keras(path: Path):
    """A saved .keras model of this project (its custom layers are registered by importing their modules)."""
    import keras

    from bgremoval import train, u2netp  # noqa: F401  (RembgNormalize, ResizeLike)

    return keras.models.load_model(Path(path), compile=False)


class Segmenter:
    """A saved Keras model at a fixed square input size: (H, W, 3) uint8 in, (H, W) probability out.

    The image is squashed to size x size (as in training), predicted, and the mask resized back.
    """

    def __init__(self, model, size: int):
        self.model, self.size = model, int(size)
        self._forward = None

    @classmethod
    def load(cls, path: Path, size: int) -> "Segmenter":
        return cls(load_keras(path), size)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(1, size, size, 3) float32 in [0, 1] -> (1, size, size, 1) probability, through a graph traced once
        for this Segmenter's shape. (Keras' own predict function is shared by every caller of the model: called
        at a second size, it retraces with unknown height and width, which bilinear UpSampling2D cannot trace.)"""
        if self._forward is None:
            import tensorflow as tf

            spec = tf.TensorSpec((1, self.size, self.size, 3), tf.float32)
            self._forward = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        return np.asarray(self._forward(batch))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = np.asarray(Image.fromarray(image).resize((self.size, self.size), Image.Resampling.BILINEAR), np.float32) / 255
        prob = self.forward(x[None])[0, ..., 0]
        back = Image.fromarray(prob.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR)
        return np.clip(np.asarray(back), 0.0, 1.0)


def cut_out(segmenter: Segmenter, frame: pd.DataFrame, params: dict | None, max_pixels: int,
            max_request_mb: float = float("inf")) -> pd.DataFrame:
    """A request frame (column `image`, base64) -> one row per image: `png` (base64), width, height,
    foreground (share of pixels with alpha >= 0.5). Raises RequestError naming the bad row/param."""
    if not isinstance(frame, pd.DataFrame) or INPUT_COLUMN not in frame.columns:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise RequestError(f"expected a column named {INPUT_COLUMN!r} of base64-encoded images; got {got}")
    if len(frame) == 0:
        raise RequestError("the request has no rows; send at least one image")
    check_request_size(frame[INPUT_COLUMN], max_request_mb)
    opts = options_from(params)
    images = [decode_base64_image(v, max_pixels, f"row {i} ({INPUT_COLUMN})") for i, v in enumerate(frame[INPUT_COLUMN])]
    rows = []
    for image in images:  # all decoded first: a bad row fails the request before any work is done
        prob = segmenter(image)
        rows.append({
            "png": base64.b64encode(png_bytes(render(image, prob, opts))).decode("ascii"),
            "width": image.shape[1], "height": image.shape[0],
            "foreground": float((prob >= 0.5).mean()),
        })
    return pd.DataFrame(rows)


try:  # the pyfunc class needs MLflow; the helpers above do not
    import mlflow.pyfunc

    _PythonModel = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object


def _number(env: str, default: float) -> float:
    """A positive number from an environment override, else the logged default."""
    text = os.environ.get(env)
    if not text:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{env}={text!r} is not a positive number; unset it or give one, e.g. {env}={default:g}")
    return value


class BackgroundRemover(_PythonModel):
    """The registered model. Artifacts: `model` (the .keras file) and, for U²-NetP, `onnx` (the same
    weights in rembg's graph, served with onnxruntime). model_config: size, refine, max_pixels, max_request_mb."""

    def load_context(self, context):
        cfg = context.model_config or {}
        size = int(cfg.get("size", 320))
        if "onnx" in context.artifacts:
            from bgremoval.export import OnnxSegmenter

            threads = int(os.environ.get(THREADS_ENV) or 0) or None
            self.segmenter = OnnxSegmenter(Path(context.artifacts["onnx"]), size, threads)
        else:
            self.segmenter = Segmenter.load(Path(context.artifacts["model"]), size)
        # The refinement the evaluate stage chose on val (models logged before refinements carry none).
        self.segmenter = refined(self.segmenter, Refine.from_dict(cfg.get("refine")))
        self.max_pixels = int(_number(MAX_PIXELS_ENV, cfg.get("max_pixels", 40_000_000)))
        # Models logged before the request cap existed carry none: they get the cap params.yaml had then.
        self.max_request_mb = _number(MAX_REQUEST_ENV, cfg.get("max_request_mb", 50))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        try:
            return cut_out(self.segmenter, model_input, params, self.max_pixels, self.max_request_mb)
        except RequestTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        except RequestError as exc:  # the scoring server answers 400 with this message
            raise MlflowException.invalid_parameter_value(str(exc)) from None


if _PythonModel is not object:
    from mlflow.exceptions import MlflowException as _MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST as _BAD_REQUEST

    class PayloadTooLarge(_MlflowException):
        """The scoring server answers with the status an MlflowException names: 413 here."""

        def __init__(self, message: str):
            super().__init__(message, error_code=_BAD_REQUEST)

        def get_http_status_code(self) -> int:
            return 413


def signature():
    """Input: column `image` (base64 string). Params: output, threshold (<0 = soft), bg_color."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("string", "png"), ColSpec("long", "width"), ColSpec("long", "height"),
                        ColSpec("double", "foreground")]),
        params=ParamSchema([ParamSpec("output", "string", "mask"), ParamSpec("threshold", "double", -1.0),
                            ParamSpec("bg_color", "string", "#ffffff")]),
    )


def requirements() -> list[str]:
    """What the served model needs, pinned to the versions it was logged with."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "tensorflow-cpu", "keras", "numpy", "pandas", "pillow", "scipy", "onnxruntime"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def log_model(model_file: Path, size: int, max_pixels: int, example: bytes, onnx_file: Path | None = None,
              *, max_request_mb: float, refine: Refine = Refine(), name: str = "model"):
    """Log the servable pyfunc (keras file, its ONNX export if any, and this package's code) into the active run."""
    import shutil
    import tempfile

    import mlflow

    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / package.name  # bgremoval/ without caches: serves from any checkout, or none
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(package / "served_model.py"),
            artifacts={"model": str(model_file), **({"onnx": str(onnx_file)} if onnx_file else {})},
            code_paths=[str(code)],
            model_config={"size": int(size), "refine": refine.to_dict(), "max_pixels": int(max_pixels),
                          "max_request_mb": float(max_request_mb), "runtime": "onnxruntime" if onnx_file else "keras"},
            signature=signature(),
            input_example=pd.DataFrame({INPUT_COLUMN: [base64.b64encode(example).decode("ascii")]}),
            pip_requirements=requirements(),
        )


def load(uri: str, keras_size: int = 320, keras_max_pixels: int = 40_000_000,
         keras_refine: Refine = Refine()) -> tuple[Segmenter | Refined, int]:
    """A segmenter and its pixel cap from a registry or run URI, an MLflow model folder, or a .keras
    file (which carries no serving config: it predicts at keras_size, refined by keras_refine)."""
    path = Path(uri)
    if path.suffix == ".keras" and path.is_file():
        return refined(Segmenter.load(path, keras_size), keras_refine), int(os.environ.get(MAX_PIXELS_ENV) or keras_max_pixels)
    if "://" not in uri and ":" not in uri.split("/")[0] and not path.exists():
        raise FileNotFoundError(f"{uri}: no such model file or folder (expected a .keras file, an MLflow model "
                                "folder, models:/NAME@ALIAS or runs:/RUN_ID/model)")
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(uri)
    inner = model.unwrap_python_model()
    if not isinstance(inner, BackgroundRemover) and type(inner).__name__ != "BackgroundRemover":
        raise ValueError(f"{uri}: is an MLflow model but not a bgremoval one ({type(inner).__name__})")
    return inner.segmenter, inner.max_pixels
