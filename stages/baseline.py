"""baseline: stock U²-NetP on the test split, as rembg serves it; re-run only when the test data changes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bgremoval.scoring.metrics import HEADLINE, summarise
from bgremoval.scoring.reports import pr_table
from bgremoval.scoring.score import score
from bgremoval.serving.runtime import OnnxSegmenter
from bgremoval.weights import find_u2netp_onnx
from stages.common import run, start


def main() -> int:
    params = start("baseline")
    paths, reports = params["paths"], Path(params["paths"]["reports"])
    manifest = pd.read_parquet(paths["manifest"])
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    stock = OnnxSegmenter(find_u2netp_onnx(params["model"]["onnx_path"]), params["baseline"]["size"])

    table, scores = score(test, stock, params["prepare"]["max_pixels"], progress="stock u2netp")

    reports.mkdir(parents=True, exist_ok=True)
    summary = summarise(scores)
    (reports / "baseline.json").write_text(json.dumps({k: summary[k] for k in HEADLINE}, indent=2))
    table.to_csv(reports / "baseline_images.csv", index=False, float_format="%.4f")
    pr_table(scores).to_csv(reports / "pr_curve_baseline.csv", index=False, float_format="%.4f")
    return 0


if __name__ == "__main__":
    run(main)
