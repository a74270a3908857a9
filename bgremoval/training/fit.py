"""Training: tf.data input from the augment stage's shards, fine-tuning with a frozen encoder first,
deep supervision, early stopping, and epochs that survive a kill."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops

from bgremoval.data.manifest import DRAFT
from bgremoval.data.shards import read_dataset
from bgremoval.model.network import ModelConfig, encoder_layers
from bgremoval.training.losses import make_loss

log = logging.getLogger(__name__)

PASSES = 64  # shuffled passes over the train set before their orders come round again

@dataclass(frozen=True)
class TrainConfig:
    """How to train it (params.yaml train:)."""

    size: int
    batch_size: int
    epochs: int
    steps_per_epoch: int  # 0 = one pass over the train shards
    learning_rate: float
    schedule: str  # constant | cosine
    loss: str
    freeze_epochs: int  # encoder frozen for the first N epochs (fine-tuning)
    patience: int  # early stopping on val IoU
    side_weight: float  # U²-NetP deep supervision: weight of each side output's loss
    pos_weight: float | str  # BCE weight of foreground pixels: a number, or "auto" (augment's bg/fg ratio)
    edge_weight: float  # extra BCE weight of the pixels within edge_band of the true mask's edge (0: none)
    edge_band: int  # in pixels at the training size
    # How often a training pair whose mask is an unreviewed draft is drawn against one with a person's mask:
    # 0 leaves the drafts out, 1 draws them as often, 0.5 half as often.
    draft_weight: float
    # Share of the fine-tuned weights in the saved network, the rest the pretrained ones (WiSE-FT); with
    # several, each is scored on val and the best val IoU is kept. (1.0,) = the fine-tuned weights alone.
    blend: tuple[float, ...]
    # Keras runs each step eagerly instead of tracing a graph first: quicker for a few steps of a tiny network
    # (a smoke test of the pipeline), many times slower for real training.
    run_eagerly: bool

    def __post_init__(self):
        shares = self.blend if isinstance(self.blend, (list, tuple)) else (self.blend,)
        try:
            shares = tuple(float(s) for s in shares)
        except (TypeError, ValueError):
            raise ValueError(f"train.blend must be a number or a list of numbers in [0, 1]; got {self.blend!r}") from None
        if not shares or any(not 0.0 <= s <= 1.0 for s in shares):
            raise ValueError(f"train.blend must be a number or a list of numbers in [0, 1]; got {self.blend!r}")
        object.__setattr__(self, "blend", shares)
        if not isinstance(self.draft_weight, (int, float)) or self.draft_weight < 0:
            raise ValueError(f"train.draft_weight must be a number >= 0; got {self.draft_weight!r}")


@keras.saving.register_keras_serializable(package="bgremoval")
class IoU(keras.metrics.Metric):
    """Foreground IoU at threshold 0.5, accumulated over the whole validation set."""

    def __init__(self, name: str = "iou", threshold: float = 0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.inter = self.add_variable(shape=(), initializer="zeros", name="inter")
        self.union = self.add_variable(shape=(), initializer="zeros", name="union")

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(y_true >= 0.5, "float32")
        p = ops.cast(y_pred >= self.threshold, "float32")
        self.inter.assign_add(ops.sum(t * p))
        self.union.assign_add(ops.sum(ops.maximum(t, p)))

    def result(self):
        return self.inter / ops.maximum(self.union, 1.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="bgremoval")
class Dice(IoU):
    """Foreground Dice at threshold 0.5: 2|A∩B| / (|A| + |B|) = 2 IoU / (1 + IoU)."""

    def __init__(self, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)

    def result(self):
        iou = super().result()
        return 2 * iou / (1 + iou)


def draft_share(n_person: int, n_draft: int, draft_weight: float) -> float:
    """The share of training pairs drawn from the drafts, each drawn draft_weight times as often as a pair with a
    person's mask."""
    weighed = draft_weight * n_draft
    return 0.0 if weighed == 0 else weighed / (n_person + weighed)


