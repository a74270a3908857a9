"""How long prepare + validate take on a folder of real pairs; prints a table.

    python benchmarks/data_checks.py ../shared/data/davis_train
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from bgremoval.manifest import build_manifest, pair_files  # noqa: E402
from bgremoval.split import assign_groups, split_groups  # noqa: E402
from bgremoval.validation import Thresholds, add_derived_columns, run_suite, summarise  # noqa: E402

SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder with images/ and masks/")
    args = parser.parse_args()

    t0 = time.perf_counter()
    pairs = pair_files(args.folder)
    manifest = build_manifest(pairs, max_pixels=40_000_000)
    manifest["group"] = assign_groups(manifest["name"], r"^(.*)_\d+$")
    manifest["split"] = split_groups(manifest["group"], SPLITS, 42)
    t1 = time.perf_counter()
    thresholds = Thresholds(min_size=64, fg_min=0.001, fg_max=0.98, split_tolerance=0.1, split_fractions=SPLITS)
    with tempfile.TemporaryDirectory() as docs:
        report = summarise(run_suite(add_derived_columns(manifest, SPLITS), thresholds, Path(docs)))
    t2 = time.perf_counter()

    n = len(manifest)
    rows = [("prepare (decode, hash, split)", t1 - t0), ("validate (GX suite + Data Docs)", t2 - t1), ("total", t2 - t0)]
    print(f"{n} pairs from {args.folder}; {manifest['group'].nunique()} groups; validation success={report['success']}")
    print(f"{'step':34s} {'seconds':>8s} {'pairs/s':>8s}")
    for name, secs in rows:
        print(f"{name:34s} {secs:8.2f} {n / secs:8.1f}")


if __name__ == "__main__":
    main()
