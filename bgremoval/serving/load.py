"""Opening a served model wherever it is: the export stage's folder, or an MLflow model by URI or folder."""

from __future__ import annotations

from pathlib import Path

from bgremoval.serving import resolved
from bgremoval.serving.config import CONFIG_FILE, SERVED_MODEL_CODE, ServingConfig
from bgremoval.serving.served import Served


def load(uri: str, tracking_uri: str | None = None) -> Served:
    """A served model from a served folder (serving.json beside its file: only onnxruntime or Keras is
    imported, not MLflow), an MLflow model folder, or models:/NAME@ALIAS, models:/NAME/N, runs:/ID/model in
    the registry at `tracking_uri` (None: MLflow's current one). A models:/ URI in an unchanged SQLite
    registry opens what it last resolved to, without MLflow (serving.resolved)."""
    path = Path(uri)
    if (path / CONFIG_FILE).is_file():
        return Served.from_folder(path)
    if path.is_file() and (path.parent / CONFIG_FILE).is_file():  # the served file itself
        return Served.from_folder(path.parent)
    if "://" not in uri and ":" not in uri.split("/")[0] and not (path / "MLmodel").is_file():
        raise FileNotFoundError(f"{uri}: not a served model (expected a folder with {CONFIG_FILE}, such as "
                                "models/served, an MLflow model folder, models:/NAME@ALIAS or runs:/RUN_ID/model)")
    return _from_mlflow(uri, tracking_uri)


def _from_mlflow(uri: str, tracking_uri: str | None = None) -> Served:
    """An MLflow model of ours, opened from its files: the served file and the serving configuration it was
    logged with. pyfunc's own loader would run the same code after MLflow's environment checks, and then
    pymatting's warm-up, which only the server needs (a cut-out loads pymatting when it first needs it)."""
    state = resolved.registry_state(uri, tracking_uri)
    hit = resolved.lookup(uri, state)
    if hit is not None:
        return Served.open(hit[0], ServingConfig.from_dict(hit[1]))
    import mlflow.artifacts
    from mlflow.models import Model

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    folder = Path(uri) if Path(uri, "MLmodel").is_file() else Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    flavor = Model.load(folder).flavors.get("python_function", {})
    model = flavor.get("artifacts", {}).get("model", {}).get("path")
    config = flavor.get("config")
    code = Path(flavor.get("model_code_path") or "").name  # "models from code": the file that names the pyfunc
    if code != SERVED_MODEL_CODE or not model or not isinstance(config, dict):
        raise ValueError(f"{uri}: is an MLflow model but not a bgremoval one (its python_function flavor loads "
                         f"{code or flavor.get('loader_module') or 'nothing'}, not {SERVED_MODEL_CODE})")
    resolved.remember(uri, state, folder / model, config)
    return Served.open(folder / model, ServingConfig.from_dict(config))
