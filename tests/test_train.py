"""Training: losses and metrics by hand, U-Net shapes, a toy run tracked in MLflow, seeding, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from bgremoval.losses import dice_loss, iou_loss, make_loss, weighted_bce
from bgremoval.shards import write_shards
from bgremoval.train import Dice, IoU, ModelConfig, TrainConfig, build_network, clean_logs, datasets, fit
from bgremoval.unet import build_unet

Y_TRUE = np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
Y_PRED = np.array([0.8, 0.4], np.float32).reshape(1, 1, 2, 1)


def test_weighted_bce_by_hand():
    # pixels: -2*ln(0.8) = 0.4463, -ln(0.6) = 0.5108; mean 0.4786; mean weight (2 + 1) / 2 = 1.5
    got = float(weighted_bce(2.0)(Y_TRUE, Y_PRED)[0])
    assert got == pytest.approx((-2 * np.log(0.8) - np.log(0.6)) / 2 / 1.5, rel=1e-5)


def test_dice_and_iou_losses_by_hand():
    assert float(dice_loss(Y_TRUE, Y_PRED)[0]) == pytest.approx(1 - 1.6 / 2.2, rel=1e-5)  # 2*0.8 / (1 + 1.2)
    assert float(iou_loss(Y_TRUE, Y_PRED)[0]) == pytest.approx(1 - 0.8 / 1.4, rel=1e-5)  # 0.8 / (1 + 1.2 - 0.8)


def test_sum_loss_is_bce_plus_dice():
    both = float(make_loss("bce_dice", 2.0)(Y_TRUE, Y_PRED)[0])
    assert both == pytest.approx(float(weighted_bce(2.0)(Y_TRUE, Y_PRED)[0]) + float(dice_loss(Y_TRUE, Y_PRED)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="train.loss"):
        make_loss("focal", 1.0)


def test_iou_and_dice_metrics_by_hand():
    t = np.array([1, 1, 0, 0], np.float32).reshape(1, 1, 4, 1)
    p = np.array([0.9, 0.2, 0.7, 0.1], np.float32).reshape(1, 1, 4, 1)  # at 0.5: TP 1, FN 1, FP 1
    iou, dice = IoU(), Dice()
    iou.update_state(t, p)
    dice.update_state(t, p)
    assert float(iou.result()) == pytest.approx(1 / 3)
    assert float(dice.result()) == pytest.approx(0.5)


@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (48, 80)])
def test_unet_is_fully_convolutional(shape):
    model = build_unet([4, 8, 16], separable=True)
    out = model.predict(np.zeros((2, *shape, 3), np.float32), verbose=0)
    assert out.shape == (2, *shape, 1) and (out >= 0).all() and (out <= 1).all()


def _toy_shards(folder: Path, n_train=32, n_val=8, size=32) -> Path:
    """Bright discs on dark noise: learnable in an epoch."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]

    def records(n, prefix):
        for i in range(n):
            cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(4, 9)]
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255
            img = (rng.uniform(0, 60, (size, size, 3)) + (mask[..., None] > 0) * 150).astype(np.uint8)
            yield f"{prefix}{i}", img, mask

    write_shards(records(n_train, "t"), folder, "train", 16)
    write_shards(records(n_val, "v"), folder, "val", 16)
    (folder / "stats.json").write_text(json.dumps({"n": {"train": n_train, "val": n_val, "test": 0}, "pos_weight": 3.0}))
    return folder


CFG = TrainConfig(size=32, batch_size=8, epochs=1, steps_per_epoch=4, learning_rate=3e-3, schedule="cosine",
                  loss="bce_dice", freeze_epochs=0, patience=5, side_weight=1.0)


def _train(shards, cfg, checkpoints, callbacks=(), seed=0):
    keras.utils.set_random_seed(seed)
    network = build_network(ModelConfig(family="unet", unet_filters=[4, 8, 16]))
    train_ds, val_ds = datasets(shards, cfg.size, cfg.batch_size, seed)
    return network, fit(network, train_ds, val_ds, cfg, 3.0, cfg.steps_per_epoch, checkpoints, list(callbacks))


