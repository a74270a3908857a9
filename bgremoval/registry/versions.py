"""Registering the served model in the MLflow Model Registry and moving its aliases as the gate decides.

The version's test scores are MLflow 3 model metrics of its logged model, each linked to the test
dataset they were measured on (by digest), so the champion's score is looked up on the same test images
or, when the test set changed, measured on it then (and kept the same way).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from bgremoval import tracking
from bgremoval.images import sha256_file
from bgremoval.locks import named_lock
from bgremoval.registry.gate import CHALLENGER, CHAMPION, PREVIOUS, Decision, Reference, decide
from bgremoval.scoring.metrics import summarise
from bgremoval.scoring.score import score
from bgremoval.serving.config import ServingConfig
from bgremoval.serving.load import load
from bgremoval.serving.pyfunc import log_model

log = logging.getLogger(__name__)

LINEAGE_TAGS = ("git.commit", "data.sha256", "dvc.augmented_md5", "tune.best_trial")
LOCK_ENV = "BGREMOVAL_REGISTRY_LOCK"  # when set, wins over register.lock


@dataclass(frozen=True)
class Registered:
    """What reports/registered.json records."""

    name: str
    version: str
    alias: str
    run_id: str
    model_uri: str
    decision: str
    reason: str
    metric: str
    score: float
    champion_version: str | None
    champion_score: float | None

    def to_dict(self) -> dict:
        return asdict(self)

    def serve_hint(self, port: int = 5001) -> str:
        """What to serve after this registration: the champion, and this version by its alias when it is not
        the champion (with no champion yet, `models:/NAME@champion` would not resolve)."""
        serve = "mlflow models serve -m models:/{}@{} --env-manager local -p " + str(port)
        if self.alias == CHAMPION:
            return "serve it: " + serve.format(self.name, CHAMPION)
        this = f"try version {self.version}: " + serve.format(self.name, self.alias)
        if self.champion_version is None:
            return f"no version is champion yet; {this}"
        return f"the champion stays version {self.champion_version}: {serve.format(self.name, CHAMPION)}; {this}"


@dataclass(frozen=True)
class Gate:
    """params.yaml register: as the gate reads it."""

    metric: str
    min_delta: float
    require_beats_baseline: bool
    max_reference_loss: float   # on the reference photos, how much worse than stock U²-NetP a champion may be


@dataclass(frozen=True)
class RegisterConfig:
    """What the register stage reads from params.yaml: its register: section and prepare.max_pixels."""

    model_name: str             # the MLflow registered model
    gate: Gate
    lock: str | None            # a database URL or lock file; None = the registry's own database
    max_pixels: int             # prepare.max_pixels: a champion rescored on a changed test set is scored this way

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "RegisterConfig":
        """From the params the register stage declares (register, prepare.max_pixels); BGREMOVAL_REGISTRY_LOCK,
        when set, wins over register.lock."""
        section = params["register"]
        return cls(
            model_name=section["model_name"],
            gate=Gate(metric=section["metric"], min_delta=section["min_delta"],
                      require_beats_baseline=section["require_beats_baseline"],
                      max_reference_loss=section["max_reference_loss"]),
            lock=os.environ.get(LOCK_ENV) or section["lock"],
            max_pixels=params["prepare"]["max_pixels"],
        )


def serving_key(served_dir: Path, config: ServingConfig) -> str:
    """What identifies a servable: the served file's bytes and how it is served."""
    parts = [sha256_file(Path(served_dir) / config.model_file), *(f"{k}={v}" for k, v in sorted(config.to_dict().items()))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def version_of_run(client, name: str, run_id: str, key: str):
    """The version already registered from this run and served the same way (re-running register must
    not add another; a changed serving set-up, e.g. int8 on, registers a new one)."""
    for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if (mv.tags or {}).get("serving_key") == key:
            return mv
    return None


def champion_version(client, name: str):
    """The version holding `champion`, or None."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def model_id_of(mv) -> str | None:
    """The logged model a version was registered from. MLflow's SQLAlchemy registry does not keep a version's
    model_id, so it is read from the version's source, models:/<model_id>, when the version has none."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = getattr(mv, "source", None) or ""
    rest = source[len("models:/"):] if source.startswith("models:/") else ""
    return rest if rest.startswith("m-") and "/" not in rest and "@" not in rest else None


def model_score(client, mv, metric: str, test_digest: str) -> float | None:
    """A version's test/`metric` as a model metric measured on the test set with this digest, or None."""
    model_id = model_id_of(mv)
    if not model_id:
        return None
    for m in client.get_logged_model(model_id).metrics or []:
        if m.key == f"test/{metric}" and m.dataset_digest == test_digest:
            return float(m.value)
    return None


def ensure_registered_model(client, name: str, description: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description=description)
        except MlflowException:  # created meanwhile by a concurrent registration
            client.get_registered_model(name)


def apply_decision(client, name: str, version: str, decision: Decision, old_champion) -> None:
    """Move the aliases the decision names. Aliases are per-version pointers: each set is one write."""
    if decision.promoted:
        if old_champion is not None and str(old_champion.version) != str(version):
            client.set_registered_model_alias(name, PREVIOUS, old_champion.version)
        client.set_registered_model_alias(name, CHAMPION, version)
        try:  # a promoted challenger is no longer one
            if str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(version):
                client.delete_registered_model_alias(name, CHALLENGER)
        except MlflowException:  # no challenger alias: nothing to clear
            pass
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)


