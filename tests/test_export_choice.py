"""Export's choices on val: the serving size, the refinement, int8 or float32; and the served folder they make
(the served file beside its serving.json)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from bgremoval.export.choose import (
    ExportConfig, ExportJob, RefineChoices, ServeSettings, SizeChoice, choose_refine, choose_size, export_served,
    int8_loss,
)
from bgremoval.scoring.metrics import summarise
from bgremoval.scoring.score import score
from bgremoval.serving.config import ServingConfig
from bgremoval.serving.refine import Refine
from bgremoval.serving.served import Served
from tests.helpers import PARAMS, disc_folder, manifest_for, model_config

MAX_PIXELS = 10**6
NONE = Refine.none()


def _top_rows(foreground_share: float):
    """A predictor of the top `foreground_share` of each image's rows (the test masks are the top 30 %)."""
    def predict(image):
        out = np.zeros(image.shape[:2])
        out[: int(round(image.shape[0] * foreground_share))] = 1.0
        return out

    return predict


CHOICE = SizeChoice(metrics=["iou", "boundary_f"], tolerance=0.0, confidence=0.9, resamples=500)


def test_the_serving_size_is_the_smallest_that_loses_nothing_against_a_larger_one(data_dir):
    rows = manifest_for(data_dir)  # masks: the top 30 % of rows is foreground
    asked = []

    def predictor_at(size: int):
        """Finds more of the foreground the larger the size, all of it from 64 on."""
        asked.append(size)
        return _top_rows(0.3 * min(1.0, size / 64))

    size, by_size, margins = choose_size(rows, predictor_at, [96, 32, 64, 48, 64], MAX_PIXELS, choice=CHOICE, seed=0)
    assert list(by_size) == [32, 48, 64, 96] and asked == [32, 48, 64, 96]  # each size once, smallest first
    assert by_size[64]["iou"] == by_size[96]["iou"] == 1.0 and by_size[32]["iou"] < by_size[48]["iou"] < 0.9
    assert size == 64  # loses nothing against 96; 48 and 32 lose against both
    assert sorted(margins) == [32, 48, 64] and margins[64]["within"] and margins[64]["loss_against"]["96"]["upper"] == 0
    assert set(margins[32]["loss_against"]) == {"48", "64", "96"} and not margins[48]["within"]
    loss48 = margins[48]["loss_against"]["64"]
    assert loss48["mean"] == pytest.approx((1 - by_size[48]["iou"] + 1 - by_size[48]["boundary_f"]) / 2)
    # every photo is alike here, so the bootstrap has no spread: the interval is the loss itself
    assert loss48["lower"] == pytest.approx(loss48["mean"]) == pytest.approx(loss48["upper"]) and loss48["mean"] > 0
    loose = lambda tolerance: replace(CHOICE, tolerance=tolerance)  # noqa: E731
    assert choose_size(rows, predictor_at, [32, 48, 64], MAX_PIXELS, choice=loose(loss48["upper"]), seed=0)[0] == 48
    assert choose_size(rows, predictor_at, [32, 48, 64], MAX_PIXELS, choice=loose(1.0), seed=0)[0] == 32
    with pytest.raises(ValueError, match="val split is empty"):
        choose_size(rows.iloc[:0], predictor_at, [32, 48], MAX_PIXELS, choice=CHOICE, seed=0)
    for bad in ([], [0, 32], [-32]):
        with pytest.raises(ValueError, match="export.sizes must list positive sizes"):
            choose_size(rows, predictor_at, bad, MAX_PIXELS, choice=CHOICE, seed=0)


def _scored_as(monkeypatch, per_size: dict[int, list[tuple[float, float]]]):
    """export's val scoring made to give each size these (IoU, boundary F) per photo, in row order."""
    import bgremoval.export.choose as choose

    def score_as_given(rows, predict, max_pixels, progress=None):
        table, scores = score(rows, predict, max_pixels)
        given = per_size[int(progress.split()[-1])]  # progress is "val at SIZE"
        return table, [replace(s, iou=i, boundary_f=b) for s, (i, b) in zip(scores, given, strict=True)]

    monkeypatch.setattr(choose, "score", score_as_given)


