"""augment: balanced, augmented train shards + resized val/test shards, and a report of what changed."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from bgremoval.data.training_set import TrainingSetConfig, build
from stages.common import run, start


def main() -> int:
    params = start("augment")
    cfg, paths = TrainingSetConfig.from_params(params), params["paths"]
    out_dir, reports = Path(paths["augmented"]), Path(paths["reports"])
    verdict = reports / "validation.json"
    if not json.loads(verdict.read_text())["success"]:  # also when someone forces this stage alone
        print(f"augment: {verdict} says the data failed validation; fix the data and run `dvc repro` again",
              file=sys.stderr)
        return 1

    shutil.rmtree(out_dir, ignore_errors=True)
    stats, bins, samples = build(pd.read_parquet(paths["manifest"]), cfg=cfg, out_dir=out_dir)

    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    reports.mkdir(parents=True, exist_ok=True)
    bins.to_csv(reports / "augment_bins.csv", index=False, float_format="%.4f")
    samples.save(reports / "augment_samples.png")
    return 0


if __name__ == "__main__":
    run(main)
