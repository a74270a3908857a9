"""augment: balanced, augmented train shards + resized val/test shards, and a report of what changed."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from bgremoval.augment import AugmentConfig, Magnitudes, Probabilities, augment_pair, resize_pair
from bgremoval.balance import bin_labels, oversample_plan, positive_weight, target_weights
from bgremoval.imageio import load_mask, load_rgb
from bgremoval.shards import write_shards
from bgremoval.viz import grid, overlay
from stages.common import run, start

log = logging.getLogger("stages.augment")


def load_pair(row: pd.Series, max_side: int, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask, downscaled so the longer side is at most max_side (augmenting needs no more)."""
    image, mask = load_rgb(Path(row["image_path"]), max_pixels), load_mask(Path(row["mask_path"]), max_pixels)
    h, w = mask.shape
    if max(h, w) > max_side:
        size = (round(w * max_side / max(h, w)), round(h * max_side / max(h, w)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
        mask = np.asarray(Image.fromarray(mask, "L").resize(size, Image.Resampling.LANCZOS))
    return image, mask


def main() -> int:
    params = start("augment")
    cfg, seed, paths = params["augment"], params["base"]["seed"], params["paths"]
    out_dir, reports = Path(paths["augmented"]), Path(paths["reports"])
    aug = AugmentConfig(
        size=cfg["size"], strength=cfg["strength"], texture_share=cfg["texture_share"],
        p=Probabilities(**cfg["p"]), m=Magnitudes(**cfg["magnitude"]),
    )
    verdict = json.loads((reports / "validation.json").read_text())
    if not verdict["success"]:  # also when someone forces this stage alone (dvc repro -s augment)
        print(f"augment: {reports / 'validation.json'} says the data failed validation; "
              "fix the data and run `dvc repro` again", file=sys.stderr)
        return 1
    manifest = pd.read_parquet(paths["manifest"])
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)

    # Balance: bins by foreground fraction (and category, if the manifest has one).
    category = train["category"] if "category" in train else None
    bins = bin_labels(train["fg_fraction"], cfg["balance"]["edges"], category)
    weights = target_weights(bins, cfg["balance"]["weights"])
    plan = oversample_plan(bins, weights, cfg["copies"], cfg["balance"]["max_repeat"], seed)

    max_side = 3 * aug.size  # enough resolution for the tightest crop
    max_pixels = params["prepare"]["max_pixels"]
    cache = {i: load_pair(row, max_side, max_pixels) for i, row in tqdm(train.iterrows(), total=len(train), desc="load train", leave=False)}

    def train_records():
        for k, i in enumerate(tqdm(plan, desc="augment", leave=False)):
            # One generator per output copy, keyed by its position: reproducible, order-free.
            rng = np.random.default_rng([seed, k])
            donor = cache[int(rng.integers(len(train)))] if len(train) > 1 else None
            image, mask = augment_pair(rng, *cache[i], aug, donor)
            yield f"{train.loc[i, 'name']}#{k}", image, mask

    shutil.rmtree(out_dir, ignore_errors=True)
    out_masks, samples = [], []

    shown = set(np.linspace(0, len(plan) - 1, 24).round().astype(int).tolist())  # spread over all bins

    def tap(records):  # keep what the report needs while the shards are written
        for k, (name, image, mask) in enumerate(records):
            out_masks.append(mask)
            if k in shown:
                samples.append((name, image, mask))
            yield name, image, mask

    counts = {"train": len(write_shards(tap(train_records()), out_dir, "train", cfg["shard_size"]))}
    for split in ("val", "test"):
        rows = manifest[manifest["split"] == split]
        records = ((r["name"], *resize_pair(*load_pair(r, max_side, max_pixels), aug.size)) for _, r in rows.iterrows())
        counts[split] = len(write_shards(records, out_dir, split, cfg["shard_size"]))

    # What changed: bin shares before/after, and the pixel imbalance the loss must weigh.
    out_bins = pd.Series([bins[i] for i in plan])
    before = bins.value_counts(normalize=True)
    after = out_bins.value_counts(normalize=True)
    fg_share, pos_weight = positive_weight(out_masks)
    stats = {
        "size": aug.size,
        "pos_weight": pos_weight,
        "fg_pixel_share": fg_share,
        "n": {"train": len(plan), "val": int((manifest["split"] == "val").sum()), "test": int((manifest["split"] == "test").sum())},
        "shards": counts,
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    reports.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"bin": sorted(set(bins)), }).assign(
        before=lambda d: d["bin"].map(before).fillna(0.0),
        requested=lambda d: d["bin"].map(weights).fillna(0.0),
        after=lambda d: d["bin"].map(after).fillna(0.0),
    )
    table.to_csv(reports / "augment_bins.csv", index=False, float_format="%.4f")
    report = {**stats, "train_images": len(train), "bins": table.to_dict(orient="records")}
    (reports / "augment.json").write_text(json.dumps(report, indent=2))
    tiles = [overlay(img, m) for _, img, m in samples]
    grid(tiles, [n for n, _, _ in samples], cols=6).save(reports / "augment_samples.png")

    log.info("train: %d images -> %d augmented copies in %d shards; val %d, test %d; pos_weight %.2f",
             len(train), len(plan), counts["train"], stats["n"]["val"], stats["n"]["test"], pos_weight)
    return 0


if __name__ == "__main__":
    run(main)