def test_a_smaller_size_val_cannot_tell_from_a_larger_one_is_not_served(data_dir, monkeypatch):
    """The smaller size is better on average (23 photos a little better, one much worse), but one photo
    decides that: the bootstrap's interval reaches above zero, so the larger size is served."""
    rows = manifest_for(data_dir)
    larger = [(0.95, 0.90)] * len(rows)
    smaller = [(0.85, 0.80)] + [(0.955, 0.905)] * (len(rows) - 1)
    _scored_as(monkeypatch, {32: smaller, 64: larger})
    size, by_size, margins = choose_size(rows, lambda size: _top_rows(0.3), [32, 64], MAX_PIXELS, choice=CHOICE, seed=0)
    loss = margins[32]["loss_against"]["64"]
    assert by_size[32]["iou"] > by_size[64]["iou"] and loss["mean"] < 0  # val's means favour the smaller size
    assert loss["lower"] < loss["mean"] < 0 < loss["upper"] and size == 64
    # the same gain on every photo is certain: the smaller size is served
    _scored_as(monkeypatch, {32: [(0.955, 0.905)] * len(rows), 64: larger})
    assert choose_size(rows, lambda size: _top_rows(0.3), [32, 64], MAX_PIXELS, choice=CHOICE, seed=0)[0] == 32


def test_a_larger_size_val_finds_clearly_worse_does_not_hold_a_smaller_one_back(data_dir, monkeypatch):
    """A model trained small may predict worse at a larger size: IoU far down at 64, boundary F level."""
    rows = manifest_for(data_dir)
    _scored_as(monkeypatch, {32: [(0.9, 0.8 + 0.01 * (i % 3)) for i in range(len(rows))],
                             64: [(0.7, 0.8 + 0.01 * ((i + 1) % 3)) for i in range(len(rows))]})
    size, _, margins = choose_size(rows, lambda size: _top_rows(0.3), [32, 64], MAX_PIXELS, choice=CHOICE, seed=0)
    assert margins[32]["loss_against"]["64"]["upper"] < 0 and size == 32


def test_size_choice_settings_are_checked_when_read():
    for bad in ({"metrics": ["max_f"]}, {"metrics": []}, {"confidence": 1.0}, {"resamples": 0}):
        with pytest.raises(ValueError, match="export.size_choice"):
            replace(CHOICE, **bad)


def test_a_single_serving_size_is_taken_without_scoring_val():
    def never(size):
        raise AssertionError("val was scored for a single size")

    assert choose_size(pd.DataFrame(), never, [48, 48], MAX_PIXELS, choice=CHOICE, seed=0) == (48, {}, {})


def test_the_refine_grid_is_every_combination_once_as_refine_settings():
    grid = RefineChoices([False, True], [True, 1], [2, 1.0, 2.0], 0.0).grid()
    assert grid == [Refine(False, True, 2.0), Refine(False, True, 1.0), Refine(True, True, 2.0), Refine(True, True, 1.0)]
    assert all(type(r.sharpen) is float and type(r.flip) is bool for r in grid)
    assert RefineChoices([False], [False], [1.0], 0.5).grid() == [NONE]
    for empty in ({"flip": []}, {"main_object": []}, {"sharpen": []}):
        with pytest.raises(ValueError, match="export.refine: flip, main_object and sharpen must each list"):
            RefineChoices(**{"flip": [False], "main_object": [False], "sharpen": [1.0], **empty}, tolerance=0.0).grid()


def test_choose_refine_predicts_each_image_once_and_mirrored_only_when_a_choice_flips(data_dir):
    rows = manifest_for(data_dir)
    calls = []

    def predict(image):
        calls.append(image.shape)
        out = np.full(image.shape[:2], 0.1, np.float32)
        out[: int(round(image.shape[0] * 0.3))] = 0.7
        return out

    no_flip = RefineChoices([False], [False, True], [1.0, 2.0], 0.0).grid()
    chosen, by_choice = choose_refine(rows, predict, no_flip, MAX_PIXELS, 0.0)
    assert len(calls) == len(rows) and set(by_choice) == set(no_flip)  # summaries keyed by the Refine itself
    assert chosen == Refine(False, False, 2.0)  # nothing to remove; sharpening lowers MAE at the same IoU
    assert by_choice[chosen]["mae"] < by_choice[NONE]["mae"] and by_choice[chosen]["iou"] == by_choice[NONE]["iou"]

    calls.clear()
    chosen, by_choice = choose_refine(rows, predict, [NONE, Refine(True, False, 1.0)], MAX_PIXELS, 0.0)
    assert len(calls) == 2 * len(rows)  # and once more, mirrored
    assert chosen == NONE  # flipping a left-right symmetric mask gains nothing and costs a second pass

    calls.clear()
    assert choose_refine(rows, predict, [NONE, NONE], MAX_PIXELS, 0.0) == (NONE, {})  # one choice: not scored
    assert calls == []


