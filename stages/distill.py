"""distill: learn from the unlabelled photos (prepare.unlabelled) through the trained model's soft masks;
without any, the trained model goes on as it is. Writes the model export serves."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd

from bgremoval.data.split import UNLABELLED
from stages.common import run, start

log = logging.getLogger("stages.distill")


def main() -> int:
    params = start("distill")
    paths = params["paths"]
    manifest = pd.read_parquet(paths["manifest"])
    unlabelled = manifest[manifest["split"] == UNLABELLED].reset_index(drop=True)
    models, reports = Path(paths["models"]), Path(paths["reports"])
    out = models / "distilled.keras"
    if unlabelled.empty:  # nothing to learn from (and no TensorFlow to import): the trained model goes on
        shutil.copy(models / "model.keras", out)
        (reports / "distill.json").write_text(json.dumps({"unlabelled": 0}, indent=2))
        log.info("no unlabelled photos (prepare.unlabelled): the trained model is served as it is")
        return 0

    from bgremoval.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from bgremoval import tracking
    from bgremoval.model.network import load_model
    from bgremoval.training.distill import DistillSetup, distill

    setup = DistillSetup.from_params(params, json.loads(Path(paths["best_params"]).read_text())["apply"])
    keras.utils.set_random_seed(setup.seed)
    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    with tracking.run(run_id=json.loads((reports / "train.json").read_text())["run_id"]):
        student, summary = distill(load_model(models / "model.keras"), unlabelled, setup=setup)
    student.save(out)
    (reports / "distill.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
