"""The champion/challenger gate over the MLflow Model Registry.

A new version takes the `champion` alias only if it beats the current champion on one metric by
more than a min-delta, measured on the same test images; otherwise it gets `challenger`. The
previous champion keeps the alias `previous`, so a roll-back is one alias move.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from bgremoval.imageio import sha256_file
from bgremoval.locks import named_lock
from bgremoval.refine import Refine

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
# Direction of every metric the evaluate stage writes.
HIGHER_IS_BETTER = {"max_f": True, "iou": True, "dice": True, "boundary_f": True, "mae": False}


@dataclass(frozen=True)
class Decision:
    """Which alias the new version gets, and why (a sentence for people and for the registry)."""

    alias: str
    reason: str

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


def decide(metric: str, new: float, champion: float | None, min_delta: float,
           baseline: float | None = None, require_beats_baseline: bool = False) -> Decision:
    """The gate. `champion` is None when there is none yet; `baseline` is stock U²-NetP's score."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"register.metric {metric!r} is not one of {', '.join(HIGHER_IS_BETTER)}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    word = "higher" if sign > 0 else "lower"
    if require_beats_baseline and baseline is not None and sign * (new - baseline) <= 0:
        return Decision(CHALLENGER, f"{metric} {new:.4f} does not beat stock U²-NetP's {baseline:.4f} "
                                    f"({word} is better) and register.require_beats_baseline is on")
    if champion is None:
        return Decision(CHAMPION, f"first model: no champion yet ({metric} {new:.4f})")
    gain = sign * (new - champion)
    if gain - min_delta > 1e-9:  # scores are floats: 0.802 - 0.800 is not more than 0.002
        return Decision(CHAMPION, f"{metric} {new:.4f} beats the champion's {champion:.4f} by {gain:.4f} "
                                  f"> min_delta {min_delta} ({word} is better)")
    return Decision(CHALLENGER, f"{metric} {new:.4f} vs the champion's {champion:.4f}: gain {gain:+.4f} is "
                                f"not more than min_delta {min_delta} ({word} is better); champion kept")


def test_set_id(rows: pd.DataFrame) -> str:
    """Fingerprint of the test images and masks: scores are comparable only on the same set."""
    digest = hashlib.sha256()
    for _, row in rows.sort_values("name").iterrows():
        digest.update(f"{row['name']}\0{row['content_hash']}\0{sha256_file(Path(row['mask_path']))}\n".encode())
    return digest.hexdigest()


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


def version_of_run(client, name: str, run_id: str, serving_key: str):
    """The version already registered from this run and served the same way (re-running register
    must not add another; a changed serving set-up, e.g. int8 on, registers a new one)."""
    for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if (mv.tags or {}).get("serving_key") == serving_key:
            return mv
    return None


def serving_key(model_file: Path, onnx_file: Path | None, size: int, max_pixels: int, extra: dict | None,
                max_request_mb: float, refine: Refine = Refine()) -> str:
    """What identifies a servable: the trained weights and how they are served."""
    parts = [sha256_file(Path(model_file)) if Path(model_file).exists() else str(model_file), str(size),
             str(max_pixels), f"{max_request_mb:g}",
             "onnx" if onnx_file else "keras", (extra or {}).get("onnx.int8", "")]
    if refine != Refine():  # a model served unrefined keeps the key it had before refinements existed
        parts.append(refine.to_json())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def champion_version(client, name: str):
    """The version holding `champion`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def stored_score(mv, metric: str) -> float | None:
    """A version's recorded test score (tag metric.NAME), or None."""
    value = (mv.tags or {}).get(f"metric.{metric}")
    return float(value) if value not in (None, "") else None


def ensure_registered_model(client, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

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
        except Exception:  # noqa: BLE001 - no challenger alias: nothing to clear
            pass
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)


LINEAGE_TAGS = ("git.commit", "data.sha256", "dvc.augmented_md5", "tune.best_trial")


def register_run(client, name: str, run_id: str, model_file: Path, metrics: dict, test: pd.DataFrame, *,
                 size: int, max_pixels: int, serve_max_pixels: int, example: bytes, metric: str,
                 min_delta: float, require_beats_baseline: bool, onnx_file: Path | None = None,
                 serve_max_request_mb: float, extra_tags: dict[str, str] | None = None,
                 refine: Refine = Refine(), lock: str | None = None) -> Registered:
    """Log the servable model into the training run, register it (once per run), and gate its alias.

    `metrics` is the evaluate stage's metrics.json for this model on `test`. The champion's score
    is its recorded one when it was measured on the same test images, else it is scored here.
    Registering and deciding happen under one lock (`lock`: a database URL or a lock file; None = the
    registry's own database), so concurrent registrations are decided one at a time: without it two
    could both beat the old champion and the worse one could take the alias last.
    """
    import mlflow

    test_id = test_set_id(test)
    ensure_registered_model(client, name, "Background removal: image in, foreground mask / cut-out out "
                            "(bgremoval pipeline). Serve with `mlflow models serve -m models:/NAME@champion`.")
    # Under one lock: finding this run's version, registering it, and deciding its alias. Two registrations
    # of one run then add one version, and two of different runs are compared one after the other.
    with named_lock(lock or mlflow.get_registry_uri(), f"bgremoval-registry:{name}"):
        mv = _register_version(client, name, run_id, model_file, onnx_file, metrics, test, test_id, size=size,
                               serve_max_pixels=serve_max_pixels, serve_max_request_mb=serve_max_request_mb,
                               example=example, extra_tags=extra_tags, refine=refine)
        decision, champ, champ_score = _decide_and_apply(client, name, mv, run_id, metrics, test, test_id, metric,
                                                         min_delta, require_beats_baseline, max_pixels)
    new_score = float(metrics[metric])
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags({"registry.name": name, "registry.version": str(mv.version), "registry.alias": decision.alias})
    return Registered(
        name=name, version=str(mv.version), alias=decision.alias, run_id=run_id,
        model_uri=f"models:/{name}/{mv.version}", decision="promoted" if decision.promoted else "kept champion",
        reason=decision.reason, metric=metric, score=new_score,
        champion_version=str(champ.version) if champ is not None else None,
        champion_score=None if champ_score is None else round(float(champ_score), 6),
    )


