"""baseline: stock U²-NetP's weights on the test split (and the reference photos), at rembg's input size,
unrefined; re-run only when the data changes (not when the model does)."""

from __future__ import annotations

import json

import pandas as pd

from bgremoval.data.split import REFERENCE
from bgremoval.scoring.metrics import summarise
from bgremoval.scoring.reports import BaselineConfig, pr_table
from bgremoval.scoring.score import headline, reported, score
from bgremoval.serving.runtime import OnnxSegmenter
from bgremoval.weights import find_u2netp_onnx
from stages.common import run, start


def main() -> int:
    params = start("baseline")
    cfg = BaselineConfig.from_params(params)
    reports, max_pixels = cfg.reports, cfg.max_pixels
    manifest = pd.read_parquet(params["paths"]["manifest"])
    test, reference = (manifest[manifest["split"] == s].reset_index(drop=True) for s in ("test", REFERENCE))
    stock = OnnxSegmenter(find_u2netp_onnx(cfg.onnx_template), cfg.size)

    table, scores = score(test, stock, max_pixels, progress="stock u2netp", dis=True)
    summary = summarise(scores)
    metrics = reported(summary)
    if not reference.empty:
        metrics["reference"] = headline(reference, stock, max_pixels, "stock u2netp, reference")

    reports.mkdir(parents=True, exist_ok=True)
    (reports / "baseline.json").write_text(json.dumps(metrics, indent=2))
    table.to_csv(reports / "baseline_images.csv", index=False, float_format="%.4f")
    pr_table(scores).to_csv(reports / "pr_curve_baseline.csv", index=False, float_format="%.4f")
    return 0


if __name__ == "__main__":
    run(main)
