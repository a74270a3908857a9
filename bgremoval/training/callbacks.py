"""Keras callbacks of a training run: per-epoch MLflow metrics and one progress bar."""

from __future__ import annotations

import keras


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