def test_one_epoch_toy_training_logs_an_mlflow_run(tmp_path):
    import mlflow

    from bgremoval import tracking

    shards = _toy_shards(tmp_path / "shards")
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "toy")
    with mlflow.start_run() as run:
        network, history = _train(shards, CFG, tmp_path / "ckpt")
        mlflow.log_metrics(clean_logs(network, {k: v[-1] for k, v in history.items()}), step=0)
    client = mlflow.MlflowClient()
    assert {"val/iou", "val/mae", "val/dice", "train/loss"} <= set(client.get_run(run.info.run_id).data.metrics)


def test_seeded_training_reproduces_its_val_metric(tmp_path):
    shards = _toy_shards(tmp_path / "shards")
    _, a = _train(shards, CFG, tmp_path / "a", seed=3)
    _, b = _train(shards, CFG, tmp_path / "b", seed=3)
    assert a["val_iou"] == pytest.approx(b["val_iou"], abs=1e-6)
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("simulated kill")


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    shards = _toy_shards(tmp_path / "shards")
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 4, "freeze_epochs": 1})
    ckpt = tmp_path / "ckpt"
    first = _Epochs()
    with pytest.raises(KeyboardInterrupt):
        _train(shards, cfg, ckpt, [first, _Interrupt(at_epoch=2)])
    assert first.seen == [0, 1, 2] and ckpt.exists()
    second = _Epochs()
    _, history = _train(shards, cfg, ckpt, [second])
    # The frozen phase restores as finished; the full phase resumes at epoch 2, which was cut off after
    # it was logged but before its checkpoint (the checkpoint is the last thing an epoch does).
    assert second.seen == [2, 3]
    assert not ckpt.exists()  # a finished run leaves nothing to resume


def test_u2netp_fine_tuning_freezes_the_encoder_and_trains_the_rest(tmp_path):
    pytest.importorskip("onnx")
    from bgremoval.train import encoder_layers
    from bgremoval.u2netp import find_u2netp_onnx

    try:
        find_u2netp_onnx()
    except Exception as exc:  # noqa: BLE001 - the weights' own error says what to install
        pytest.skip(f"pretrained U²-NetP weights not available: {exc}")
    shards = _toy_shards(tmp_path / "shards", n_train=8, n_val=4)
    keras.utils.set_random_seed(0)
    network = build_network(ModelConfig(family="u2netp"))
    assert len(network.outputs) == 7  # fused + six side outputs: deep supervision
    before = {l.name: [w.copy() for w in l.get_weights()] for l in network.get_layer("u2netp").layers if l.get_weights()}
    encoder = {l.name for l in encoder_layers(network)}
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 1, "freeze_epochs": 1, "steps_per_epoch": 2, "batch_size": 4})
    train_ds, val_ds = datasets(shards, 32, 4, 0)
    history = fit(network, train_ds, val_ds, cfg, 3.0, 2, tmp_path / "ckpt", [])
    after = {l.name: l.get_weights() for l in network.get_layer("u2netp").layers if l.get_weights()}
    changed = {n for n in before if any(not np.array_equal(a, b) for a, b in zip(before[n], after[n]))}
    assert encoder and not (changed & encoder), "frozen encoder layers moved"
    assert changed, "nothing trained"
    assert "val/iou" in clean_logs(network, {k: v[-1] for k, v in history.items()})


def test_zero_steps_per_epoch_means_one_pass_over_the_shards(tmp_path):
    from bgremoval.train import steps_per_epoch

    shards = _toy_shards(tmp_path / "shards", n_train=20, n_val=4)
    assert steps_per_epoch(TrainConfig(**{**CFG.__dict__, "steps_per_epoch": 0, "batch_size": 8}), shards) == 2
    assert steps_per_epoch(TrainConfig(**{**CFG.__dict__, "steps_per_epoch": 7}), shards) == 7


def test_a_checkpoint_record_cut_off_mid_write_falls_back_to_the_one_before(tmp_path):
    from bgremoval.train import checkpoint_epoch

    full = tmp_path / "ckpt" / "full"
    full.mkdir(parents=True)
    (full / "latest.weights.h5").write_bytes(b"epoch 3 weights")
    (full / "latest.weights.h5.bkp").write_bytes(b"epoch 2 weights")
    (full / "training_metadata.json").write_text('{"epoch": 3, "ba')  # killed while writing
    (full / "training_metadata.json.bkp").write_text('{"epoch": 2, "batch": 0}')
    assert checkpoint_epoch(tmp_path / "ckpt") == 2
    assert (full / "latest.weights.h5").read_bytes() == b"epoch 2 weights"
    (full / "training_metadata.json").write_text("{")  # broken again, and now no earlier copy
    for bkp in full.glob("*.bkp"):
        bkp.unlink()
    assert checkpoint_epoch(tmp_path / "ckpt") == 0 and not full.exists()


