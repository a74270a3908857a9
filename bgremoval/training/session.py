"""One training run, tracked: resumed from its checkpoints if it was cut off, logged as one MLflow run
(params, lineage, datasets, per-epoch curves), fine-tuned, then blended with the pretrained weights."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf

from bgremoval import tracking
from bgremoval.data.manifest import DRAFT
from bgremoval.model.network import ModelConfig, build_network, inference_model
from bgremoval.pictures import grid, overlay
from bgremoval.settings import apply_overrides
from bgremoval.training import distribute
from bgremoval.training.blend import choose_blend
from bgremoval.training.callbacks import EpochLogger, Progress
from bgremoval.training.fit import (
    TrainConfig, checkpoint_epoch, clean_logs, count_records, datasets, draft_share, evaluate_val, fit, positive_weight,
    run_key, steps_per_epoch, val_dataset,
)

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """What a finished run hands on: the model to save and the facts train.json records."""

    model: keras.Model          # inference model: [0, 1] RGB -> probability
    summary: dict[str, Any]     # run_id, epochs_run, val metrics, blend


@dataclass(frozen=True)
class TrainSetup:
    """The train stage's settings: params.yaml model: and train: with tune's best values for the keys tune.apply
    lists, base.seed, and the paths it reads and writes."""

    model: ModelConfig
    train: TrainConfig
    distribute: distribute.DistributeConfig
    seed: int
    shards: Path          # the augment stage's shards
    checkpoints: Path     # where a cut-off run resumes from
    manifest: Path        # its splits are logged as the run's datasets

    @classmethod
    def from_params(cls, params: dict[str, Any], tuned: dict[str, Any]) -> "TrainSetup":
        paths = params["paths"]
        return cls(model=apply_overrides("model", ModelConfig(**params["model"]), tuned),
                   train=apply_overrides("train", TrainConfig(**params["train"]), tuned),
                   distribute=distribute.DistributeConfig(**params["distribute"]), seed=params["base"]["seed"],
                   shards=Path(paths["augmented"]), checkpoints=Path(paths["checkpoints"]),
                   manifest=Path(paths["manifest"]))


def train_tracked(setup: TrainSetup, *, manifest: pd.DataFrame, lineage: dict[str, str],
                  strategy: tf.distribute.Strategy | None = None) -> Trained:
    """Train in the MLflow run of this configuration (a new one, or the one a kill cut off), on the devices of
    `strategy` (distribute.strategy's; None: one device). On a multi-worker cluster this is the chief's part."""
    strategy = strategy or tf.distribute.get_strategy()
    if not distribute.is_chief(strategy):
        raise RuntimeError(f"this machine is {distribute.task_name(distribute.cluster_config())} of $TF_CONFIG's "
                           "cluster, not its chief: run `bgremoval train-worker` here and `dvc repro` on the chief")
    model_cfg, train_cfg, shards, seed = setup.model, setup.train, setup.shards, setup.seed
    replicas = strategy.num_replicas_in_sync
    scaled = distribute.scaled(train_cfg, strategy, setup.distribute.scale_with_replicas)
    key = run_key(model_cfg, scaled, lineage["data.sha256"], seed)
    checkpoints = Path(setup.checkpoints) / key
    resumed = checkpoint_epoch(checkpoints)
    previous = tracking.unfinished_run("train.run_key", key) if resumed else None
    if resumed:  # a run of this very configuration was cut off: go on from its last finished epoch
        log.info("resuming from the checkpoint after epoch %d (%s)%s", resumed, checkpoints,
                 f", in MLflow run {previous}" if previous else "")
    steps, pos_weight = steps_per_epoch(scaled, shards), positive_weight(train_cfg, shards)
    with tracking.run("train", run_id=previous) as run:
        mlflow.set_tags({"stage": "train", "train.run_key": key, "train.resumed_at_epoch": str(resumed), **lineage})
        if previous is None:  # a resumed run has its params and inputs already (MLflow params are write-once)
            mlflow.log_params({f"model.{k}": v for k, v in asdict(model_cfg).items()})
            mlflow.log_params({f"train.{k}": v for k, v in asdict(train_cfg).items()})
            mlflow.log_params({f"distribute.{k}": v for k, v in asdict(setup.distribute).items()})
            # What the replicas trained with: the global batch and learning rate after distribute.scale_with_replicas.
            mlflow.log_params({"distribute.replicas": replicas, "distribute.global_batch": scaled.batch_size,
                               "distribute.learning_rate": scaled.learning_rate})
            # Who made the train split's masks (a person, or a model's unreviewed drafts), in pairs and in the
            # augmented copies trained on, and the share of training draws that are drafts.
            origins = manifest.loc[manifest["split"] == "train", "mask_origin"].value_counts()
            mlflow.log_params({"train_masks.person": int(origins.get("person", 0)),
                               "train_masks.draft": int(origins.get(DRAFT, 0))})
            mlflow.log_params({"base.seed": seed, "pos_weight": pos_weight, "steps_per_epoch": steps,
                               "n_train": count_records(shards, "train"), "n_train_drafts": count_records(shards, DRAFT),
                               "draft_share": round(draft_share(count_records(shards, "train"),
                                                                count_records(shards, DRAFT), train_cfg.draft_weight), 4)})
            tracking.log_split_inputs(manifest, setup.manifest)
        network, history, share, blends, final = _train(setup, strategy, key=key, checkpoints=checkpoints,
                                                        resumed=resumed, epoch_logs=True)
        mlflow.log_metrics({f"model_val/{k}": v for k, v in final.items()})
        summary = {"run_id": run.info.run_id, "epochs_run": len(next(iter(history.values()), [])), "val": final,
                   "replicas": replicas,
                   "blend": {"share": share, "val_iou": {str(s): m["iou"] for s, m in blends.items()}}}
    val = {k: round(v, 4) for k, v in final.items()}
    log.info("trained %s for %s: val %s; MLflow run %s", model_cfg.family,
             f"{summary['epochs_run']} epochs on {replicas} replica(s)", val, summary["run_id"])
    return Trained(inference_model(network), summary)


def train_worker(setup: TrainSetup, *, data_fingerprint: str, strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """A multi-worker cluster's other machine: the chief's epochs, evaluations and blend, in lockstep (every
    collective step must run on every worker), writing nothing but its own checkpoints (to resume with the chief)."""
    config = distribute.cluster_config()
    if distribute.is_chief(strategy):
        raise RuntimeError("train-worker is for the machines of a multi-worker cluster other than its chief "
                           "(distribute.strategy multi_worker, $TF_CONFIG naming another task); this is "
                           f"{distribute.task_name(config)}: run `dvc repro` here")
    scaled = distribute.scaled(setup.train, strategy, setup.distribute.scale_with_replicas)
    key = run_key(setup.model, scaled, data_fingerprint, setup.seed)
    task = config["task"]
    checkpoints = Path(setup.checkpoints) / f"{key}.{task['type']}-{task['index']}"
    resumed = checkpoint_epoch(checkpoints)
    if resumed:
        log.info("resuming from the checkpoint after epoch %d (%s)", resumed, checkpoints)
    _, history, share, _, final = _train(setup, strategy, key=key, checkpoints=checkpoints, resumed=resumed,
                                         epoch_logs=False)
    return {"task": distribute.task_name(config), "epochs_run": len(next(iter(history.values()), [])), "val": final,
            "blend": share}


def _train(setup: TrainSetup, strategy, *, key: str, checkpoints: Path, resumed: int, epoch_logs: bool):
    """Build, fit, blend and score under the strategy: the same steps on every worker of a cluster (which first
    check that they all train the same run key). epoch_logs: each epoch's metrics and the blend curve go to the
    active MLflow run (the chief's)."""
    distribute.agree(strategy, key)
    model_cfg, shards, seed = setup.model, setup.shards, setup.seed
    train_cfg = distribute.scaled(setup.train, strategy, setup.distribute.scale_with_replicas)
    steps, pos_weight = steps_per_epoch(train_cfg, shards), positive_weight(train_cfg, shards)
    train_ds, val_ds = datasets(shards, train_cfg.size, train_cfg.batch_size, seed, train_cfg.draft_weight,
                                replicas=strategy.num_replicas_in_sync)
    train_ds, val_ds = distribute.by_element(train_ds), distribute.by_element(val_ds)
    with strategy.scope():
        network = build_network(model_cfg)
        pretrained = [w.copy() for w in network.get_weights()]  # what train.blend mixes back in after fine-tuning
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        progress = Progress(train_cfg.epochs, steps, rename, done_epochs=resumed)
        callbacks = [EpochLogger(rename), progress] if epoch_logs else [progress]
        history = fit(network, train_ds, val_ds, train_cfg, pos_weight=pos_weight, steps_per_epoch=steps,
                      checkpoint_dir=checkpoints, callbacks=callbacks)
        progress.close()
        share, blends = _blend(network, pretrained, val_ds, model_cfg, train_cfg, log_curve=epoch_logs)
        # The saved model is the best epoch's (early stopping restores it), blended: report *its* val metrics.
        final = evaluate_val(network, val_ds)
    return network, history, share, blends, final


def _blend(network: keras.Model, pretrained: list, val_ds, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
           log_curve: bool):
    """train.blend: mix the pretrained weights back in at the share that scores best on val; logged to MLflow
    (log_curve)."""
    if model_cfg.family != "u2netp":  # a network trained from scratch has no pretrained weights to keep
        if train_cfg.blend != (1.0,):
            log.info("train.blend %s not applied: model.family %s has no pretrained weights", list(train_cfg.blend),
                     model_cfg.family)
        return 1.0, {}
    share, scores = choose_blend(network, pretrained, val_ds, train_cfg.blend)
    if log_curve:  # one curve in the MLflow UI: val IoU against the share of fine-tuned weights
        for s, metrics in scores.items():
            mlflow.log_metric("blend/val_iou", metrics["iou"], step=round(100 * s))
        mlflow.log_metric("blend/share", share)
    if scores:
        log.info("blend: %.2f of the fine-tuned weights (val IoU %s)", share,
                 ", ".join(f"{s:.2f}: {m['iou']:.4f}" for s, m in scores.items()))
    return share, scores


def prediction_grid(model: keras.Model, shards: Path, size: int, n: int = 8):
    """Val images: ground truth (green) beside the prediction (magenta); whatever the train split holds (a
    person's masks, drafts, or drafts alone)."""
    val_ds = val_dataset(shards, size, n)
    images, masks = next(iter(val_ds.unbatch().batch(n)))
    images, masks = images.numpy(), masks.numpy()[..., 0]
    preds = np.asarray(model.predict(images, batch_size=n, verbose=0))[..., 0]
    tiles, labels = [], []
    for img, gt, pr in zip(images, masks, preds):
        rgb = (img * 255).round().astype(np.uint8)
        tiles += [overlay(rgb, (gt * 255).astype(np.uint8)), overlay(rgb, (pr * 255).astype(np.uint8), color=(255, 0, 200))]
        labels += ["truth", "predicted"]
    return grid(tiles, labels, cols=4)
