"""validate: run the Great Expectations suite over the manifest; stop the pipeline on bad data."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pandas as pd

from bgremoval.data.validation import (Thresholds, add_derived_columns, failure_message, mask_lines, mask_summary,
                                      result_page, run_suite, summarise)
from stages.common import run, start

log = logging.getLogger("stages.validate")


def main() -> int:
    params = start("validate")
    cfg, reports = params["validate"], Path(params["paths"]["reports"])
    thresholds = Thresholds(
        min_size=cfg["min_size"],
        fg_min=cfg["fg_min"],
        fg_max=cfg["fg_max"],
        split_tolerance=cfg["split_tolerance"],
        split_fractions=params["prepare"]["splits"],
    )

    manifest = pd.read_parquet(params["paths"]["manifest"])
    table = add_derived_columns(manifest, thresholds.split_fractions)
    docs = reports / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)  # one run's docs, not an accumulating history
    report = summarise(run_suite(table, thresholds, docs))
    report["pairs"] = len(manifest)
    report["masks"] = mask_summary(manifest)
    for line in mask_lines(report["masks"]):
        log.info("%s", line)
    page = result_page(docs)
    report["data_docs"] = str(page) if page else None

    reports.mkdir(parents=True, exist_ok=True)
    (reports / "validation.json").write_text(json.dumps(report, indent=2, default=str))
    log.info("Data Docs (open in a browser): %s", Path(page or docs / "index.html").resolve())
    if not report["success"]:
        print(failure_message(report), file=sys.stderr)
        print(f"Full report: {reports / 'validation.json'}; Data Docs: {page or docs / 'index.html'}", file=sys.stderr)
        return 1
    log.info("all %d expectations met on %d pairs", report["evaluated"], len(manifest))
    return 0


if __name__ == "__main__":
    run(main)