def test_blend_weights_mixes_float_tensors_and_refuses_another_network():
    from bgremoval.train import blend_weights

    ft = [np.full((2, 2), 4.0, np.float32), np.array([7], np.int64)]
    pre = [np.zeros((2, 2), np.float32), np.array([1], np.int64)]
    out = blend_weights(ft, pre, 0.25)
    assert np.allclose(out[0], 1.0) and out[1].tolist() == [7]  # counters are not averaged
    with pytest.raises(ValueError, match="shape"):
        blend_weights([np.zeros((2, 2))], [np.zeros((3, 2))], 0.5)
    with pytest.raises(ValueError, match="not the same network"):
        blend_weights(ft, pre[:1], 0.5)


@pytest.mark.parametrize("bad", [1.5, -0.1, [], ["x"], [0.5, 2]])
def test_train_blend_must_be_shares_in_0_1(bad):
    with pytest.raises(ValueError, match="train.blend"):
        TrainConfig(**{**CFG.__dict__, "blend": bad})
    assert TrainConfig(**{**CFG.__dict__, "blend": 0.5}).blend == (0.5,)
    assert TrainConfig(**{**CFG.__dict__, "blend": [0.5, 1]}).blend == (0.5, 1.0)


def test_choose_blend_keeps_the_share_that_scores_best_on_val(tmp_path):
    from bgremoval.train import choose_blend, evaluate_val

    shards = _toy_shards(tmp_path / "shards")
    keras.utils.set_random_seed(0)
    network = build_network(ModelConfig(family="unet", unet_filters=[4, 8, 16]))
    untrained = [w.copy() for w in network.get_weights()]
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 3, "steps_per_epoch": 8})
    train_ds, val_ds = datasets(shards, cfg.size, cfg.batch_size, 0)
    fit(network, train_ds, val_ds, cfg, 3.0, cfg.steps_per_epoch, tmp_path / "ckpt", [])
    trained = [w.copy() for w in network.get_weights()]
    trained_iou = evaluate_val(network, val_ds)["iou"]

    # Trained weights blended with untrained ones: the trained end wins, and the network is left at it.
    share, scores = choose_blend(network, untrained, val_ds, (0.0, 0.5, 1.0))
    assert share == 1.0 and set(scores) == {0.0, 0.5, 1.0}
    assert scores[1.0]["iou"] == pytest.approx(trained_iou, abs=1e-6) and scores[0.0]["iou"] < trained_iou
    assert all(np.array_equal(a, b) for a, b in zip(network.get_weights(), trained))

    # The other way round (the "fine-tuning" ruined the weights): the pretrained end wins.
    network.set_weights(untrained)
    share, scores = choose_blend(network, trained, val_ds, (0.0, 0.5, 1.0))
    assert share == 0.0 and scores[0.0]["iou"] == pytest.approx(trained_iou, abs=1e-6)
    assert evaluate_val(network, val_ds)["iou"] == pytest.approx(trained_iou, abs=1e-6)

    # A single share of 1.0 is "off": nothing is scored, nothing changes.
    assert choose_blend(network, untrained, val_ds, (1.0,)) == (1.0, {})


