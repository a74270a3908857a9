"""prepare: the sample or the user's folder -> a manifest of image/mask pairs with their splits."""

from __future__ import annotations

import logging
from pathlib import Path

from bgremoval.data.content import copies_in, merge_groups
from bgremoval.data.manifest import (DRAFT, add_rows, build_manifest, pair_files, resolve_source, unlabelled_files,
                                    with_drafts)
from bgremoval.data.prepare import PrepareConfig
from bgremoval.data.sample import ensure_sample
from bgremoval.data.split import REFERENCE, UNLABELLED, assign_groups, read_split_file, split_checked
from stages.common import run, start

log = logging.getLogger("stages.prepare")


def main() -> int:
    params = start("prepare")
    cfg, paths = PrepareConfig.from_params(params), params["paths"]

    if cfg.source == "sample":
        ensure_sample(cfg.sample_dir, cfg.sample, cfg.seed)
    data_dir = resolve_source(cfg.source, cfg.sample_dir)

    pairs = pair_files(data_dir)
    if cfg.drafts:  # photos without a person's mask train on their drafts (drafts/), if they have one
        pairs = with_drafts(pairs, data_dir)
    manifest = build_manifest(pairs, max_pixels=cfg.max_pixels, choices=cfg.masks)
    manifest["group"] = assign_groups(manifest["name"], cfg.group_pattern)
    # The same picture under two names (resized, re-encoded, cropped a little) goes where its copy goes.
    copies = copies_in(manifest, cfg.near_copy_distance, cfg.min_contrast)
    if copies:
        before = manifest["group"].nunique()
        manifest["group"] = merge_groups(manifest["group"], copies)
        log.info("%d near-copy pair(s) (perceptual hash within %d bits), e.g. %s; %d group(s) merged so no split "
                 "separates them", len(copies), cfg.near_copy_distance,
                 ", ".join(f"{manifest.at[a, 'name']} ~ {manifest.at[b, 'name']} ({d})" for a, b, d in copies[:3]),
                 before - manifest["group"].nunique())
    if cfg.split_file:
        manifest["split"] = read_split_file(cfg.split_file, manifest["name"])
    else:
        manifest["split"] = split_checked(manifest["group"], manifest["mask_origin"] == DRAFT, cfg.splits, cfg.seed)

    # Photos the splitter does not place: other kinds guarding against forgetting, and photos without masks.
    for split, folder, files in ((REFERENCE, cfg.reference, pair_files), (UNLABELLED, cfg.unlabelled, unlabelled_files)):
        if folder:
            extra = build_manifest(files(folder), cfg.max_pixels, cfg.masks)
            manifest = add_rows(manifest, extra, split, assign_groups(extra["name"], cfg.group_pattern))

    out = Path(paths["manifest"])
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(out, index=False)
    log.info("%d pairs from %s in %d groups -> %s", len(manifest), data_dir, manifest["group"].nunique(), out)
    log.info("splits %s", manifest["split"].value_counts().to_dict())
    log.info("masks by kind %s; sizes against their photos %s", manifest["mask_kind"].value_counts().to_dict(),
             manifest["mask_fit"].value_counts().to_dict())
    log.info("masks by who made them %s (drafts only ever train)", manifest["mask_origin"].value_counts().to_dict())
    return 0


if __name__ == "__main__":
    run(main)