def _register_version(client, name: str, run_id: str, model_file: Path, onnx_file: Path | None, metrics: dict,
                      test: pd.DataFrame, test_id: str, *, size: int, serve_max_pixels: int,
                      serve_max_request_mb: float, example: bytes, extra_tags: dict[str, str] | None,
                      refine: Refine):
    """This run's version served this way: the one registered before, or a new one logged and registered now."""
    import mlflow

    from bgremoval import serving

    key = serving_key(model_file, onnx_file, size, serve_max_pixels, extra_tags, serve_max_request_mb, refine)
    mv = version_of_run(client, name, run_id, key)
    if mv is None:
        with mlflow.start_run(run_id=run_id):
            info = serving.log_model(Path(model_file), size, serve_max_pixels, example, onnx_file,
                                     max_request_mb=serve_max_request_mb, refine=refine)
        run_tags = client.get_run(run_id).data.tags
        tags = {f"metric.{k}": f"{v:.6f}" for k, v in metrics.items() if isinstance(v, float)}
        tags |= {f"baseline.{k}": f"{v:.6f}" for k, v in metrics.get("baseline", {}).items()}
        tags |= {k: run_tags[k] for k in LINEAGE_TAGS if k in run_tags}
        tags |= {"test_set": test_id, "n_test_images": str(len(test)), "input_size": str(size), "refine": refine.name,
                 "runtime": "onnxruntime" if onnx_file else "keras", "serving_key": key, **(extra_tags or {})}
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
        log.info("registered %s version %s from run %s", name, mv.version, run_id)
    else:
        log.info("run %s is already %s version %s; deciding its alias again", run_id, name, mv.version)
    return mv


def _decide_and_apply(client, name: str, mv, run_id: str, metrics: dict, test: pd.DataFrame, test_id: str,
                      metric: str, min_delta: float, require_beats_baseline: bool, max_pixels: int):
    """Compare with the champion (rescored if its test set differs), move aliases, record why."""
    new_score = float(metrics[metric])
    champ, champ_score = champion_version(client, name), None
    if champ is not None and str(champ.version) == str(mv.version):
        champ, decision = None, Decision(CHAMPION, f"already the champion ({metric} {new_score:.4f})")
    elif champ is not None and champ.run_id == run_id:  # same weights, served differently (e.g. int8 now)
        decision = Decision(CHAMPION, f"the champion's own trained model (run {run_id}), with a new serving set-up")
        apply_decision(client, name, mv.version, decision, champ)
    else:
        if champ is not None:
            same_set = (champ.tags or {}).get("test_set") == test_id
            champ_score = stored_score(champ, metric) if same_set else None
            if champ_score is None:  # scored on other images (or not at all): score it on these, now
                champ_score = score_version(name, champ.version, metric, test, max_pixels)
                log.info("champion v%s scored on this test set: %s %.4f", champ.version, metric, champ_score)
        decision = decide(metric, new_score, champ_score, min_delta,
                          metrics.get("baseline", {}).get(metric), require_beats_baseline)
        apply_decision(client, name, mv.version, decision, champ)
    client.set_model_version_tag(name, mv.version, "decision", decision.alias)
    client.set_model_version_tag(name, mv.version, "decision.reason", decision.reason)
    baseline = metrics.get("baseline", {}).get(metric)
    client.update_model_version(name, mv.version, description=(
        f"{metric} {new_score:.4f} on {len(test)} test images"
        + (f" (stock U²-NetP {baseline:.4f})" if baseline is not None else "") + f". {decision.reason}."))
    return decision, champ, champ_score


def score_version(name: str, version, metric: str, test: pd.DataFrame, max_pixels: int) -> float:
    """A registered version's `metric` on these test images (same protocol as the evaluate stage)."""
    from bgremoval import serving
    from bgremoval.evaluate import evaluate
    from bgremoval.metrics import summarise

    segmenter, _ = serving.load(f"models:/{name}/{version}")
    _, scores = evaluate(test, segmenter, max_pixels, progress=f"rescore v{version}")
    return float(summarise(scores)[metric])