def test_int8_loss_is_how_much_worse_int8_is_on_the_metric():
    f32 = {"max_f": 0.90, "iou": 0.80, "mae": 0.05}
    int8 = {"max_f": 0.88, "iou": 0.81, "mae": 0.06}
    assert int8_loss("max_f", f32, int8) == pytest.approx(0.02)
    assert int8_loss("iou", f32, int8) == pytest.approx(-0.01)  # int8 better: a negative loss
    assert int8_loss("mae", f32, int8) == pytest.approx(0.01)  # lower is better: a higher MAE is a loss
    with pytest.raises(ValueError, match="export.metric 'accuracy' is not one of"):
        int8_loss("accuracy", f32, int8)


# --- the served folder ---------------------------------------------------------------------------

def _export_config(**overrides) -> ExportConfig:
    return ExportConfig.from_params({**PARAMS["export"], "sizes": [32, 48], "calibration_images": 4, **overrides})


SERVE = ServeSettings(**PARAMS["serve"])


def _job(cfg: ExportConfig, served_dir) -> ExportJob:
    """The export stage's job with these export: settings, writing into served_dir (the template: the wheel's)."""
    return ExportJob(export=cfg, serve=SERVE, served_dir=served_dir, onnx_template=None, max_pixels=MAX_PIXELS, seed=0)


def test_the_export_job_is_built_from_the_stages_params():
    params = {**PARAMS, "paths": {**PARAMS["paths"], "served": "somewhere/served"}}
    job = ExportJob.from_params(params)
    assert job.export == ExportConfig.from_params(PARAMS["export"]) and job.serve == SERVE
    assert job.served_dir == Path("somewhere/served")
    assert (job.onnx_template, job.max_pixels) == (PARAMS["model"]["onnx_path"], PARAMS["prepare"]["max_pixels"])
    assert job.seed == PARAMS["base"]["seed"] and job.export.size_choice.metrics == ["iou", "boundary_f"]


def _served_score(folder, val) -> dict[str, float]:
    return summarise(score(val, Served.from_folder(folder), MAX_PIXELS)[1])


def _check_report_names_the_choices(config: ServingConfig, report: dict, cfg: ExportConfig) -> None:
    """The report says what was chosen, and by the rule export.* sets, from the val scores it lists."""
    by_size = {int(s): m for s, m in report["val_by_size"].items()}
    assert sorted(by_size) == sorted(cfg.sizes) and report["size"] == config.size
    margins = {int(s): m for s, m in report["size_margins"].items()}
    assert sorted(margins) == sorted(cfg.sizes)[:-1] and report["size_rule"] == cfg.size_choice.rule()
    assert all(m["within"] == all(a["upper"] <= cfg.size_choice.tolerance for a in m["loss_against"].values())
               for m in margins.values())
    assert config.size == min([s for s, m in margins.items() if m["within"]] + [max(cfg.sizes)])
    grid = {r.name: r for r in cfg.refine.grid()}
    assert set(report["val_by_refine"]) == set(grid) and report["refine"] == config.refine.name
    by_refine = {grid[name]: m for name, m in report["val_by_refine"].items()}
    best = max(m["iou"] for m in by_refine.values())
    close = [r for r, m in by_refine.items() if m["iou"] >= best - cfg.refine.tolerance]
    assert config.refine == min(close, key=lambda r: (r.cost, by_refine[r]["mae"]))


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    """A handful of small disc images as val rows, and others as calibration (train) rows."""
    folder = tmp_path_factory.mktemp("discs")
    return disc_folder(folder / "val", 4), disc_folder(folder / "train", 4, seed=10)


@pytest.fixture(scope="module")
def stock():
    from bgremoval.model.network import build_network, inference_model

    return inference_model(build_network(model_config(family="u2netp")))


def _export_stock(stock, discs, out_dir, **export):
    val, calibration = discs
    cfg = _export_config(**export)
    config, report = export_served(stock, out_dir / "unused.keras", val=val, calibration=calibration,
                                   job=_job(cfg, out_dir / "served"))
    return cfg, config, report


def _check_stock_export(cfg, config, report, folder, val, int8: bool):
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "serving.json"]
    assert ServingConfig.read(folder) == config
    assert (config.runtime, config.model_file, config.int8) == ("onnxruntime", "model.onnx", int8)
    assert (config.max_pixels, config.max_request_mb, config.defaults) == (
        SERVE.max_pixels, float(SERVE.max_request_mb), SERVE.defaults)
    assert [c["size"] for c in report["onnx_vs_keras"]] == [32, 48]
    assert all(c["share_over"] <= 1e-4 and c["max_abs"] <= 1e-3 for c in report["onnx_vs_keras"])
    _check_report_names_the_choices(config, report, cfg)
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert ("DequantizeLinear" in ops) is int8
    assert report["served_mb"] == pytest.approx((folder / "model.onnx").stat().st_size / 1e6)
    # What was written is what was scored: the served folder scores on val as the report says.
    served = _served_score(folder, val)
    if "int8" in report:
        decision = report["int8"]
        assert decision["kept"] is int8 and f"export.max_int8_loss {cfg.max_int8_loss}" in decision["reason"]
        assert (int8_loss(cfg.metric, decision["val_float32"], decision["val_int8"]) <= cfg.max_int8_loss) is int8
        assert served == pytest.approx(decision["val_int8" if int8 else "val_float32"], abs=1e-9)
    else:
        assert served == pytest.approx(report["val_by_refine"][config.refine.name], abs=1e-9)


