"""MLflow: where runs go, per-epoch curves, lineage tags, and logging the model."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

import keras
import numpy as np

log = logging.getLogger(__name__)


def configure(default_uri: str, experiment: str) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI if set, else default_uri; select the experiment."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    return uri


def unfinished_run(tag: str, value: str) -> str | None:
    """The id of a run in the active experiment tagged tag=value that never finished (killed), if any."""
    import mlflow

    runs = mlflow.search_runs(filter_string=f"tags.`{tag}` = '{value}' and attributes.status != 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


class EpochLogger(keras.callbacks.Callback):
    """Logs each epoch's metrics to the active MLflow run, under names like val/iou."""

    def __init__(self, rename):
        super().__init__()
        self.rename = rename

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        mlflow.log_metrics(self.rename(logs or {}), step=epoch)


class Progress(keras.callbacks.Callback):
    """One tqdm bar over all training steps, showing the epoch and the latest val metrics (Keras' own
    output is off). A resumed run starts the bar where the checkpoint left off."""

    def __init__(self, epochs: int, steps_per_epoch: int, rename, desc: str = "train", done_epochs: int = 0):
        super().__init__()
        self.epochs, self.steps, self.rename, self.desc, self.bar = epochs, steps_per_epoch, rename, desc, None
        self.done_epochs = done_epochs

    def on_train_begin(self, logs=None):
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=self.epochs * self.steps, initial=self.done_epochs * self.steps, desc=self.desc,
                            unit="step", leave=False)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        shown = {k: f"{v:.3f}" for k, v in self.rename(logs or {}).items() if k.startswith("val/")}
        self.bar.n = (epoch + 1) * self.steps
        self.bar.set_postfix({"epoch": f"{epoch + 1}/{self.epochs}", **shown}, refresh=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def git_commit(repo: Path) -> str:
    """HEAD's commit, with '-dirty' when tracked files have uncommitted changes; 'unknown' outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_out_hash(lock_file: Path, stage: str, out_path: str) -> str | None:
    """The md5 dvc.lock records for one output of a stage (the data a run trained on)."""
    import yaml

    if not Path(lock_file).exists():
        return None
    lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if out.get("path") == out_path:
            return out.get("md5")
    return None


def fingerprint(files: list[Path]) -> str:
    """sha256 over files' names and bytes."""
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(Path(f).name.encode())
        digest.update(Path(f).read_bytes())
    return digest.hexdigest()
