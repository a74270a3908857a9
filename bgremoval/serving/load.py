"""Opening a served model wherever it is: the export stage's folder, or an MLflow model by URI or folder."""

from __future__ import annotations

from pathlib import Path

from bgremoval.serving.config import CONFIG_FILE
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
    import mlflow.pyfunc

    # suppress_warnings: MLflow would compare every logged requirement with the installed packages (about
    # 1 s of scanning package metadata) only to warn; the server (`mlflow models serve`) still does.
    inner = mlflow.pyfunc.load_model(uri, suppress_warnings=True).unwrap_python_model()
    served = getattr(inner, "served", None)
    if not isinstance(served, Served) and type(served).__name__ != "Served":
        raise ValueError(f"{uri}: is an MLflow model but not a bgremoval one ({type(inner).__name__})")
    return served