def test_export_served_writes_stock_u2netp_as_onnx_with_the_setup_val_chose(stock, discs, tmp_path):
    """Stock U²-NetP at sizes 32 and 48, float32 (export.quantize none): the served folder, and the report of
    every choice."""
    cfg, config, report = _export_stock(stock, discs, tmp_path, quantize="none")
    assert "int8" not in report
    _check_stock_export(cfg, config, report, tmp_path / "served", discs[0], int8=False)


@pytest.mark.slow
@pytest.mark.parametrize("max_int8_loss,int8", [(1.0, True), (-1.0, False)])
def test_int8_is_served_only_within_the_allowed_loss(stock, discs, tmp_path, max_int8_loss, int8):
    """export.quantize int8: quantised, scored on val against float32 (both refined as served), and kept only
    if it loses at most export.max_int8_loss; the report says which and why."""
    cfg, config, report = _export_stock(stock, discs, tmp_path, quantize="int8", max_int8_loss=max_int8_loss)
    _check_stock_export(cfg, config, report, tmp_path / "served", discs[0], int8=int8)


def test_the_toy_unet_is_served_as_onnx_and_as_keras_when_asked(toy_model, discs, tmp_path, monkeypatch):
    """The toy U-Net: by default its own ONNX graph (checked against Keras, int8 weighed on val as for U²-NetP);
    with export.runtime keras, its .keras file. Either way beside a serving.json, size and refinement chosen on val."""
    from bgremoval.model.network import load_model

    val, calibration = discs
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # the working directory is left as it was
    cfg = _export_config()  # runtime onnxruntime, quantize int8
    config, report = export_served(load_model(toy_model), toy_model, val=val, calibration=calibration,
                                   job=_job(cfg, tmp_path / "onnx"))
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["model.onnx", "serving.json"]
    assert config.runtime == "onnxruntime" and all(c["max_abs"] <= 1e-3 for c in report["onnx_vs_keras"])
    assert config.int8 == report["int8"]["kept"]
    _check_report_names_the_choices(config, report, cfg)
    assert not list((tmp_path / "cwd").iterdir())  # no temporary files of the int8 tools
    served_as = report["int8"]["val_int8" if config.int8 else "val_float32"]  # val, refined as served
    assert _served_score(tmp_path / "onnx", val) == pytest.approx(served_as, abs=1e-6)

    keras_cfg = _export_config(runtime="keras")
    config, report = export_served(load_model(toy_model), toy_model, val=val, calibration=calibration,
                                   job=_job(keras_cfg, tmp_path / "served"))
    folder = tmp_path / "served"
    assert sorted(p.name for p in folder.iterdir()) == ["model.keras", "serving.json"]
    assert (folder / "model.keras").read_bytes() == toy_model.read_bytes()
    assert ServingConfig.read(folder) == config
    assert (config.runtime, config.model_file, config.int8) == ("keras", "model.keras", False)
    assert "onnx_vs_keras" not in report and "int8" not in report
    _check_report_names_the_choices(config, report, keras_cfg)
    assert _served_score(folder, val) == pytest.approx(report["val_by_refine"][config.refine.name], abs=1e-6)
    assert report["val_by_size"][str(config.size)]["iou"] > 0.5  # the toy model finds the discs


def test_export_served_replaces_what_the_folder_held(toy_model, discs, tmp_path):
    from bgremoval.model.network import load_model

    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"an earlier export")
    cfg = _export_config(sizes=[32], refine={"flip": [False], "main_object": [False], "sharpen": [1.0], "tolerance": 0.0},
                         runtime="keras")
    config, report = export_served(load_model(toy_model), toy_model, val=discs[0], calibration=discs[1],
                                   job=_job(cfg, folder))
    assert sorted(p.name for p in folder.iterdir()) == ["model.keras", "serving.json"]  # the earlier file is gone
    assert (config.size, config.refine) == (32, NONE)
    assert report["val_by_size"] == {} and report["val_by_refine"] == {}  # one choice each: val not scored
