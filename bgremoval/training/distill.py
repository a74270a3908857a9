"""Learning from photos without masks: the trained model, averaged with its mirror image, is the teacher
whose soft masks of the unlabelled photos become extra training pairs; the student starts from the
trained weights and trains on labelled and pseudo-labelled pairs together (self-training). Whether the
student is kept is decided on val, by blending it with the teacher's weights."""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from tqdm import tqdm

from bgremoval.data.augment import AugmentConfig, augment_pair
from bgremoval.data.shards import read_dataset, write_shards
from bgremoval.images import load_rgb
from bgremoval.model.network import ModelConfig, build_network, inference_model
from bgremoval.network_io import resize_back, squash
from bgremoval.settings import apply_overrides
from bgremoval.training.blend import choose_blend
from bgremoval.training.callbacks import EpochLogger
from bgremoval.training.fit import (
    TrainConfig, clean_logs, compile_network, datasets, evaluate_val, fit, positive_weight,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """params.yaml distill:."""

    teacher_size: int          # the teacher predicts at this size
    flip: bool                 # average the teacher's mask with its mask of the mirrored photo
    copies: int                # augmented copies of each pseudo-labelled photo
    pseudo_share: float        # share of each training batch drawn from the pseudo-labelled pairs
    steps_per_1000: int        # student training steps per 1,000 unlabelled photos
    learning_rate: float
    blend: list[float]         # shares of the student's weights scored on val against the teacher's


def teacher_masks(model: keras.Model, images: list[np.ndarray], size: int, flip: bool, batch: int = 8) -> list[np.ndarray]:
    """The model's soft masks (uint8, each at its photo's size), averaged with the mirrored photo's if `flip`."""
    masks = []
    for start in tqdm(range(0, len(images), batch), desc="teacher", unit="batch", leave=False):
        chunk = images[start:start + batch]
        x = np.stack([squash(image, size) for image in chunk])
        prob = np.asarray(model.predict_on_batch(x))[..., 0]
        if flip:
            prob = (prob + np.asarray(model.predict_on_batch(x[:, :, ::-1]))[..., 0][:, :, ::-1]) / 2
        for image, p in zip(chunk, prob):
            masks.append(np.round(resize_back(p, image.shape[1], image.shape[0]) * 255).astype(np.uint8))
    return masks


@dataclass(frozen=True)
class DistillSetup:
    """The distill stage's settings: params.yaml distill:, the model: and train: the trained model was trained with
    (tune's best values for tune.apply's keys applied), augment:, base.seed, prepare.max_pixels and the shards."""

    distill: DistillConfig
    model: ModelConfig
    train: TrainConfig
    augment: AugmentConfig
    seed: int
    max_pixels: int
    shards: Path           # the augment stage's shards: the labelled pairs the student keeps training on

    @classmethod
    def from_params(cls, params: dict[str, Any], tuned: dict[str, Any]) -> "DistillSetup":
        return cls(distill=DistillConfig(**params["distill"]),
                   model=apply_overrides("model", ModelConfig(**params["model"]), tuned),
                   train=apply_overrides("train", TrainConfig(**params["train"]), tuned),
                   augment=AugmentConfig.from_params(params["augment"]), seed=params["base"]["seed"],
                   max_pixels=params["prepare"]["max_pixels"], shards=Path(params["paths"]["augmented"]))


def pseudo_shards(model: keras.Model, rows: pd.DataFrame, setup: DistillSetup, out_dir: Path) -> int:
    """Augmented copies of the unlabelled photos with the teacher's soft masks, as shards; how many."""
    cfg, aug, seed, max_pixels = setup.distill, setup.augment, setup.seed, setup.max_pixels
    max_side = 3 * aug.size  # as the augment stage keeps: enough for the tightest crop
    images = []
    for path in rows["image_path"]:
        image = load_rgb(Path(path), max_pixels)
        scale = min(1.0, max_side / max(image.shape[:2]))
        if scale < 1:
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale)),
                                                             Image.Resampling.LANCZOS))
        images.append(image)
    masks = teacher_masks(model, images, cfg.teacher_size, cfg.flip)

    def records():
        for i, (name, image, mask) in enumerate(zip(rows["name"], images, masks)):
            for k in range(cfg.copies):
                rng = np.random.default_rng([seed, 1_000_003, i, k])  # apart from the augment stage's streams
                yield f"{name}#{k}", *augment_pair(rng, image, mask, aug, None)

    write_shards(records(), out_dir, "pseudo", 256)
    return len(images) * cfg.copies


