"""Run by tests/test_distribute.py in a process of its own, whose CPU is split into two logical devices before
TensorFlow starts: the train stage's tracked training (train_tracked) of a toy U-Net on the bright-disc shards,
three times, each with an MLflow store of its own under WORKDIR:

- one/: on one device (distribute.strategy none);
- two/: on the two devices (mirrored), cut off at the start of its third epoch, then run again (it resumes).

The last line printed is {"one": summary, "two": summary, "cut": the cut-off run's error}.

    python -m tests.train_on_devices SHARDS WORKDIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import keras
import pandas as pd

from bgremoval import tracking
from bgremoval.training import session
from bgremoval.training.distribute import DistributeConfig, make_strategy
from bgremoval.training.session import TrainSetup, train_tracked
from tests.helpers import model_config, train_config

TOY = {"size": 32, "batch_size": 8, "epochs": 3, "steps_per_epoch": 4, "learning_rate": 0.003, "schedule": "constant",
       "freeze_epochs": 0, "patience": 10, "pos_weight": 3.0, "blend": [1.0], "run_eagerly": False}
CUT_AT = 2


class _CutOff(session.Progress):
    """The progress bar of a run killed as its third epoch begins (after the checkpoints of the first two)."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == CUT_AT:
            raise KeyboardInterrupt(f"interrupted at epoch {epoch}")


def _train(shards: Path, workdir: Path, devices: DistributeConfig, strategy) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    manifest = pd.DataFrame({"name": ["a", "b", "c"], "content_hash": ["1", "2", "3"], "split": ["train", "val", "test"],
                             "mask_origin": ["person"] * 3})
    manifest.to_parquet(workdir / "manifest.parquet")
    setup = TrainSetup(model=model_config(family="unet", unet_filters=[8, 16]), train=train_config(**TOY),
                       distribute=devices, seed=0, shards=shards, checkpoints=workdir / "checkpoints",
                       manifest=workdir / "manifest.parquet")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set by the run before: each run here has a store of its own
    tracking.configure(f"sqlite:///{workdir / 'mlflow.db'}", "devices")
    return train_tracked(setup, manifest=manifest, lineage={"data.sha256": "toy"}, strategy=strategy).summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shards", type=Path)
    parser.add_argument("workdir", type=Path)
    args = parser.parse_args()

    mirrored = DistributeConfig(strategy="mirrored", cpu_replicas=2, scale_with_replicas=False)
    two_devices = make_strategy(mirrored)  # splits the CPU: before anything else runs on TensorFlow
    one = DistributeConfig(strategy="none", cpu_replicas=2, scale_with_replicas=False)
    out = {"one": _train(args.shards, args.workdir / "one", one, make_strategy(one))}
    progress, session.Progress = session.Progress, _CutOff
    try:
        _train(args.shards, args.workdir / "two", mirrored, two_devices)
    except KeyboardInterrupt as cut:
        out["cut"] = str(cut)
    finally:
        session.Progress = progress
    out["two"] = _train(args.shards, args.workdir / "two", mirrored, two_devices)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