def register_served(client, *, cfg: RegisterConfig, run_id: str, served_dir: Path, metrics: dict[str, float],
                    baseline: dict[str, float], test: pd.DataFrame, test_dataset, example: bytes,
                    reference_dataset) -> Registered:
    """Log the served model into the training run with its test scores as model metrics, register it (once
    per run and serving set-up), and gate its alias.

    `metrics` are the evaluate stage's scores of exactly this served folder on `test`; `baseline` the
    baseline stage's; with reference photos both hold a `reference` entry too (logged as reference/* model
    metrics on `reference_dataset`, None without reference photos). Registering and deciding happen under one lock
    (`cfg.lock`: a database URL or a lock file; None = the registry's own database), so concurrent registrations
    are decided one at a time: without it two could both beat the old champion and the worse one could take the
    alias last.
    """
    name, gate = cfg.model_name, cfg.gate
    config = ServingConfig.read(served_dir)
    ensure_registered_model(client, name, "Background removal: image in, foreground mask / cut-out out "
                            "(bgremoval pipeline). Serve with `mlflow models serve -m models:/NAME@champion`.")
    with named_lock(cfg.lock or mlflow.get_registry_uri(), f"bgremoval-registry:{name}"):
        mv = _register_version(client, name, run_id, served_dir=served_dir, config=config, metrics=metrics,
                               test=test, test_dataset=test_dataset, example=example,
                               reference_dataset=reference_dataset)
        decision, champ, champ_score = _decide_and_apply(client, cfg, mv, run_id=run_id, metrics=metrics,
                                                         baseline=baseline, test=test, test_dataset=test_dataset)
    with tracking.run(run_id=run_id):
        mlflow.set_tags({"registry.name": name, "registry.version": str(mv.version), "registry.alias": decision.alias})
    return Registered(
        name=name, version=str(mv.version), alias=decision.alias, run_id=run_id,
        model_uri=f"models:/{name}/{mv.version}", decision="promoted" if decision.promoted else "kept champion",
        reason=decision.reason, metric=gate.metric, score=float(metrics[gate.metric]),
        champion_version=str(champ.version) if champ is not None else None,
        champion_score=None if champ_score is None else round(float(champ_score), 6),
    )