def student_steps(n_unlabelled: int, cfg: DistillConfig) -> int:
    """Training steps for this many unlabelled photos (at least one)."""
    return max(1, math.ceil(n_unlabelled * cfg.steps_per_1000 / 1000))


def distill(model: keras.Model, unlabelled: pd.DataFrame, *, setup: DistillSetup) -> tuple[keras.Model, dict[str, Any]]:
    """The student (an inference model) and a summary; logged into the active MLflow run as distill/*."""
    import tensorflow as tf

    cfg, model_cfg, train_cfg, shards, seed = setup.distill, setup.model, setup.train, setup.shards, setup.seed
    steps = student_steps(len(unlabelled), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        n_pseudo = pseudo_shards(model, unlabelled, setup, Path(tmp) / "pseudo")
        size = train_cfg.size
        labelled, val_ds = datasets(shards, size, train_cfg.batch_size, seed, train_cfg.draft_weight)
        pseudo = (read_dataset(sorted(str(p) for p in (Path(tmp) / "pseudo").glob("*.tfrecord")), size).cache()
                  .shuffle(1024, seed=seed).repeat().batch(train_cfg.batch_size, drop_remainder=True))
        mixed = tf.data.Dataset.sample_from_datasets([labelled.unbatch(), pseudo.unbatch()],
                                                     weights=[1 - cfg.pseudo_share, cfg.pseudo_share], seed=seed)
        mixed = mixed.batch(train_cfg.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        network = build_network(model_cfg)
        network.set_weights(model.get_weights())  # the inference model holds every weight of the network
        teacher = [w.copy() for w in network.get_weights()]
        student_cfg = replace(train_cfg, epochs=1, steps_per_epoch=steps, learning_rate=cfg.learning_rate,
                              freeze_epochs=min(train_cfg.freeze_epochs, 1), schedule="constant", patience=1)
        pos_weight = positive_weight(train_cfg, shards)
        compile_network(network, student_cfg, pos_weight, steps)  # to score the teacher's weights first
        before = evaluate_val(network, val_ds)
        rename = lambda logs: {f"distill/{k}": v for k, v in clean_logs(network, logs).items()}  # noqa: E731
        fit(network, mixed, val_ds, student_cfg, pos_weight=pos_weight, steps_per_epoch=steps,
            checkpoint_dir=Path(tmp) / "ckpt", callbacks=[EpochLogger(rename)])
        share, by_share = choose_blend(network, teacher, val_ds, tuple(cfg.blend))
        after = evaluate_val(network, val_ds)
    summary = {"unlabelled": len(unlabelled), "pseudo_pairs": n_pseudo, "steps": steps, "share": share,
               "val_iou_teacher": before["iou"], "val_iou_kept": after["iou"],
               "val_iou_by_share": {str(s): m["iou"] for s, m in by_share.items()}}
    mlflow.log_metrics({"distill/unlabelled": len(unlabelled), "distill/steps": steps, "distill/share": share,
                        "distill/val_iou_teacher": before["iou"], "distill/val_iou_kept": after["iou"]})
    log.info("distill: %d unlabelled photos, %d steps; val IoU %s", len(unlabelled), steps,
             f"{before['iou']:.4f} (teacher) -> {after['iou']:.4f} (kept {share:.2f} of the student)")
    return inference_model(network), summary
