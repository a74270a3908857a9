"""The CLI's defaults come from the project's files, not from copies of them."""

from __future__ import annotations

import json

import yaml

from bgremoval.cli import _default_size


def _project(tmp_path, evaluate_size=256, served=None):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"reports": "out"}, "evaluate": {"size": evaluate_size}}))
    if served is not None:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "metrics.json").write_text(json.dumps({"size": served, "iou": 0.9}))
    return tmp_path / "params.yaml"


def test_a_bare_keras_file_is_predicted_at_the_size_the_evaluate_stage_served(tmp_path):
    # evaluate.size_choices (or tune) picked 288 although params.yaml still says 256
    assert _default_size(_project(tmp_path, 256, served=288)) == 288


def test_without_an_evaluate_run_the_size_is_params_evaluate_size(tmp_path):
    assert _default_size(_project(tmp_path, 256)) == 256


def test_without_params_the_size_is_rembgs_320(tmp_path):
    assert _default_size(tmp_path / "missing.yaml") == 320
    (tmp_path / "params.yaml").write_text("evaluate: {}\n")
    assert _default_size(tmp_path / "params.yaml") == 320


def test_a_bare_keras_file_is_refined_as_the_evaluate_stage_chose(tmp_path):
    from bgremoval.cli import _default_refine
    from bgremoval.refine import Refine

    params = _project(tmp_path, 256, served=288)
    assert _default_refine(params) == Refine()  # a metrics.json from before refinements: none
    metrics = tmp_path / "out" / "metrics.json"
    metrics.write_text(json.dumps({"size": 288, "refine": {"flip": False, "main_object": True, "sharpen": 2.0}}))
    assert _default_refine(params) == Refine(main_object=True, sharpen=2.0)
    assert _default_refine(tmp_path / "missing.yaml") == Refine()
