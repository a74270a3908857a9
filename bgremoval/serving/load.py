"""Opening a served model wherever it is: the export stage's folder, or an MLflow model by URI or folder."""

from __future__ import annotations

from pathlib import Path

from bgremoval.serving.config import CONFIG_FILE, SERVED_MODEL_CODE, ServingConfig
from bgremoval.serving.served import Served


def load(uri: str) -> Served:
    """A served model from a served folder (serving.json beside its file: only onnxruntime or Keras is
    imported, not MLflow), an MLflow model folder, or models:/NAME@ALIAS, models:/NAME/N, runs:/ID/model."""
    path = Path(uri)
    if (path / CONFIG_FILE).is_file():
        return Served.from_folder(path)
    if path.is_file() and (path.parent / CONFIG_FILE).is_file():  # the served file itself
        return Served.from_folder(path.parent)
    if "://" not in uri and ":" not in uri.split("/")[0] and not (path / "MLmodel").is_file():
        raise FileNotFoundError(f"{uri}: not a served model (expected a folder with {CONFIG_FILE}, such as "
                                "models/served, an MLflow model folder, models:/NAME@ALIAS or runs:/RUN_ID/model)")
    return _from_mlflow(uri)


def _from_mlflow(uri: str) -> Served:
    """An MLflow model of ours, opened from its files: the served file and the serving configuration it was
    logged with. pyfunc's own loader would run the same code after MLflow's environment checks, and then
    pymatting's warm-up, which only the server needs (a cut-out loads pymatting when it first needs it)."""
    import mlflow.artifacts
    from mlflow.models import Model

    folder = Path(uri) if Path(uri, "MLmodel").is_file() else Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    flavor = Model.load(folder).flavors.get("python_function", {})
    model = flavor.get("artifacts", {}).get("model", {}).get("path")
    config = flavor.get("config")
    code = Path(flavor.get("model_code_path") or "").name  # "models from code": the file that names the pyfunc
    if code != SERVED_MODEL_CODE or not model or not isinstance(config, dict):
        raise ValueError(f"{uri}: is an MLflow model but not a bgremoval one (its python_function flavor loads "
                         f"{code or flavor.get('loader_module') or 'nothing'}, not {SERVED_MODEL_CODE})")
    return Served.open(folder / model, ServingConfig.from_dict(config))
