"""How long prepare + validate take on a folder of real pairs; prints a table.

    python benchmarks/data_checks.py FOLDER

The two stages' work as the pipeline does it (params.yaml's prepare: and validate: settings): every file
decoded, hashed, grouped and split, then the Great Expectations suite with its Data Docs (in a temporary
folder). Nothing is written to the project.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import yaml  # noqa: E402

from bgremoval.data.manifest import build_manifest, pair_files  # noqa: E402
from bgremoval.data.masks import MaskChoices  # noqa: E402
from bgremoval.data.split import assign_groups, split_groups  # noqa: E402
from bgremoval.data.validation import Thresholds, add_derived_columns, run_suite, summarise  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with images/ and masks/")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    prepare = params["prepare"]

    t0 = time.perf_counter()
    choices = MaskChoices(jpeg=prepare["jpeg_masks"], resize=prepare["resize_masks"])
    manifest = build_manifest(pair_files(args.folder), prepare["max_pixels"], choices)
    manifest["group"] = assign_groups(manifest["name"], prepare["group_pattern"])
    manifest["split"] = split_groups(manifest["group"], prepare["splits"], params["base"]["seed"])
    t1 = time.perf_counter()
    thresholds = Thresholds.from_params(params)
    with tempfile.TemporaryDirectory() as docs:
        report = summarise(run_suite(add_derived_columns(manifest, thresholds), thresholds, Path(docs)))
    t2 = time.perf_counter()

    n = len(manifest)
    rows = [("prepare (decode, hash, split)", t1 - t0), ("validate (GX suite + Data Docs)", t2 - t1), ("total", t2 - t0)]
    print(f"{n} pairs from {args.folder}; {manifest['group'].nunique()} groups; "
          f"validation: {report['evaluated'] - report['failed']} of {report['evaluated']} expectations met")
    print(f"{'step':<34} | {'seconds':>8} | {'pairs/s':>8}")
    print(f"{'-' * 34}-|{'-' * 10}|{'-' * 9}")
    for name, secs in rows:
        print(f"{name:<34} | {secs:8.2f} | {n / secs:8.1f}")


if __name__ == "__main__":
    main()
