"""train: fine-tune (or train) the network on the augment stage's shards, tracked in MLflow."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import keras
import mlflow
import numpy as np

from bgremoval import tracking
from bgremoval.train import (
    ModelConfig, TrainConfig, build_network, checkpoint_epoch, choose_blend, clean_logs, count_records, datasets,
    evaluate_val, fit, inference_model, positive_weight, predict_masks, run_key, steps_per_epoch,
)
from bgremoval.tune import apply_overrides
from bgremoval.viz import grid, overlay
from stages.common import run, start

log = logging.getLogger("stages.train")


def prediction_grid(model: keras.Model, val_ds, n: int = 8):
    """Val images: ground truth (green) beside the prediction (magenta)."""
    images, masks = next(iter(val_ds.unbatch().batch(n)))
    images, masks = images.numpy(), masks.numpy()[..., 0]
    preds = predict_masks(model, images)
    tiles, labels = [], []
    for img, gt, pr in zip(images, masks, preds):
        rgb = (img * 255).round().astype(np.uint8)
        tiles += [overlay(rgb, (gt * 255).astype(np.uint8)), overlay(rgb, (pr * 255).astype(np.uint8), color=(255, 0, 200))]
        labels += ["truth", "predicted"]
    return grid(tiles, labels, cols=4)


def blend(network: keras.Model, pretrained: list, val_ds, model_cfg: ModelConfig, train_cfg: TrainConfig):
    """train.blend: mix the pretrained weights back in at the share that scores best on val; logged to MLflow."""
    if model_cfg.family != "u2netp":  # a network trained from scratch has no pretrained weights to keep
        if train_cfg.blend != (1.0,):
            log.warning("train.blend %s ignored: model.family %s has no pretrained weights", list(train_cfg.blend),
                        model_cfg.family)
        return 1.0, {}
    share, scores = choose_blend(network, pretrained, val_ds, train_cfg.blend)
    for s, metrics in scores.items():  # one curve in the MLflow UI: val IoU against the share of fine-tuned weights
        mlflow.log_metric("blend/val_iou", metrics["iou"], step=round(100 * s))
    mlflow.log_metric("blend/share", share)
    if scores:
        log.info("blend: %.2f of the fine-tuned weights (val IoU %s)", share,
                 ", ".join(f"{s:.2f}: {m['iou']:.4f}" for s, m in scores.items()))
    return share, scores


def main() -> int:
    params = start("train")
    seed, paths = params["base"]["seed"], params["paths"]
    keras.utils.set_random_seed(seed)
    # tune's best values for the keys params.yaml lists under tune.apply override train:/model:.
    tuned = json.loads(Path(paths["best_params"]).read_text())
    model_cfg = apply_overrides("model", ModelConfig(**params["model"]), tuned["apply"])
    train_cfg = apply_overrides("train", TrainConfig(**params["train"]), tuned["apply"])
    shards, models, reports = Path(paths["augmented"]), Path(paths["models"]), Path(paths["reports"])
    pos_weight = positive_weight(train_cfg, shards)

    train_ds, val_ds = datasets(shards, train_cfg.size, train_cfg.batch_size, seed)
    n_train = count_records(shards, "train")
    steps = steps_per_epoch(train_cfg, shards)
    network = build_network(model_cfg)
    pretrained = [w.copy() for w in network.get_weights()]  # what train.blend mixes back in after fine-tuning
    data_id = tracking.fingerprint(list(shards.glob("*.tfrecord")))
    checkpoints = Path(paths["checkpoints"]) / run_key(model_cfg, train_cfg, data_id, seed)

    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    key = checkpoints.name
    resumed = checkpoint_epoch(checkpoints)
    previous = tracking.unfinished_run("train.run_key", key) if resumed else None
    if resumed:  # a run of this very configuration was cut off: go on from its last finished epoch
        log.info("resuming from the checkpoint after epoch %d (%s)%s", resumed, checkpoints,
                 f", in MLflow run {previous}" if previous else "")
    with mlflow.start_run(run_id=previous, run_name=None if previous else "train") as run:
        mlflow.set_tags({"train.run_key": key, "train.resumed_at_epoch": str(resumed)})
        if previous is None:  # a resumed run has its params already (MLflow params are write-once)
            mlflow.log_params({f"model.{k}": v for k, v in asdict(model_cfg).items()})
            mlflow.log_params({f"train.{k}": v for k, v in asdict(train_cfg).items()})
            mlflow.log_params({"base.seed": seed, "pos_weight": pos_weight, "steps_per_epoch": steps, "n_train": n_train})
        mlflow.set_tag("tune.best_trial", f"{tuned['study']}#{tuned['trial']}")
        mlflow.set_tags({
            "stage": "train",
            "git.commit": tracking.git_commit(Path.cwd()),
            "dvc.augmented_md5": tracking.dvc_out_hash(Path("dvc.lock"), "augment", paths["augmented"]) or "unknown",
            "data.sha256": data_id,
        })
        rename = lambda logs: clean_logs(network, logs)  # noqa: E731
        progress = tracking.Progress(train_cfg.epochs, steps, rename, done_epochs=resumed)
        history = fit(network, train_ds, val_ds, train_cfg, pos_weight, steps, checkpoints,
                      [tracking.EpochLogger(rename), progress])
        progress.close()
        share, blends = blend(network, pretrained, val_ds, model_cfg, train_cfg)

        model = inference_model(network)
        models.mkdir(parents=True, exist_ok=True)
        model.save(models / "model.keras")
        # The servable MLflow model (pyfunc with this code) is logged into this run by `register`.
        reports.mkdir(parents=True, exist_ok=True)
        prediction_grid(model, val_ds).save(reports / "train_predictions.png")
        mlflow.log_artifact(str(reports / "train_predictions.png"))

        # The saved model is the best epoch's (early stopping restores it), blended: report *its* val metrics.
        final = evaluate_val(network, val_ds)
        mlflow.log_metrics({f"model_val/{k}": v for k, v in final.items()})
        summary = {"run_id": run.info.run_id, "epochs_run": len(next(iter(history.values()), [])), "val": final,
                   "blend": {"share": share, "val_iou": {str(s): m["iou"] for s, m in blends.items()}}}
        (reports / "train.json").write_text(json.dumps(summary, indent=2))
    log.info("trained %s for %d epochs: val %s; MLflow run %s", model_cfg.family, summary["epochs_run"],
             {k: round(v, 4) for k, v in final.items()}, summary["run_id"])
    return 0


if __name__ == "__main__":
    run(main)
