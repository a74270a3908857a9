"""prepare: the sample or the user's folder -> a manifest of image/mask pairs with their splits."""

from __future__ import annotations

import logging
from pathlib import Path

from bgremoval.data.manifest import build_manifest, pair_files, resolve_source
from bgremoval.data.sample import SampleSpec, ensure_sample
from bgremoval.data.split import assign_groups, read_split_file, split_groups
from stages.common import run, start

log = logging.getLogger("stages.prepare")


def main() -> int:
    params = start("prepare")
    cfg, paths, seed = params["prepare"], params["paths"], params["base"]["seed"]

    if cfg["source"] == "sample":
        ensure_sample(Path(paths["sample_dir"]), SampleSpec(**cfg["sample"]), seed)
    data_dir = resolve_source(cfg["source"], Path(paths["sample_dir"]))

    manifest = build_manifest(pair_files(data_dir), max_pixels=cfg["max_pixels"])
    manifest["group"] = assign_groups(manifest["name"], cfg["group_pattern"])
    if cfg["split_file"]:
        manifest["split"] = read_split_file(Path(cfg["split_file"]), manifest["name"])
    else:
        manifest["split"] = split_groups(manifest["group"], cfg["splits"], seed)

    out = Path(paths["manifest"])
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(out, index=False)
    log.info("%d pairs from %s in %d groups -> %s; splits %s",
             len(manifest), data_dir, manifest["group"].nunique(), out, manifest["split"].value_counts().to_dict())
    return 0


if __name__ == "__main__":
    run(main)