def datasets(shards_dir: Path, size: int, batch_size: int, seed: int, draft_weight: float, replicas: int = 1):
    """(train, val) tf.data pipelines over the augment stage's shards: parallel decode, cache, prefetch. Pairs
    whose masks are unreviewed drafts (their own shards) are drawn draft_weight times as often as a person's.
    replicas: the devices each batch is split over (val batches then leave none of them empty)."""
    import tensorflow as tf

    train_files = sorted(str(p) for p in Path(shards_dir).glob("train-*.tfrecord"))
    draft_files = sorted(str(p) for p in Path(shards_dir).glob(f"{DRAFT}-*.tfrecord"))
    val_files = sorted(str(p) for p in Path(shards_dir).glob("val-*.tfrecord"))
    if not val_files or not (train_files or draft_files):
        raise FileNotFoundError(f"{shards_dir}: no train-*/val-*.tfrecord shards; run `dvc repro augment` first")
    n = shard_stats(shards_dir)["n"]
    share = 0.0
    if draft_files:
        share = draft_share(n["train"], n[DRAFT], draft_weight)
    if not train_files and share == 0:
        raise ValueError("train.draft_weight is 0 and every training pair's mask is an unreviewed draft: nothing to "
                         "train on; raise train.draft_weight, or correct some drafts")

    def repeated(files: list[str], records: int):
        # Pass p is shuffled anew with seed + p, the same way by every iterator: one endless seeded sequence, so that
        # a phase or a resumed run starts at a known batch (fit skips to it), and tf.distribute's look at a first
        # batch before training does not change what is trained on. (A sliding shuffle buffer after repeat() would
        # be endless too, but it draws from the shards' recent stretch, not a fresh permutation of every pass.)
        pairs = read_dataset(files, size).cache()
        buffer = max(1, min(records, 2048))
        passes = [pairs.shuffle(buffer, seed=seed + p, reshuffle_each_iteration=False) for p in range(PASSES)]
        return functools.reduce(tf.data.Dataset.concatenate, passes).repeat()

    if share == 0:
        pairs = repeated(train_files, n["train"])
    elif share == 1:
        pairs = repeated(draft_files, n[DRAFT])
    else:
        pairs = tf.data.Dataset.sample_from_datasets([repeated(train_files, n["train"]), repeated(draft_files, n[DRAFT])],
                                                     weights=[1 - share, share], seed=seed)
    train = pairs.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return train, val_dataset(shards_dir, size, batch_size, replicas)


def val_dataset(shards_dir: Path, size: int, batch_size: int, replicas: int = 1):
    """The val split alone, in order, batched (what a run is scored on and the report pictures show)."""
    import tensorflow as tf

    val_files = sorted(str(p) for p in Path(shards_dir).glob("val-*.tfrecord"))
    if not val_files:
        raise FileNotFoundError(f"{shards_dir}: no val-*.tfrecord shards; run `dvc repro augment` first")
    # Declared length: Keras otherwise learns it by running off the end (and warns every fit).
    n_val = count_records(shards_dir, "val")
    return (read_dataset(val_files, size).apply(tf.data.experimental.assert_cardinality(n_val))
            .cache().batch(val_batch(n_val, batch_size, replicas)).prefetch(tf.data.AUTOTUNE))


def val_batch(n: int, batch_size: int, replicas: int) -> int:
    """The val batch: batch_size, or on several replicas the nearest larger multiple of their number whose last,
    partial batch still gives every replica a pair. TensorFlow's oneDNN convolution returns its input for an empty
    batch, so a replica left empty fails the step (a batch of 25 pairs by 8 on two replicas ends in [1, 0])."""
    if replicas == 1:
        return batch_size
    if n < replicas:
        raise ValueError(f"the val split has {n} pair(s): fewer than the {replicas} replicas that score it")
    batch = batch_size
    while 0 < n % batch < replicas:  # ends at the latest when one batch holds the whole split
        batch += replicas
    return batch


def shard_stats(shards_dir: Path) -> dict:
    """What the augment stage recorded about its shards: counts per split, size, pos_weight."""
    return json.loads((Path(shards_dir) / "stats.json").read_text())