def _register_version(client, name: str, run_id: str, *, served_dir: Path, config: ServingConfig,
                      metrics: dict[str, float], test: pd.DataFrame, test_dataset, example: bytes,
                      reference_dataset):
    """This run's version served this way: the one registered before, or a new one logged and registered now."""
    key = serving_key(served_dir, config)
    mv = version_of_run(client, name, run_id, key)
    if mv is not None:
        log.info("run %s is already %s version %s; deciding its alias again", run_id, name, mv.version)
        return mv
    with tracking.run(run_id=run_id):
        info = log_model(Path(served_dir) / config.model_file, config, example, name="model")
        mlflow.log_metrics({f"test/{k}": float(v) for k, v in metrics.items() if k != "reference"},
                           model_id=info.model_id, dataset=test_dataset)
        if "reference" in metrics and reference_dataset is not None:  # recorded with the version, on its own data
            mlflow.log_metrics({f"reference/{k}": float(v) for k, v in metrics["reference"].items()},
                               model_id=info.model_id, dataset=reference_dataset)
    run_tags = client.get_run(run_id).data.tags
    tags = {k: run_tags[k] for k in LINEAGE_TAGS if k in run_tags}
    tags |= {"test_set": test_dataset.digest, "n_test_images": str(len(test)), "input_size": str(config.size),
             "refine": config.refine.name, "runtime": config.runtime, "int8": str(config.int8).lower(),
             "serving_key": key}
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    log.info("registered %s version %s from run %s", name, mv.version, run_id)
    return client.get_model_version(name, mv.version)


def _decide_and_apply(client, cfg: RegisterConfig, mv, *, run_id: str, metrics: dict[str, float],
                      baseline: dict[str, float], test: pd.DataFrame, test_dataset):
    """Compare with the champion (rescored if it was never scored on this test set), move aliases, record why."""
    name, gate = cfg.model_name, cfg.gate
    new_score = float(metrics[gate.metric])
    champ, champ_score = champion_version(client, name), None
    if champ is not None and str(champ.version) == str(mv.version):
        champ, decision = None, Decision(CHAMPION, f"already the champion ({gate.metric} {new_score:.4f})")
    elif champ is not None and champ.run_id == run_id:  # same weights, served differently (e.g. int8 now)
        decision = Decision(CHAMPION, f"the champion's own trained model (run {run_id}), with a new serving set-up")
        apply_decision(client, name, mv.version, decision, champ)
    else:
        if champ is not None:
            champ_score = model_score(client, champ, gate.metric, test_dataset.digest)
            if champ_score is None:  # scored on other images (or not at all): score it on these, now
                champ_score = rescore(client, name, champ, test=test, test_dataset=test_dataset,
                                      max_pixels=cfg.max_pixels)[gate.metric]
                log.info("champion v%s scored on this test set: %s %.4f", champ.version, gate.metric, champ_score)
        reference = None
        if "reference" in metrics and "reference" in baseline:
            reference = Reference(candidate=metrics["reference"][gate.metric],
                                  stock=baseline["reference"][gate.metric], max_loss=gate.max_reference_loss)
        decision = decide(gate.metric, new_score, champ_score, min_delta=gate.min_delta,
                          baseline=baseline.get(gate.metric), require_beats_baseline=gate.require_beats_baseline,
                          reference=reference)
        apply_decision(client, name, mv.version, decision, champ)
    client.set_model_version_tag(name, mv.version, "decision", decision.alias)
    client.set_model_version_tag(name, mv.version, "decision.reason", decision.reason)
    base = baseline.get(gate.metric)
    client.update_model_version(name, mv.version, description=(
        f"{gate.metric} {new_score:.4f} on {len(test)} test images"
        + (f" (stock U²-NetP {base:.4f})" if base is not None else "") + f". {decision.reason}."))
    return decision, champ, champ_score


def rescore(client, name: str, mv, *, test: pd.DataFrame, test_dataset, max_pixels: int) -> dict[str, float]:
    """A registered version's scores on these test images, as the evaluate stage scores; kept as model metrics
    of its logged model on this test dataset, so the next comparison finds them."""
    served = load(f"models:/{name}/{mv.version}")
    summary = summarise(score(test, served, max_pixels, progress=f"rescore v{mv.version}")[1])
    if model_id_of(mv):
        mlflow.log_metrics({f"test/{k}": v for k, v in summary.items()}, model_id=model_id_of(mv), dataset=test_dataset,
                           run_id=mv.run_id)
    return summary
