"""The study's answer: the best trial (with two objectives, the trade-off params pick on the Pareto front),
logged with the trial counts and the plots into the tune stage's MLflow run."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna

from bgremoval.training.search import declared
from bgremoval.training.study import count

log = logging.getLogger(__name__)


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials no other trial beats on both objectives, fastest first."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number))


def pick(front: list[optuna.trial.FrozenTrial], max_metric_loss: float) -> optuna.trial.FrozenTrial:
    """The trade-off: the fastest trial on the front whose metric is within max_metric_loss of the best."""
    if not front:
        raise ValueError("the Pareto front is empty")
    top = max(t.values[0] for t in front)
    good = [t for t in front if t.values[0] >= top - max_metric_loss - 1e-12]
    return min(good, key=lambda t: (t.values[1], -t.values[0], t.number))


def best_params(study: optuna.Study, space: dict[str, dict[str, Any]], max_metric_loss: float = 0.0) -> dict[str, Any]:
    """The chosen complete trial's values (categorical ones as the space declares them), number and metric (and,
    with two objectives, its latency and the front)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {study.study_name} has no complete trial; see its failed trials' errors in MLflow")
    as_declared = lambda t: declared(space, t.params)  # noqa: E731
    if len(study.directions) == 1:
        best = study.best_trial
        return {"params": as_declared(best), "value": best.value, "trial": best.number, "study": study.study_name}
    front = pareto_front(study)
    best = pick(front, max_metric_loss)
    return {
        "params": as_declared(best), "value": best.values[0], "latency_ms": best.values[1], "trial": best.number,
        "study": study.study_name, "max_metric_loss": max_metric_loss,
        "pareto_front": [{"trial": t.number, "value": t.values[0], "latency_ms": t.values[1], "params": as_declared(t)}
                         for t in front],
    }


def write_plots(study: optuna.Study, out_dir: Path, metric: str = "metric") -> list[Path]:
    """Optimisation history and parameter importances as HTML (importances need 2+ complete trials);
    with two objectives, of the metric, plus the Pareto front (metric against ms per image)."""
    from functools import partial

    from optuna.visualization import plot_optimization_history, plot_param_importances, plot_pareto_front

    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {"optimization_history": plot_optimization_history, "param_importances": plot_param_importances}
    if len(study.directions) > 1:
        plots = {
            "optimization_history": partial(plot_optimization_history, target=lambda t: t.values[0], target_name=metric),
            # The evaluator ranks what leads to *low* targets: negate the metric that is maximised.
            "param_importances": partial(plot_param_importances, target=lambda t: -t.values[0], target_name=metric),
        }
        plots["pareto_front"] = partial(plot_pareto_front, target_names=[metric, "ms per image"])
    written = []
    for name, plot in plots.items():
        try:
            path = out_dir / f"{name}.html"
            with warnings.catch_warnings():  # it warns on any custom target, negated or not
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
                figure = plot(study)
            figure.write_html(str(path), include_plotlyjs=True)  # self-contained: opens offline
            written.append(path)
        # TypeError: Optuna's importance evaluators hash each distribution, and a choice stored as a list (in a
        # study whose trials were not drawn by suggest, which stores lists as their JSON text) is unhashable.
        except (ValueError, RuntimeError, TypeError) as exc:
            log.warning("no %s plot: %s", name, exc)
    return written


def log_study(study: optuna.Study, best: dict[str, Any], metric: str, plots_dir: Path) -> None:
    """Into the active (parent) run: the chosen trial, the trial counts, the Pareto front and the plots."""
    import mlflow
    import pandas as pd

    states = {s.name.lower(): count(study, (s,)) for s in optuna.trial.TrialState}
    mlflow.log_metrics({f"best/{metric}": best["value"], **{f"trials/{k}": v for k, v in states.items()}})
    mlflow.set_tag("best_trial", best["trial"])
    if "pareto_front" in best:
        mlflow.log_metric("best/ms_per_image", best["latency_ms"])
        mlflow.log_table(pd.DataFrame([{"trial": t["trial"], metric: t["value"], "ms_per_image": t["latency_ms"],
                                        **t["params"]} for t in best["pareto_front"]]), "pareto_front.json")
        for t in best["pareto_front"]:
            log.info("Pareto front: trial %d %s at %.1f ms/image %s", t["trial"], f"{metric} = {t['value']:.4f}",
                     t["latency_ms"], t["params"])
    for plot in write_plots(study, plots_dir, metric):
        mlflow.log_artifact(str(plot))
