"""tune: an Optuna study over the search space in params.yaml; every trial a nested MLflow run.

Trials may also run in `bgremoval tune-worker` processes on other machines sharing the study's storage
(PostgreSQL); this stage then takes over what is left and reads the finished study.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bgremoval import tracking
from bgremoval.training.choice import best_params, log_study
from bgremoval.training.tune_job import TuneJob, run_job
from stages.common import run, start

log = logging.getLogger("stages.tune")


def main() -> int:
    params = start("tune")
    paths, tune = params["paths"], params["tune"]
    job = TuneJob.from_params(params)
    study, parent = run_job(job)  # what every `bgremoval tune-worker` runs too
    with tracking.run(run_id=parent):
        best = best_params(study, tune["space"], float(tune["max_metric_loss"]))
        log_study(study, best, job.cfg.metric, Path(paths["reports"]) / "tune")

    best["apply"] = {k: v for k, v in best["params"].items() if k in tune["apply"]}
    out = Path(paths["best_params"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(best, indent=2))
    log.info("chosen trial %d: %s = %.4f; train will use %s", best["trial"], job.cfg.metric, best["value"], best["apply"])
    return 0


if __name__ == "__main__":
    run(main)