def count_records(shards_dir: Path, split: str) -> int:
    """How many records the augment stage wrote for a split (DRAFT: the train copies of unreviewed drafts)."""
    return int(shard_stats(shards_dir)["n"].get(split, 0))


def positive_weight(cfg: TrainConfig, shards_dir: Path) -> float:
    """The BCE weight of foreground pixels: train.pos_weight, or for "auto" the augment stage's bg/fg ratio."""
    if cfg.pos_weight == "auto":
        return float(shard_stats(shards_dir)["pos_weight"])
    try:
        value = float(cfg.pos_weight)
    except (TypeError, ValueError):
        raise ValueError(f'train.pos_weight must be "auto" or a positive number; got {cfg.pos_weight!r}') from None
    if value <= 0:
        raise ValueError(f'train.pos_weight must be "auto" or a positive number; got {cfg.pos_weight!r}')
    return value


def steps_per_epoch(cfg: TrainConfig, shards_dir: Path) -> int:
    """cfg.steps_per_epoch, or for 0 one pass over the train shards, drafts included when they train (the train
    set repeats forever)."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    pairs = count_records(shards_dir, "train") + (count_records(shards_dir, DRAFT) if cfg.draft_weight > 0 else 0)
    return max(1, pairs // cfg.batch_size)


def _targets(network: keras.Model, side_weight: float):
    """Loss weights per output: the fused output counts 1, each side output side_weight."""
    n = len(network.outputs)
    return [1.0] + [side_weight] * (n - 1)


def compile_network(network: keras.Model, cfg: TrainConfig, pos_weight: float, steps: int) -> None:
    """Optimizer, schedule, loss (repeated over side outputs: deep supervision) and val metrics."""
    if cfg.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=max(1, cfg.epochs * steps), alpha=0.05)
    elif cfg.schedule == "constant":
        lr = cfg.learning_rate
    else:
        raise ValueError(f"train.schedule must be constant or cosine; got {cfg.schedule!r}")
    loss = make_loss(cfg.loss, pos_weight, cfg.edge_weight, cfg.edge_band)
    n = len(network.outputs)
    metrics = [IoU(), keras.metrics.MeanAbsoluteError(name="mae"), Dice()]  # VAL_METRICS
    network.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=[loss] * n if n > 1 else loss,
        loss_weights=_targets(network, cfg.side_weight) if n > 1 else None,
        metrics=[metrics] + [[]] * (n - 1) if n > 1 else metrics,
        jit_compile=False,  # XLA measured 2-4x slower than graph mode on this CPU
        run_eagerly=cfg.run_eagerly,
    )


def run_key(model_cfg: ModelConfig, train_cfg: TrainConfig, data_fingerprint: str, seed: int) -> str:
    """Identity of a training run: a checkpoint is only resumed by the very same run."""
    blob = json.dumps([asdict(model_cfg), asdict(train_cfg), data_fingerprint, seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def with_side_targets(ds, n_outputs: int):
    """Repeat the mask once per network output (deep supervision)."""
    if n_outputs == 1:
        return ds
    return ds.map(lambda x, y: (x, tuple([y] * n_outputs)))


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping on val IoU over the whole run: its best value, patience count and best weights carry
    over from the frozen phase's fit() into the full phase's, and across a kill.

    Keras resets them at every fit() and keeps them only in memory, so a resumed run (or the second
    phase) would forget a best epoch before it and end on worse weights than an uninterrupted run.
    Here each epoch's state is written to state_dir (before that epoch's checkpoint, which an epoch
    writes last); `resume(n)` starts from the state after the n epochs a checkpoint holds."""

    def __init__(self, state_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.state_dir = Path(state_dir)
        self._begun = False

    def on_train_begin(self, logs=None):
        if not self._begun:  # the second phase goes on with the first's state
            super().on_train_begin(logs)
            self._begun = True

    def resume(self, done_epochs: int) -> None:
        """Before the first fit(): go on from the state written after epoch done_epochs - 1, if any."""
        self.on_train_begin()
        self._load(done_epochs - 1)

    def on_epoch_end(self, epoch, logs=None):
        before = self.best_epoch if self.best_weights is not None else None
        super().on_epoch_end(epoch, logs)
        if self.best_weights is not None and (before is None or self.best_epoch != before):
            self._write_weights(self.best_epoch)
        if self.best_weights is not None or self.best is not None:
            self._write_state(epoch)

    def _state(self, epoch: int) -> Path:
        return self.state_dir / f"epoch-{epoch}.json"

    def _weights(self, epoch: int) -> Path:
        return self.state_dir / f"best-{epoch}.npz"

    def _write_weights(self, epoch: int) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "best.tmp.npz"
        np.savez(tmp, *self.best_weights)
        tmp.replace(self._weights(epoch))

    def _write_state(self, epoch: int) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        best = None if self.best is None else float(self.best)
        tmp = self.state_dir / "state.tmp.json"
        tmp.write_text(json.dumps({"best": best, "best_epoch": int(self.best_epoch), "wait": int(self.wait),
                                   "has_weights": self.best_weights is not None}))
        tmp.replace(self._state(epoch))
        # Keep the best weights the last two epochs' states name (the checkpoint may lag one epoch behind).
        keep = set()
        for e in (epoch, epoch - 1):
            if self._state(e).exists():
                state = json.loads(self._state(e).read_text())
                keep.add(self._weights(state["best_epoch"]).name)
        for f in self.state_dir.glob("best-*.npz"):
            if f.name not in keep:
                f.unlink(missing_ok=True)

    def _load(self, epoch: int) -> None:
        if epoch < 0 or not self._state(epoch).exists():
            return
        state = json.loads(self._state(epoch).read_text())
        weights = self._weights(state["best_epoch"])
        if state["has_weights"] and self.restore_best_weights:
            if not weights.exists():
                log.warning("early stopping: no best weights for epoch %d in %s; starting its record afresh",
                            state["best_epoch"], self.state_dir)
                return
            with np.load(weights) as saved:
                self.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        log.info("early stopping goes on from epoch %d: best val %.4f at epoch %d, %d epoch(s) without gain",
                 epoch, self.best if self.best is not None else float("nan"), self.best_epoch, self.wait)


def fit(
    network: keras.Model,
    train_ds,
    val_ds,
    cfg: TrainConfig,
    *,
    pos_weight: float,
    steps_per_epoch: int,
    checkpoint_dir: Path,
    callbacks: list[keras.callbacks.Callback],
) -> dict[str, list[float]]:
    """Train in two phases (encoder frozen, then all), resuming from checkpoint_dir if a run was cut off.

    Each phase has its own BackupAndRestore folder that is kept until the whole run ends, so a
    restart after the first phase restores it as finished and goes straight on with the second.
    """
    n = len(network.outputs)
    train_ds, val_ds = with_side_targets(train_ds, n), with_side_targets(val_ds, n)
    freeze = min(cfg.freeze_epochs, cfg.epochs)
    history: dict[str, list[float]] = {}
    stop = ResumableEarlyStopping(Path(checkpoint_dir) / "early_stopping", monitor=_val_name(network, "iou"), mode="max",
                                  patience=cfg.patience, restore_best_weights=True)
    done = checkpoint_epoch(checkpoint_dir)
    stop.resume(done)
    phases = [("frozen", 0, freeze, False), ("full", freeze, cfg.epochs, True)]
    for name, start, end, trainable in phases:
        if end <= start:
            continue
        # The batches this phase's first epoch to run would have seen in one uninterrupted run (the train set is
        # one endless, seeded sequence): the second phase goes on after the first's, a resumed run after the kill's.
        first = max(start, min(done, end))
        for layer in encoder_layers(network):
            layer.trainable = trainable
        compile_network(network, cfg, pos_weight, steps_per_epoch)  # trainable flags take effect on compile
        # double_checkpoint: a kill while the weights are being written leaves the previous epoch's intact.
        backup = keras.callbacks.BackupAndRestore(str(Path(checkpoint_dir) / name), delete_checkpoint=False,
                                                  double_checkpoint=True)
        h = network.fit(
            train_ds.skip(first * steps_per_epoch), validation_data=val_ds, epochs=end, initial_epoch=start,
            # The checkpoint last: an epoch is logged (MLflow, progress) before it counts as done, so a kill
            # between the two re-runs that epoch rather than losing its metrics.
            steps_per_epoch=steps_per_epoch, callbacks=[*callbacks, stop, backup], verbose=0,
            shuffle=False,  # tf.data already shuffles (seeded); Keras would only warn
        )
        for k, v in h.history.items():
            history.setdefault(k, []).extend(float(x) for x in v)
        if network.stop_training:
            break
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    return history


def checkpoint_epoch(checkpoint_dir: Path) -> int:
    """How many epochs an interrupted run of this configuration finished (0 = nothing to resume).

    A phase whose record was cut off mid-write goes back to its previous checkpoint (the .bkp pair
    BackupAndRestore keeps with double_checkpoint), or starts again if there is none: Keras itself
    would stop on the broken JSON at every restart."""
    done = 0
    for phase in ("frozen", "full"):
        folder = Path(checkpoint_dir) / phase
        meta = folder / "training_metadata.json"
        if not meta.exists():
            continue
        try:
            done = max(done, int(json.loads(meta.read_text())["epoch"]))
        except (ValueError, KeyError):
            weights, previous = folder / "latest.weights.h5", folder / "training_metadata.json.bkp"
            if previous.exists() and Path(f"{weights}.bkp").exists():
                shutil.copy(f"{weights}.bkp", weights)
                shutil.copy(previous, meta)
                log.warning("%s was cut off mid-write; going back to the checkpoint before it", meta)
                done = max(done, int(json.loads(meta.read_text())["epoch"]))
            else:
                log.warning("%s was cut off mid-write and has no earlier copy; phase %s starts again", meta, phase)
                shutil.rmtree(folder)
    return done


def evaluate_val(network: keras.Model, val_ds) -> dict[str, float]:
    """Val metrics of the network as it is now (after best weights were restored): iou, mae, dice, loss."""
    logs = network.evaluate(with_side_targets(val_ds, len(network.outputs)), return_dict=True, verbose=0)
    return {k.split("/", 1)[1]: v for k, v in clean_logs(network, {f"val_{k}": v for k, v in logs.items()}).items()}


VAL_METRICS = ("iou", "mae", "dice")  # what compile_network measures on the fused output each epoch


def _val_name(network: keras.Model, metric: str) -> str:
    """Keras' log key of a metric on the fused output."""
    if len(network.outputs) > 1:
        return f"val_{network.output_names[0]}_{metric}"
    return f"val_{metric}"


def keras_log_name(network: keras.Model, metric: str) -> str:
    """Keras' epoch-log key of a metric as people name it (val/iou -> val_iou, or the fused output's)."""
    split, _, name = metric.partition("/")
    if split != "val" or name not in VAL_METRICS:
        raise ValueError(f"tune.metric must be one of {['val/' + m for m in VAL_METRICS]}; got {metric!r}")
    return _val_name(network, name)


def val_score(scores: dict[str, float], metric: str) -> float:
    """One metric (val/NAME) of evaluate_val's scores, or a KeyError naming the ones there are."""
    name = metric.partition("/")[2]
    if name not in scores:
        raise KeyError(f"tune.metric {metric!r} is not among the val metrics {sorted('val/' + k for k in scores)}")
    return float(scores[name])


def clean_logs(network: keras.Model, logs: dict) -> dict[str, float]:
    """Keras' epoch logs renamed for people: train/loss, val/iou, val/mae, ..."""
    first = network.output_names[0] + "_" if len(network.outputs) > 1 else ""
    out = {}
    for key, value in logs.items():
        split = "val" if key.startswith("val_") else "train"
        name = key[4:] if split == "val" else key
        if first and name.startswith(first):
            name = name[len(first):]
        elif first and name != "loss":
            continue  # per-side-output losses: noise for people
        out[f"{split}/{name}"] = float(value)
    return out
