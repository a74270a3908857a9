"""Training: losses and metrics by hand, U-Net shapes, a toy run tracked in MLflow, seeding, resuming,
blending with the pretrained weights, and the train stage's prediction picture."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest

from bgremoval.model.network import build_network, encoder_layers
from bgremoval.model.unet import build_unet
from bgremoval.training.blend import blend_weights, choose_blend
from bgremoval.training.callbacks import EpochLogger, Progress
from bgremoval.training.fit import (
    Dice, IoU, ResumableEarlyStopping, checkpoint_epoch, clean_logs, compile_network, datasets, evaluate_val, fit,
    positive_weight, run_key, steps_per_epoch,
)
from bgremoval.training.losses import dice_loss, edge_band, iou_loss, make_loss, weighted_bce
from tests.helpers import model_config, skip_without_u2netp_weights, toy_shards, tracking_store, train_config

Y_TRUE = np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
Y_PRED = np.array([0.8, 0.4], np.float32).reshape(1, 1, 2, 1)


def test_weighted_bce_by_hand():
    # pixels: -2*ln(0.8) = 0.4463, -ln(0.6) = 0.5108; mean 0.4786; mean weight (2 + 1) / 2 = 1.5
    got = float(weighted_bce(2.0, 0.0, 1)(Y_TRUE, Y_PRED)[0])
    assert got == pytest.approx((-2 * np.log(0.8) - np.log(0.6)) / 2 / 1.5, rel=1e-5)
    # A soft target (a resized edge): pos_weight weighs its foreground term alone, -(2 * 0.5 ln 0.8 + 0.5 ln 0.2).
    half, pred = np.full((1, 1, 1, 1), 0.5, np.float32), np.full((1, 1, 1, 1), 0.8, np.float32)
    soft = float(weighted_bce(2.0, 0.0, 1)(half, pred)[0])
    assert soft == pytest.approx(-(np.log(0.8) + 0.5 * np.log(0.2)) / 1.5, rel=1e-5)


def test_edge_band_marks_the_pixels_near_the_true_edge():
    mask = np.zeros((1, 9, 9, 1), np.float32)
    mask[0, :, 4:] = 1.0  # a vertical edge between columns 3 and 4
    band = np.asarray(edge_band(mask, 1))[0, :, :, 0]
    assert (band[:, 3:5] == 1).all() and (band[:, :3] == 0).all() and (band[:, 5:] == 0).all()
    assert (np.asarray(edge_band(mask, 2))[0, 0, :, 0] == [0, 0, 1, 1, 1, 1, 0, 0, 0]).all()
    soft = mask * 0.5  # a soft mask's band counts its step
    assert np.asarray(edge_band(soft, 1))[0, 0, 3, 0] == pytest.approx(0.5)


def test_edge_weight_puts_the_loss_on_the_edges_errors():
    # Two errors of the same size, one on the true edge, one far inside the background.
    truth = np.zeros((1, 9, 9, 1), np.float32)
    truth[0, :, 4:] = 1.0
    at_edge, far = truth.copy(), truth.copy()
    at_edge[0, 4, 3] = 1.0  # background pixel next to the edge predicted foreground
    far[0, 4, 0] = 1.0  # background pixel three columns away predicted foreground
    plain, edged = weighted_bce(1.0, 0.0, 1), weighted_bce(1.0, 4.0, 1)
    assert float(plain(truth, at_edge)[0]) == pytest.approx(float(plain(truth, far)[0]), rel=1e-6)
    assert float(edged(truth, at_edge)[0]) > 2 * float(edged(truth, far)[0])
    # Perfect predictions cost nothing either way: the weights rescale errors, not add a floor.
    assert float(edged(truth, truth)[0]) < 1e-4


def test_dice_and_iou_losses_by_hand():
    assert float(dice_loss(Y_TRUE, Y_PRED)[0]) == pytest.approx(1 - 1.6 / 2.2, rel=1e-5)  # 2*0.8 / (1 + 1.2)
    assert float(iou_loss(Y_TRUE, Y_PRED)[0]) == pytest.approx(1 - 0.8 / 1.4, rel=1e-5)  # 0.8 / (1 + 1.2 - 0.8)


def test_sum_loss_is_bce_plus_dice():
    both = float(make_loss("bce_dice", 2.0, 0.0, 3)(Y_TRUE, Y_PRED)[0])
    assert both == pytest.approx(float(weighted_bce(2.0, 0.0, 3)(Y_TRUE, Y_PRED)[0]) + float(dice_loss(Y_TRUE, Y_PRED)[0]),
                                 rel=1e-6)
    with pytest.raises(ValueError, match="train.loss"):
        make_loss("focal", 1.0, 0.0, 3)
    with pytest.raises(ValueError, match="train.edge_weight"):
        make_loss("bce", 1.0, -1.0, 3)
    with pytest.raises(ValueError, match="train.edge_band"):
        make_loss("bce", 1.0, 2.0, 0)
    with pytest.raises(ValueError, match="train.edge_weight weighs BCE"):
        make_loss("iou", 1.0, 2.0, 3)
    assert make_loss("iou", 1.0, 0.0, 3) is iou_loss  # without the edge weight, any loss


def test_iou_and_dice_metrics_by_hand():
    t = np.array([1, 1, 0, 0], np.float32).reshape(1, 1, 4, 1)
    p = np.array([0.9, 0.2, 0.7, 0.1], np.float32).reshape(1, 1, 4, 1)  # at 0.5: TP 1, FN 1, FP 1
    iou, dice = IoU(), Dice()
    iou.update_state(t, p)
    dice.update_state(t, p)
    assert float(iou.result()) == pytest.approx(1 / 3)
    assert float(dice.result()) == pytest.approx(0.5)


@pytest.mark.parametrize("shape,separable", [((32, 32), False), ((64, 96), True), ((48, 80), False)])
def test_unet_is_fully_convolutional(shape, separable):
    keras.utils.set_random_seed(0)
    model = build_unet([4, 8, 16], separable=separable)
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape, 3)).astype(np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (2, *shape, 1)
    assert not np.allclose(out[0], out[1])  # each image gets its own mask
    kind = "SeparableConv2D" if separable else "Conv2D"
    assert {type(l).__name__ for l in model.layers if "_conv" in l.name} == {kind}


CFG = train_config(size=32, batch_size=8, epochs=1, steps_per_epoch=4, learning_rate=3e-3, schedule="cosine",
                   loss="bce_dice", freeze_epochs=0, patience=5, side_weight=1.0, pos_weight=3.0, blend=[1.0])
TOY_UNET = model_config(family="unet", unet_filters=[4, 8, 16])


def _train(shards, cfg, checkpoints, callbacks=(), seed=0):
    keras.utils.set_random_seed(seed)
    network = build_network(TOY_UNET)
    train_ds, val_ds = datasets(shards, cfg.size, cfg.batch_size, seed, 0.0)
    return network, fit(network, train_ds, val_ds, cfg, pos_weight=3.0, steps_per_epoch=cfg.steps_per_epoch,
                        checkpoint_dir=checkpoints, callbacks=list(callbacks))


def test_toy_training_logs_an_mlflow_run_with_per_epoch_curves(tmp_path, mlflow_uri):
    import mlflow

    from bgremoval import tracking

    shards = toy_shards(tmp_path / "shards")
    with tracking_store(mlflow_uri) as uri:
        tracking.configure(uri, "train-toy")
        with mlflow.start_run() as run:
            keras.utils.set_random_seed(0)
            network = build_network(TOY_UNET)
            train_ds, val_ds = datasets(shards, 32, 8, 0, 0.0)
            history = fit(network, train_ds, val_ds, replace(CFG, epochs=2, steps_per_epoch=2), pos_weight=3.0,
                          steps_per_epoch=2, checkpoint_dir=tmp_path / "ckpt",
                          callbacks=[EpochLogger(lambda logs: clean_logs(network, logs))])
            mlflow.log_metrics(clean_logs(network, {k: v[-1] for k, v in history.items()}), step=2)
        client = mlflow.MlflowClient()
        logged = client.get_run(run.info.run_id).data.metrics
        curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/iou")}
    assert {"val/iou", "val/mae", "val/dice", "train/loss"} <= set(logged)
    assert sorted(curve) == [0, 1, 2]  # one point per epoch from EpochLogger, then the final one
    assert curve[1] == pytest.approx(history["val_iou"][1]) and curve[0] == pytest.approx(history["val_iou"][0])


def test_progress_bar_starts_where_a_resumed_run_left_off_and_shows_val_metrics():
    rename = lambda logs: {f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}": v for k, v in logs.items()}  # noqa: E731
    progress = Progress(epochs=3, steps_per_epoch=4, rename=rename, done_epochs=1)
    progress.on_train_begin()
    assert progress.bar.total == 12 and progress.bar.n == 4
    for batch in range(3):
        progress.on_train_batch_end(batch)
    assert progress.bar.n == 7
    progress.on_epoch_end(1, {"val_iou": 0.5, "loss": 0.25})
    assert progress.bar.n == 8
    assert progress.bar.postfix == "epoch=2/3, val/iou=0.500"  # train metrics are not shown
    progress.on_train_begin()  # the second phase's fit(): the same bar goes on
    assert progress.bar.n == 8
    progress.close()


@pytest.mark.slow
def test_seeded_training_reproduces_its_val_metric(tmp_path):
    shards = toy_shards(tmp_path / "shards")
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


@pytest.mark.slow
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    shards = toy_shards(tmp_path / "shards")
    cfg = replace(CFG, epochs=4, freeze_epochs=1)
    ckpt = tmp_path / "ckpt"
    first = _Epochs()
    with pytest.raises(KeyboardInterrupt):
        _train(shards, cfg, ckpt, [first, _Interrupt(at_epoch=2)])
    assert first.seen == [0, 1, 2] and ckpt.exists()
    assert checkpoint_epoch(ckpt) == 2  # epochs 0 and 1 are checkpointed; epoch 2 was cut off
    second = _Epochs()
    _, history = _train(shards, cfg, ckpt, [second])
    # The frozen phase restores as finished; the full phase resumes at epoch 2, which was cut off after
    # it was logged but before its checkpoint (the checkpoint is the last thing an epoch does).
    assert second.seen == [2, 3]
    assert len(history["val_iou"]) == 2  # only the epochs this process ran
    assert not ckpt.exists()  # a finished run leaves nothing to resume


@pytest.mark.slow
def test_u2netp_fine_tuning_freezes_the_encoder_and_trains_the_rest(tmp_path):
    skip_without_u2netp_weights()
    shards = toy_shards(tmp_path / "shards", n_train=8, n_val=4)
    keras.utils.set_random_seed(0)
    network = build_network(model_config(family="u2netp"))
    assert len(network.outputs) == 7  # fused + six side outputs: deep supervision
    before = {l.name: [w.copy() for w in l.get_weights()] for l in network.get_layer("u2netp").layers if l.get_weights()}
    encoder = {l.name for l in encoder_layers(network)}
    cfg = replace(CFG, epochs=1, freeze_epochs=1, steps_per_epoch=2, batch_size=4)
    train_ds, val_ds = datasets(shards, 32, 4, 0, 0.0)
    history = fit(network, train_ds, val_ds, cfg, pos_weight=3.0, steps_per_epoch=2, checkpoint_dir=tmp_path / "ckpt",
                  callbacks=[])
    after = {l.name: l.get_weights() for l in network.get_layer("u2netp").layers if l.get_weights()}
    changed = {n for n in before if any(not np.array_equal(a, b) for a, b in zip(before[n], after[n]))}
    assert encoder and not (changed & encoder), "frozen encoder layers moved"
    assert changed, "nothing trained"
    assert "val/iou" in clean_logs(network, {k: v[-1] for k, v in history.items()})


def test_zero_steps_per_epoch_means_one_pass_over_the_shards(tmp_path):
    shards = toy_shards(tmp_path / "shards", n_train=20, n_val=4)
    assert steps_per_epoch(replace(CFG, steps_per_epoch=0, batch_size=8), shards) == 2
    assert steps_per_epoch(replace(CFG, steps_per_epoch=7), shards) == 7
    assert steps_per_epoch(replace(CFG, steps_per_epoch=0, batch_size=64), shards) == 1  # never zero steps


def test_positive_weight_is_a_number_or_the_augment_stage_ratio(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "stats.json").write_text('{"n": {"train": 1, "val": 1, "test": 0}, "pos_weight": 4.5}')
    assert positive_weight(replace(CFG, pos_weight="auto"), shards) == 4.5
    assert positive_weight(replace(CFG, pos_weight=2), shards) == 2.0
    for bad in (0, -1.0, "sometimes"):
        with pytest.raises(ValueError, match="train.pos_weight"):
            positive_weight(replace(CFG, pos_weight=bad), shards)


def test_run_key_names_one_configuration_on_one_data_with_one_seed():
    key = run_key(TOY_UNET, CFG, "data", 0)
    assert key == run_key(model_config(family="unet", unet_filters=[4, 8, 16]), replace(CFG), "data", 0)
    others = {run_key(TOY_UNET, CFG, "other data", 0), run_key(TOY_UNET, CFG, "data", 1),
              run_key(TOY_UNET, replace(CFG, learning_rate=1e-3), "data", 0),
              run_key(model_config(family="unet", unet_filters=[4, 8]), CFG, "data", 0)}
    assert key not in others and len(others) == 4


def test_a_checkpoint_record_cut_off_mid_write_falls_back_to_the_one_before(tmp_path):
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
        replace(CFG, blend=bad)
    assert replace(CFG, blend=0.5).blend == (0.5,)
    assert replace(CFG, blend=[0.5, 1]).blend == (0.5, 1.0)


def test_choose_blend_keeps_the_share_that_scores_best_on_val(tmp_path, toy_model):
    from bgremoval.model.network import load_model

    shards = toy_shards(tmp_path / "shards")
    keras.utils.set_random_seed(0)
    network = build_network(TOY_UNET)
    untrained = [w.copy() for w in network.get_weights()]
    network.set_weights(load_model(toy_model).get_weights())  # the toy U-Net trained on the same kind of discs
    compile_network(network, CFG, 3.0, CFG.steps_per_epoch)  # as fit leaves it
    _, val_ds = datasets(shards, CFG.size, CFG.batch_size, 0, 0.0)
    trained = [w.copy() for w in network.get_weights()]
    trained_iou = evaluate_val(network, val_ds)["iou"]

    # Trained weights blended with untrained ones: the share with the best val IoU wins (the untrained end
    # cannot), and the network is left with exactly that blend.
    share, scores = choose_blend(network, untrained, val_ds, (0.0, 0.5, 1.0))
    assert set(scores) == {0.0, 0.5, 1.0} and share == max(scores, key=lambda b: scores[b]["iou"]) != 0.0
    assert scores[1.0]["iou"] == pytest.approx(trained_iou, abs=1e-6) and scores[0.0]["iou"] < trained_iou
    assert all(np.array_equal(a, b) for a, b in zip(network.get_weights(), blend_weights(trained, untrained, share)))

    # The other way round (the "fine-tuning" ruined the weights): the pretrained end wins.
    network.set_weights(untrained)
    share, scores = choose_blend(network, trained, val_ds, (0.0, 1.0))
    assert share == 0.0 and scores[0.0]["iou"] == pytest.approx(trained_iou, abs=1e-6)
    assert evaluate_val(network, val_ds)["iou"] == pytest.approx(trained_iou, abs=1e-6)

    # A single share of 1.0 is "off": nothing is scored, nothing changes.
    assert choose_blend(network, untrained, val_ds, (1.0,)) == (1.0, {})


@pytest.mark.slow
def test_a_training_run_blends_the_pretrained_weights_back_and_logs_the_curve(tmp_path, caplog, mlflow_uri):
    import mlflow

    from bgremoval import tracking
    from bgremoval.training.session import _blend

    skip_without_u2netp_weights()
    shards = toy_shards(tmp_path / "shards", n_train=8, n_val=4)
    keras.utils.set_random_seed(0)
    network = build_network(model_config(family="u2netp"))
    pretrained = [w.copy() for w in network.get_weights()]
    rng = np.random.default_rng(0)  # stands in for fine-tuning: every float tensor moved
    tuned = [w + rng.normal(0, 0.3 * float(w.std()) + 1e-3, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
             for w in pretrained]
    network.set_weights(tuned)
    _, val_ds = datasets(shards, 32, 4, 0, 0.0)
    cfg = replace(CFG, blend=[0.0, 0.5, 1.0])
    compile_network(network, cfg, 1.0, 1)  # as fit leaves it
    with tracking_store(mlflow_uri) as uri:
        tracking.configure(uri, "train-blend")
        with mlflow.start_run() as run:
            share, scores = _blend(network, pretrained, val_ds, model_config(family="u2netp"), cfg, log_curve=True)
        client = mlflow.MlflowClient()
        curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "blend/val_iou")}
        logged_share = client.get_run(run.info.run_id).data.metrics["blend/share"]
    assert curve == {round(100 * s): pytest.approx(m["iou"]) for s, m in scores.items()} and set(curve) == {0, 50, 100}
    assert logged_share == share
    assert share == max(scores, key=lambda s: (scores[s]["iou"], s))
    want = blend_weights(tuned, pretrained, share)
    assert all(np.allclose(a, b) for a, b in zip(network.get_weights(), want))

    # A network trained from scratch has nothing to blend with: the setting is not applied, and the log says so.
    unet = build_network(TOY_UNET)
    before = [w.copy() for w in unet.get_weights()]
    compile_network(unet, cfg, 1.0, 1)
    with caplog.at_level("INFO", logger="bgremoval.training.session"):
        assert _blend(unet, before, val_ds, TOY_UNET, cfg, log_curve=True) == (1.0, {})
    assert "train.blend [0.0, 0.5, 1.0] not applied" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(unet.get_weights(), before))


def test_the_prediction_picture_shows_val_images_with_their_truth_beside_the_prediction(tmp_path, monkeypatch):
    """Each val image twice: its true mask overlaid in green, then the model's prediction in magenta."""
    from keras import ops

    from bgremoval import pictures
    from bgremoval.data.shards import read_records
    from bgremoval.training import session

    shards = toy_shards(tmp_path / "shards", n_train=16, n_val=8)
    # A "model" that finds the toy discs exactly: they are the bright pixels.
    inputs = keras.Input((None, None, 3))
    bright = keras.Model(inputs, keras.layers.Lambda(
        lambda x: ops.cast(ops.mean(x, axis=-1, keepdims=True) > 0.4, "float32"))(inputs))
    drawn = {}

    def grid(tiles, labels, cols):
        drawn.update(tiles=tiles, labels=labels, cols=cols)
        return pictures.grid(tiles, labels, cols)

    monkeypatch.setattr(session, "grid", grid)
    picture = session.prediction_grid(bright, shards, 32, n=6)
    assert picture.size == (4 * 160, 3 * (160 + 14))  # 12 tiles, 4 a row
    tiles, labels = drawn["tiles"], drawn["labels"]
    assert labels == ["truth", "predicted"] * 6 and len(tiles) == 12
    val = {img.tobytes(): mask for _, img, mask in read_records(sorted(shards.glob("val-*.tfrecord")))}
    train = {img.tobytes() for _, img, _ in read_records(sorted(shards.glob("train-*.tfrecord")))}
    shown = []
    for truth_tile, predicted_tile in zip(tiles[::2], tiles[1::2]):
        # Recover the image under the overlay: it is a val record, drawn with its own mask.
        matches = [k for k, mask in val.items()
                   if np.array_equal(pictures.overlay(np.frombuffer(k, np.uint8).reshape(32, 32, 3), mask), truth_tile)]
        assert len(matches) == 1 and matches[0] not in train
        image, mask = np.frombuffer(matches[0], np.uint8).reshape(32, 32, 3), val[matches[0]]
        assert np.array_equal(predicted_tile, pictures.overlay(image, mask, color=(255, 0, 200)))
        shown.append(matches[0])
    assert len(set(shown)) == 6  # six different images


def _dense(value: float) -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    _set(model, value)
    return model


def _set(model: keras.Model, value: float) -> None:
    model.set_weights([np.full((2, 1), value, "float32"), np.zeros(1, "float32")])


def _stopper(folder, model, done_epochs):
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
