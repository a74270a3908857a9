"""Training on several devices: the tf.distribute strategy that params.yaml's distribute.strategy names, the global
batch and learning rate it trains with, and which process of a cluster is the chief (the one that writes).

- none: one device, as TensorFlow places it (the default).
- mirrored: one replica per GPU of this machine, or distribute.cpu_replicas logical CPU devices where it has none.
- multi_worker: one replica per process of the cluster that TF_CONFIG describes (each machine runs one). The chief
  (task type chief, or worker 0 where the cluster names no chief) runs `dvc repro`; every other machine runs
  `bgremoval train-worker`, which trains in lockstep and writes nothing but its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi_worker")
TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class DistributeConfig:
    """The train stage's devices (params.yaml distribute:)."""

    strategy: str               # none | mirrored | multi_worker
    cpu_replicas: int           # mirrored on a machine without GPUs: logical CPU devices
    scale_with_replicas: bool   # false: train.batch_size is the global batch; true: each replica's (lr scaled too)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"distribute.strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if not isinstance(self.cpu_replicas, int) or self.cpu_replicas < 1:
            raise ValueError(f"distribute.cpu_replicas must be a whole number >= 1; got {self.cpu_replicas!r}")


def cluster_config() -> dict | None:
    """TF_CONFIG parsed, or None where it is unset; a clear error where it is not a cluster description."""
    raw = os.environ.get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        task, cluster = config["task"], config["cluster"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'{TF_CONFIG} must be JSON like {{"cluster": {{"worker": ["host1:port", "host2:port"]}}, '
                         f'"task": {{"type": "worker", "index": 0}}}}; got {raw[:200]!r} ({exc})') from None
    if kind not in cluster or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"{TF_CONFIG}: task {kind} {index} is not in its cluster {cluster}")
    return config


def is_chief_task(config: dict | None) -> bool:
    """Whether TF_CONFIG's task is the cluster's chief: type chief, or worker 0 where the cluster has no chief."""
    if config is None:
        return True
    kind, index = config["task"]["type"], int(config["task"]["index"])
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config["cluster"])


def task_name(config: dict | None) -> str:
    """'worker 1 of 2', for messages and checkpoint folders."""
    if config is None:
        return "the only process"
    kind, index = config["task"]["type"], int(config["task"]["index"])
    return f"{kind} {index} of {sum(len(v) for v in config['cluster'].values())}"


class _MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy as Keras 3's fit() needs it (keras-team/keras#20585). Before it builds the model,
    Keras "reduces" a first batch of data across the workers in one call, to learn its structure: here each worker
    keeps its own slice (the workers' last val batches may differ in size, and nothing needs their mean). And each
    step's scalar logs, which Keras reduces along axis 0, are reduced across the replicas."""

    def reduce(self, reduce_op, value, axis):
        def one(v):
            rank = len(self.experimental_local_results(v)[0].shape)
            if axis is None and rank > 0:
                return self.experimental_local_results(v)[0]
            return super(_MultiWorker, self).reduce(reduce_op, v, None if rank == 0 else axis)

        return tf.nest.map_structure(one, value)


def make_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
    """The strategy distribute.strategy names. Call it before anything else runs on TensorFlow: splitting the CPU
    and joining a cluster are only possible then."""
    strategy, cpu_replicas = cfg.strategy, cfg.cpu_replicas
    if strategy == "none":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        except RuntimeError:  # already initialised: fine if it was split the same way
            pass
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) != cpu_replicas:
            raise RuntimeError(f"distribute.strategy mirrored: TensorFlow was initialised before the CPU could be "
                               f"split into {cpu_replicas} devices (it has {len(devices)}); make the strategy first")
        return tf.distribute.MirroredStrategy(devices)
    if strategy == "multi_worker":
        if cluster_config() is None:
            raise ValueError(f"distribute.strategy multi_worker needs {TF_CONFIG}: the cluster's addresses and this "
                             f"machine's task (docs/scaling-out.md)")
        return _MultiWorker()
    raise ValueError(f"distribute.strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes: always, except on a multi-worker cluster's other workers."""
    return not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or is_chief_task(cluster_config())


def scaled(train, strategy: tf.distribute.Strategy, scale_with_replicas: bool):
    """The train config (TrainConfig) as the replicas train it: batch_size is the global batch, split evenly
    (learning_rate kept: the same optimisation on more devices), or with scale_with_replicas each replica takes
    batch_size and the learning rate grows with the global batch (the linear scaling rule). A cluster trains in
    graph mode: run eagerly, its workers would not issue their collective operations in one order."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and train.run_eagerly:
        train = dataclasses.replace(train, run_eagerly=False)
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return train
    if scale_with_replicas:
        return dataclasses.replace(train, batch_size=train.batch_size * replicas,
                                   learning_rate=train.learning_rate * replicas)
    if train.batch_size % replicas:
        raise ValueError(f"train.batch_size {train.batch_size} (the global batch) must split evenly over the "
                         f"{replicas} replicas of distribute.strategy; or set distribute.scale_with_replicas")
    return train


def agree(strategy: tf.distribute.Strategy, key: str) -> None:
    """On a cluster, fail unless every worker trains the same thing (key: the run key of its settings and data): a
    worker with other params, another tune result or other shards would average gradients of another model."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    mine = tf.constant([int(key[:12], 16)], tf.int64)
    every = tf.function(lambda: strategy.gather(strategy.run(lambda: mine), axis=0))().numpy().tolist()
    if len(set(every)) > 1:
        raise ValueError(f"the workers of $TF_CONFIG's cluster disagree on what to train ({task_name(cluster_config())} "
                         "has other settings, tune result or data than another): give every machine the same "
                         "params.yaml, data/tune/best_params.json and augmented shards (`dvc pull`)")


def by_element(dataset):
    """Each worker of a cluster takes its share of every global batch (the same batches, in the same order, as one
    device would see them), instead of whole shard files."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
