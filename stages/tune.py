"""tune: an Optuna study over the search space in params.yaml; every trial a nested MLflow run.

With tune.latency the study has two objectives: the val metric at the serving size (evaluate.size, which
the space may search), scored on the val images at their own resolution, and the forward time per image at
that size. The Pareto front is logged; tune.max_metric_loss picks the trade-off train and the registered
model use. Trials may also run in `bgremoval tune-worker` processes on other machines sharing the
study's storage (PostgreSQL); this stage then takes over what is left and reads the finished study.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import optuna
import pandas as pd

from bgremoval import tracking
from bgremoval.tune import DONE, best_params, count, open_study, optimise, queue_each_choice, write_plots
from bgremoval.tune_job import TuneJob
from stages.common import run, start

log = logging.getLogger("stages.tune")


def main() -> int:
    params = start("tune")
    paths, tune = params["paths"], params["tune"]
    job = TuneJob.from_params(params)
    cfg, metric, out = job.cfg, job.cfg.metric, Path(paths["best_params"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, params["base"]["seed"])
    queue_each_choice(study, tune["space"], list(tune["try_each"]), cfg.n_trials)
    log.info("study %s in %s: %d of %d trials done", cfg.study_name, cfg.storage.split("@")[-1], count(study, DONE), cfg.n_trials)

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    with mlflow.start_run(run_id=job.parent_run_id(study)):  # a resumed or shared study logs into one parent
        optimise(study, cfg, tune["space"], job.train_one)
        best = best_params(study, float(tune["max_metric_loss"]))
        states = {s.name.lower(): count(study, (s,)) for s in optuna.trial.TrialState}
        mlflow.log_metrics({f"best/{metric}": best["value"], **{f"trials/{k}": v for k, v in states.items()}})
        mlflow.set_tag("best_trial", best["trial"])
        if cfg.latency:
            mlflow.log_metric("best/ms_per_image", best["latency_ms"])
            mlflow.log_table(pd.DataFrame([{"trial": t["trial"], metric: t["value"], "ms_per_image": t["latency_ms"],
                                            **t["params"]} for t in best["pareto_front"]]), "pareto_front.json")
        for plot in write_plots(study, Path(paths["reports"]) / "tune", metric):
            mlflow.log_artifact(str(plot))

    best["apply"] = {k: v for k, v in best["params"].items() if k in tune["apply"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(best, indent=2))
    if cfg.latency:
        for t in best["pareto_front"]:
            log.info("Pareto front: trial %d %s = %.4f at %.1f ms/image %s", t["trial"], metric, t["value"], t["latency_ms"], t["params"])
    log.info("chosen trial %d: %s = %.4f; train, evaluate and register will use %s", best["trial"], metric, best["value"], best["apply"])
    return 0


if __name__ == "__main__":
    run(main)
