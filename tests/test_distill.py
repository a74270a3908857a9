"""Learning from photos without masks: the teacher's soft masks, the student's budget, and a toy run whose
kept model is never worse on val than the teacher it started from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.data.augment import AugmentConfig
from bgremoval.model.network import load_model
from bgremoval.training.distill import DistillConfig, student_steps, teacher_masks
from tests.helpers import PARAMS, disc_image, model_config, toy_shards, tracking_store, train_config

CFG = DistillConfig(**{**PARAMS["distill"], "teacher_size": 32, "copies": 1, "steps_per_1000": 500})


def test_the_students_steps_grow_with_the_unlabelled_photos():
    assert student_steps(1, CFG) == 1 and student_steps(10, CFG) == 5 and student_steps(2000, CFG) == 1000


class _Half:
    """A stand-in model: probability = the left half of the image is foreground."""

    def predict_on_batch(self, x):
        out = np.zeros(x.shape[:3] + (1,), np.float32)
        out[:, :, : x.shape[2] // 2] = 1.0
        return out


def test_teacher_masks_are_at_each_photos_size_and_flip_averages_the_mirror():
    photos = [np.zeros((20, 30, 3), np.uint8), np.zeros((12, 16, 3), np.uint8)]
    plain = teacher_masks(_Half(), photos, 16, flip=False)
    assert [m.shape for m in plain] == [(20, 30), (12, 16)] and plain[0][:, 0].min() == 255 and plain[0][:, -1].max() == 0
    both = teacher_masks(_Half(), photos, 16, flip=True)  # left half from the photo, right half from its mirror
    assert np.abs(both[0].astype(int) - 128).max() <= 1


@pytest.mark.slow
def test_a_toy_student_is_kept_only_as_far_as_val_says(tmp_path, toy_model, mlflow_uri):
    import mlflow

    from bgremoval.training.distill import DistillSetup, distill

    shards = toy_shards(tmp_path / "shards", n_train=32, n_val=8)
    rows = []
    for i in range(6):
        image, _ = disc_image(40, 48, seed=50 + i)
        Image.fromarray(image).save(tmp_path / f"u_{i}.png")
        rows.append({"name": f"u_{i}", "image_path": str(tmp_path / f"u_{i}.png")})
    aug = AugmentConfig.from_params({**PARAMS["augment"], "size": 32})
    train_cfg = train_config(size=32, batch_size=4, freeze_epochs=0, pos_weight=3.0)
    with tracking_store(mlflow_uri):
        mlflow.set_experiment("distill")
        with mlflow.start_run() as run:
            setup = DistillSetup(distill=CFG, model=model_config(family="unet", unet_filters=[4, 8, 16]),
                                 train=train_cfg, augment=aug, seed=0, max_pixels=10**6, shards=shards)
            student, summary = distill(load_model(toy_model), pd.DataFrame(rows), setup=setup)
        logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert summary["unlabelled"] == 6 and summary["pseudo_pairs"] == 6 and summary["steps"] == 3
    assert summary["share"] in CFG.blend and summary["val_iou_kept"] >= summary["val_iou_teacher"] - 1e-6
    assert logged["distill/steps"] == 3 and "distill/val/iou" in logged
    assert student.output_shape == (None, None, None, 1)