def test_train_stage_blends_the_pretrained_weights_back_and_logs_the_curve(tmp_path, caplog):
    import mlflow

    from bgremoval import tracking
    from bgremoval.train import blend_weights, compile_network
    from stages.train import blend

    shards = _toy_shards(tmp_path / "shards", n_train=8, n_val=4)
    keras.utils.set_random_seed(0)
    network = build_network(ModelConfig(family="u2netp"))
    pretrained = [w.copy() for w in network.get_weights()]
    rng = np.random.default_rng(0)  # stands in for fine-tuning: every float tensor moved
    tuned = [w + rng.normal(0, 0.3 * float(w.std()) + 1e-3, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
             for w in pretrained]
    network.set_weights(tuned)
    _, val_ds = datasets(shards, 32, 4, 0)
    cfg = TrainConfig(**{**CFG.__dict__, "blend": [0.0, 0.5, 1.0]})
    compile_network(network, cfg, 1.0, 1)  # as fit leaves it
    tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "toy")
    with mlflow.start_run() as run:
        share, scores = blend(network, pretrained, val_ds, ModelConfig(family="u2netp"), cfg)
    client = mlflow.MlflowClient()
    curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "blend/val_iou")}
    assert curve == {round(100 * s): pytest.approx(m["iou"]) for s, m in scores.items()} and set(curve) == {0, 50, 100}
    assert client.get_run(run.info.run_id).data.metrics["blend/share"] == share
    assert share == max(scores, key=lambda s: (scores[s]["iou"], s))
    want = blend_weights(tuned, pretrained, share)
    assert all(np.allclose(a, b) for a, b in zip(network.get_weights(), want))

    # A network trained from scratch has nothing to blend with: the setting is ignored, and says so.
    unet = build_network(ModelConfig(family="unet", unet_filters=[4, 8, 16]))
    before = [w.copy() for w in unet.get_weights()]
    compile_network(unet, cfg, 1.0, 1)
    with caplog.at_level("WARNING"):
        assert blend(unet, before, val_ds, ModelConfig(family="unet"), cfg) == (1.0, {})
    assert "train.blend [0.0, 0.5, 1.0] ignored" in caplog.text


def _dense(value: float) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    _set(model, value)
    return model


def _set(model: keras.Model, value: float) -> None:
    model.set_weights([np.full((2, 1), value, "float32"), np.zeros(1, "float32")])


def _stopper(folder, model, done_epochs):
    from bgremoval.train import ResumableEarlyStopping

    stop = ResumableEarlyStopping(folder, monitor="val_iou", mode="max", patience=2, restore_best_weights=True)
    stop.set_model(model)
    stop.resume(done_epochs)
    return stop


@pytest.mark.parametrize("checkpointed", [3, 2])  # 2: killed after epoch 2's state, before its checkpoint
def test_early_stopping_keeps_its_best_weights_and_patience_across_a_kill(tmp_path, checkpointed):
    first = _dense(0.0)
    stop = _stopper(tmp_path / "es", first, 0)
    stop.on_train_begin()
    for epoch, (weight, iou) in enumerate([(1.0, 0.5), (2.0, 0.9), (3.0, 0.7)]):
        _set(first, weight)
        stop.on_epoch_end(epoch, {"val_iou": iou})
    assert sorted(p.name for p in (tmp_path / "es").glob("*.npz")) == ["best-1.npz"]  # only the one still named

    # A new process: the checkpoint holds `checkpointed` epochs; the epochs after it run again.
    second = _dense(float(checkpointed))
    stop = _stopper(tmp_path / "es", second, checkpointed)
    stop.on_train_begin()  # the phase's fit() starts: the state read back is kept
    for epoch, (weight, iou) in enumerate([(3.0, 0.7), (4.0, 0.8)][checkpointed - 2:], start=checkpointed):
        _set(second, weight)
        stop.on_epoch_end(epoch, {"val_iou": iou})
    # Epoch 1 is still the best; epochs 2 and 3 without gain exhaust a patience of 2.
    assert second.stop_training and stop.best == pytest.approx(0.9) and stop.best_epoch == 1
    stop.on_train_end()
    assert (second.get_weights()[0] == 2.0).all()  # epoch 1's weights, not the last epoch's


def test_early_stopping_carries_over_from_the_frozen_phase_to_the_full_one(tmp_path):
    model = _dense(0.0)
    stop = _stopper(tmp_path / "es", model, 0)
    stop.on_train_begin()  # frozen phase
    _set(model, 1.0)
    stop.on_epoch_end(0, {"val_iou": 0.9})
    stop.on_train_end()
    stop.on_train_begin()  # full phase: Keras' own EarlyStopping would forget epoch 0 here
    _set(model, 2.0)
    stop.on_epoch_end(1, {"val_iou": 0.6})
    stop.on_train_end()
    assert stop.best_epoch == 0 and (model.get_weights()[0] == 1.0).all()
