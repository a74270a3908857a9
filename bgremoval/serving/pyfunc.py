"""The registered model: an MLflow pyfunc that `mlflow models serve` runs, logged with only the code it needs."""

from __future__ import annotations

import base64
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from bgremoval.serving.config import SERVED_MODEL_CODE, ServingConfig
from bgremoval.serving.options import ERRORS, ERRORS_PARAM, KINDS, check_defaults
from bgremoval.serving.render import warm_up
from bgremoval.serving.request import INPUT_COLUMN, RequestError, RequestTooLarge, cut_out
from bgremoval.serving.served import Served

PACKAGE = Path(__file__).resolve().parents[1]  # bgremoval/
# What the served model imports of this package (tests/test_spec.py checks it is all it imports).
SHIPPED = ("__init__.py", "images.py", "quiet.py", "network_io.py", "keras_layers.py", "serving")
# The packages each runtime imports, besides MLflow's own (pymatting: the cut-out's edges).
REQUIREMENTS = {
    "onnxruntime": ("numpy", "pandas", "pillow", "scipy", "pymatting", "onnxruntime"),
    "keras": ("numpy", "pandas", "pillow", "scipy", "pymatting", "tensorflow", "keras"),
}


class PayloadTooLarge(MlflowException):
    """The scoring server answers with the status an MlflowException names: 413 here."""

    def __init__(self, message: str):
        super().__init__(message, error_code=BAD_REQUEST)

    def get_http_status_code(self) -> int:
        return 413


class BackgroundRemover(mlflow.pyfunc.PythonModel):
    """Artifact `model`: the served file (ONNX or .keras); model_config: its ServingConfig."""

    def load_context(self, context):
        self.served = Served.open(Path(context.artifacts["model"]), ServingConfig.from_dict(context.model_config))
        warm_up()  # pymatting's compiled code, loaded before the first request rather than in it

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        served = self.served
        try:
            return cut_out(served.predictor_for, model_input, params=params, defaults=served.config.defaults,
                           max_pixels=served.max_pixels, max_request_mb=served.max_request_mb)
        except RequestTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        except RequestError as exc:  # the scoring server answers 400 with this message
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def signature(defaults: dict):
    """Input: column `image` (base64). Params: the request options (options.KINDS: their names and types),
    each with its serve.defaults value as its default: the scoring server fills a param a request leaves out
    with it, so it must be what options_from would take; and `errors` (fail | row), with the column `error`
    that errors=row adds to the output (empty where a row was served)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    check_defaults(defaults)
    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("string", "png"), ColSpec("long", "width"), ColSpec("long", "height"),
                        ColSpec("double", "foreground"), ColSpec("string", "error", required=False)]),
        params=ParamSchema([*(ParamSpec(name, kind, defaults[name]) for name, kind in KINDS.items()),
                            ParamSpec(ERRORS_PARAM, "string", ERRORS[0])]),
    )


def requirements(runtime: str) -> list[str]:
    """What the served model imports, pinned to the versions it was logged with."""
    reqs = []
    for pkg in ("mlflow", *REQUIREMENTS[runtime]):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def log_model(model_file: Path, config: ServingConfig, example: bytes, name: str):
    """Log the servable pyfunc (the served file, its config, and the code serving needs) into the active run."""
    if config.runtime == "keras":  # MLflow imports each requirement to check its version: TensorFlow without its notices
        from bgremoval.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / PACKAGE.name
        code.mkdir()
        for item in SHIPPED:
            src = PACKAGE / item
            if src.is_dir():
                shutil.copytree(src, code / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(src, code / item)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name(SERVED_MODEL_CODE)),
            artifacts={"model": str(model_file)},
            code_paths=[str(code)],
            model_config=config.to_dict(),
            signature=signature(config.defaults),
            input_example=pd.DataFrame({INPUT_COLUMN: [base64.b64encode(example).decode("ascii")]}),
            pip_requirements=requirements(config.runtime),
        )
