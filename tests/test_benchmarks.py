"""The quality benchmark's pass/fail check (--require-beats): what makes the champion fail against a stock model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_champion_must_beat_the_stock_model_on_every_compared_metric():
    shortfalls = _quality().shortfalls
    stock = {"mae": 0.0323, "max_f": 0.897, "iou": 0.688}
    assert shortfalls({"mae": 0.0260, "max_f": 0.938, "iou": 0.809}, stock, "u2netp") == []
    # The session 8 failure: a collapsed champion (IoU 0) with a lower MAE would still fail on max F and IoU.
    missed = shortfalls({"mae": 0.0300, "max_f": 0.192, "iou": 0.0}, stock, "u2netp")
    assert [m.split(":")[0] for m in missed] == ["max_f", "iou"]
    assert "champion 0.1920, u2netp 0.8970" in missed[0]
    # A tie is not a win, and a higher MAE is a loss.
    assert [m.split(":")[0] for m in shortfalls({"mae": 0.0400, "max_f": 0.897, "iou": 0.7}, stock, "u2netp")] == ["mae", "max_f"]


def test_set_overrides_are_yaml_values_over_the_profile(tmp_path):
    import pytest
    import yaml

    quality = _quality()
    sets = quality.parse_sets(["train.epochs=1", "evaluate.size_choices=[256, 320]", "evaluate.refine.flip=[true]"])
    assert sets == {"train.epochs": 1, "evaluate.size_choices": [256, 320], "evaluate.refine.flip": [True]}
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    applied = quality.apply_profile(params, sets)
    written = yaml.safe_load(params.read_text())
    assert written["train"]["epochs"] == 1 and applied["train.epochs"] == 1  # over the profile's 5
    assert written["evaluate"]["refine"]["flip"] == [True] and written["evaluate"]["refine"]["sharpen"] == applied["evaluate.refine.sharpen"]
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        quality.parse_sets(["train.epochs"])


def test_speed_ratios_time_their_two_sides_in_alternation(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # speed.py imports its sibling serve_helper, as a script does
    spec = importlib.util.spec_from_file_location("speed_benchmark", ROOT / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    calls = []
    a_ms, b_ms, ratio = speed.timed_pair(lambda: calls.append("a"), lambda: calls.append("b"), repeat=4, warmup=1)
    # One warm-up of each, then a b, b a, a b, b a: neither side always runs first.
    assert "".join(calls) == "ab" + "ab" + "ba" + "ab" + "ba"
    assert a_ms >= 0 and b_ms >= 0 and ratio >= 0
