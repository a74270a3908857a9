"""validate: run the Great Expectations suite over the manifest; stop the pipeline on bad data."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from bgremoval.data.validation import (ValidateConfig, add_derived_columns, failure_message, mask_lines, mask_summary,
                                      result_page, run_suite, scorable, summarise, suspect_summary)
from stages.common import run, start

log = logging.getLogger("stages.validate")


def main() -> int:
    params = start("validate")
    cfg = ValidateConfig.from_params(params)
    reports, thresholds = cfg.reports, cfg.thresholds
    manifest = pd.read_parquet(params["paths"]["manifest"])
    reports.mkdir(parents=True, exist_ok=True)
    suspects = None
    if cfg.suspects.model:  # every mask a person drew against a model's mask of its photo
        suspects = suspect_masks(manifest, cfg=cfg)
        ranking = suspects["ranking"]  # a mask file is one pair's (names may repeat across the reference photos)
        manifest["mask_disagreement"] = manifest["mask_path"].map(dict(zip(ranking["mask_path"], ranking["disagreement"])))
        thresholds = replace(thresholds, suspect_above=suspects["flag_above"])
    else:  # off: an empty ranking, so that no earlier run's stands
        from bgremoval.labelling.suspects import COLUMNS

        pd.DataFrame(columns=COLUMNS).to_csv(reports / "suspect_masks.csv", index=False)
        (reports / "suspect_masks.png").unlink(missing_ok=True)
    table = add_derived_columns(manifest, thresholds)
    docs = reports / "data_docs"
    shutil.rmtree(docs, ignore_errors=True)  # one run's docs, not an accumulating history
    report = summarise(run_suite(table, thresholds, docs))
    report["pairs"] = len(manifest)
    report["masks"] = mask_summary(manifest)
    if suspects is not None:
        report["suspect_masks"] = {k: v for k, v in suspects.items() if k != "ranking"}
        for f in report["warnings"]:
            log.warning("%d pair(s): not %s", f.get("unexpected_count", 0), f["guards"])
    for line in mask_lines(report["masks"]):
        log.info("%s", line)
    page = result_page(docs)
    report["data_docs"] = str(page) if page else None

    (reports / "validation.json").write_text(json.dumps(report, indent=2, default=str))
    log.info("Data Docs (open in a browser): %s", Path(page or docs / "index.html").resolve())
    if not report["success"]:
        print(failure_message(report), file=sys.stderr)
        print(f"Full report: {reports / 'validation.json'}; Data Docs: {page or docs / 'index.html'}", file=sys.stderr)
        return 1
    log.info("all %d expectations met on %d pairs", report["evaluated"], len(manifest))
    return 0


def suspect_masks(manifest: pd.DataFrame, *, cfg: ValidateConfig) -> dict:
    """Score every mask a person drew with validate.suspects.model; the ranking to reports/suspect_masks.csv, the
    worst to reports/suspect_masks.png; the summary for validation.json (with the ranking under "ranking")."""
    from bgremoval.labelling.drafts import open_model
    from bgremoval.labelling.suspects import contact_sheet, flag_above, score_masks

    s, max_pixels, reports = cfg.suspects, cfg.max_pixels, cfg.reports
    predict = open_model(s.model, tracking_uri=None)
    ranking, unread = score_masks(scorable(manifest, cfg.thresholds.min_contrast), predict, s.model, max_pixels)
    ranking.to_csv(reports / "suspect_masks.csv", index=False, float_format="%.6f")
    above = flag_above(ranking["disagreement"], s.z)
    sheet = reports / "suspect_masks.png"
    sheet.unlink(missing_ok=True)
    contact_sheet(ranking, s.worst, predict, max_pixels, sheet)
    summary = suspect_summary(ranking, above, s.worst, unread)
    names = ", ".join(f["name"] for f in summary["flagged"][:5]) or "none"
    log.info("suspect masks: %s disagree with %s's more than %s: %s", f"{len(summary['flagged'])} of {len(ranking)}",
             s.model, f"{above:.3f} (1 - IoU; median {summary['median'] or 0:.3f})", names)
    log.info("the worst %d suspect masks in %s", min(s.worst, len(ranking)), sheet)
    return {**summary, "ranking": ranking}


if __name__ == "__main__":
    run(main)
