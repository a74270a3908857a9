"""Unreviewed drafts in training: their own shards, drawn train.draft_weight times as often as a person's masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bgremoval.training.fit import datasets, draft_share, steps_per_epoch
from tests.helpers import train_config


def shards(folder: Path, n_person: int, n_draft: int, size: int = 8) -> Path:
    """Shards whose masks say where they came from: a person's are all 0, drafts' all 255."""
    from bgremoval.data.shards import write_shards

    image = np.zeros((size, size, 3), np.uint8)
    for prefix, n, value in (("train", n_person, 0), ("draft", n_draft, 255), ("val", 2, 0)):
        if n:
            write_shards(((f"{prefix}{i}", image, np.full((size, size), value, np.uint8)) for i in range(n)),
                         folder, prefix, 64)
    (folder / "stats.json").write_text(json.dumps({"n": {"train": n_person, "draft": n_draft, "val": 2, "test": 0},
                                                   "pos_weight": 1.0, "size": size}))
    return folder


def draft_fraction(folder: Path, weight: float, batches: int = 40) -> float:
    train, _ = datasets(folder, 8, 10, 0, weight)
    masks = np.concatenate([m.numpy() for _, m in train.take(batches)])
    return float(masks.reshape(len(masks), -1).mean(axis=1).mean())


def test_the_share_drawn_from_drafts():
    assert draft_share(30, 10, 0.0) == 0.0
    assert draft_share(30, 10, 1.0) == pytest.approx(0.25)
    assert draft_share(30, 30, 0.5) == pytest.approx(1 / 3)
    assert draft_share(0, 10, 0.5) == 1.0


def test_drafts_are_drawn_as_often_as_their_weight_says(tmp_path):
    folder = shards(tmp_path, n_person=20, n_draft=20)
    assert draft_fraction(folder, 0.0) == 0.0
    assert draft_fraction(folder, 1.0) == pytest.approx(0.5, abs=0.08)  # 400 pairs drawn
    assert draft_fraction(folder, 0.25) == pytest.approx(0.2, abs=0.06)


def test_only_drafts_train_alone_unless_their_weight_is_zero(tmp_path):
    folder = shards(tmp_path, n_person=0, n_draft=12)
    assert draft_fraction(folder, 0.5, batches=3) == 1.0
    with pytest.raises(ValueError, match="train.draft_weight is 0"):
        datasets(folder, 8, 4, 0, 0.0)


def test_the_report_pictures_val_when_every_training_mask_is_a_draft(tmp_path):
    """A folder whose every training photo is a draft (a person checked only val and test) trains on the drafts;
    the train stage's picture of val predictions must not ask for a person's training masks."""
    import keras

    from bgremoval.training.session import prediction_grid

    folder = shards(tmp_path, n_person=0, n_draft=6)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x[..., :1] * 0.0)(inputs))  # predicts background
    picture = prediction_grid(model, folder, 8, n=2)
    assert picture.size[0] > 0 and picture.size[1] > 0


def test_one_pass_counts_the_drafts_only_when_they_train(tmp_path):
    folder = shards(tmp_path, n_person=16, n_draft=8)
    assert steps_per_epoch(train_config(steps_per_epoch=0, batch_size=4, draft_weight=0.0), folder) == 4
    assert steps_per_epoch(train_config(steps_per_epoch=0, batch_size=4, draft_weight=0.5), folder) == 6


def test_a_negative_draft_weight_is_refused():
    with pytest.raises(ValueError, match="train.draft_weight"):
        train_config(draft_weight=-1)


def test_augment_writes_drafts_to_shards_of_their_own(tmp_path):
    from bgremoval.data.training_set import TrainingSetConfig, build
    from tests.helpers import PARAMS, manifest_for, write_pair

    for i in range(8):
        write_pair(tmp_path / "data", f"s{i}_1", size=(40, 32), seed=i)
    manifest = manifest_for(tmp_path / "data")
    train = manifest.index[manifest["split"] == "train"]
    manifest.loc[train[:2], "mask_origin"] = "draft"
    params = {**PARAMS, "augment": {**PARAMS["augment"], "size": 16, "copies": 2, "shard_size": 64},
              "base": {"seed": 0}, "prepare": {"max_pixels": 10**7}}
    stats, _, _ = build(manifest, cfg=TrainingSetConfig.from_params(params), out_dir=tmp_path / "out")
    assert stats["n"]["draft"] == 4 and stats["n"]["train"] == 2 * (len(train) - 2)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "out").glob("*.tfrecord")) == ["draft", "test", "train", "val"]
