"""The augment stage's work: the train split balanced and augmented, val and test resized, all as shards,
and a report of what balancing changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from bgremoval.data.augment import AugmentConfig, augment_pair, resize_pair
from bgremoval.data.balance import bin_labels, oversample_plan, positive_weight, target_weights
from bgremoval.data.manifest import DRAFT
from bgremoval.data.masks import load_mask
from bgremoval.data.shards import write_shards
from bgremoval.images import load_rgb
from bgremoval.pictures import grid, overlay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Balance:
    """params.yaml augment.balance:."""

    edges: list[float]                 # foreground-fraction bins
    weights: str | dict[str, float]    # "equal" or a share per bin
    max_repeat: int                    # an image appears at most copies * max_repeat times


def load_pair(row: pd.Series, max_side: int, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask (read from the row as prepare recorded it, at the image's size), downscaled so the
    longer side is at most max_side (augmenting needs no more)."""
    image, mask = load_rgb(Path(row["image_path"]), max_pixels), load_mask(row, max_pixels)
    h, w = mask.shape
    if max(h, w) > max_side:
        size = (round(w * max_side / max(h, w)), round(h * max_side / max(h, w)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
        mask = np.asarray(Image.fromarray(mask, "L").resize(size, Image.Resampling.LANCZOS))
    return image, mask


@dataclass(frozen=True)
class TrainingSetConfig:
    """The augment stage's settings: params.yaml augment:, with base.seed and prepare.max_pixels."""

    augment: AugmentConfig
    balance: Balance
    copies: int        # augmented copies of each train pair, before balancing
    shard_size: int    # records per TFRecord shard
    seed: int
    max_pixels: int    # photos larger than this are refused as they are read

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainingSetConfig":
        section = params["augment"]
        return cls(augment=AugmentConfig.from_params(section), balance=Balance(**section["balance"]),
                   copies=section["copies"], shard_size=section["shard_size"], seed=params["base"]["seed"],
                   max_pixels=params["prepare"]["max_pixels"])


def build(manifest: pd.DataFrame, *, cfg: TrainingSetConfig, out_dir: Path) -> tuple[dict[str, Any], pd.DataFrame, Image.Image]:
    """Write the shards into out_dir; return their stats (what the stage writes to stats.json), the bins table
    (before, requested and after balancing) and a grid of augmented samples spread over all bins."""
    aug, balance, copies, shard_size, seed, max_pixels = (cfg.augment, cfg.balance, cfg.copies, cfg.shard_size,
                                                          cfg.seed, cfg.max_pixels)
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    category = train["category"] if "category" in train else None
    bins = bin_labels(train["fg_fraction"], balance.edges, category)
    weights = target_weights(bins, balance.weights)
    plan = oversample_plan(bins, weights, copies, balance.max_repeat, seed)

    max_side = 3 * aug.size  # enough resolution for the tightest crop
    cache = {i: load_pair(row, max_side, max_pixels)
             for i, row in tqdm(train.iterrows(), total=len(train), desc="load train", leave=False)}
    shown = set(np.linspace(0, len(plan) - 1, 24).round().astype(int).tolist())
    out_masks, samples = [], []

    drafted = (train["mask_origin"] == DRAFT).to_numpy() if "mask_origin" in train else np.zeros(len(train), bool)

    def train_records(from_drafts: bool):
        for k, i in enumerate(tqdm(plan, desc="augment", leave=False)):
            if drafted[i] != from_drafts:
                continue
            # One generator per output copy, keyed by its position: reproducible, order-free.
            rng = np.random.default_rng([seed, k])
            donor = cache[int(rng.integers(len(train)))] if len(train) > 1 else None
            image, mask = augment_pair(rng, *cache[i], aug, donor)
            out_masks.append(mask)  # what the report needs, kept while the shards are written
            if k in shown:
                samples.append((f"{train.loc[i, 'name']}#{k}", image, mask))
            yield f"{train.loc[i, 'name']}#{k}", image, mask

    # A person's masks and the drafts in shards of their own: training weighs the two (train.draft_weight).
    counts = {"train": len(write_shards(train_records(False), out_dir, "train", shard_size))}
    if drafted.any():
        counts[DRAFT] = len(write_shards(train_records(True), out_dir, DRAFT, shard_size))
    for split in ("val", "test"):
        rows = manifest[manifest["split"] == split]
        records = ((r["name"], *resize_pair(*load_pair(r, max_side, max_pixels), aug.size)) for _, r in rows.iterrows())
        counts[split] = len(write_shards(records, out_dir, split, shard_size))

    fg_share, pos_weight = positive_weight(out_masks)
    stats = {"size": aug.size, "pos_weight": pos_weight, "fg_pixel_share": fg_share,
             "n": {"train": int((~drafted[plan]).sum()), DRAFT: int(drafted[plan].sum()),
                   **{s: int((manifest["split"] == s).sum()) for s in ("val", "test")}},
             "shards": counts}
    before, after = bins.value_counts(normalize=True), pd.Series([bins[i] for i in plan]).value_counts(normalize=True)
    table = pd.DataFrame({"bin": sorted(set(bins))}).assign(
        before=lambda d: d["bin"].map(before).fillna(0.0),
        requested=lambda d: d["bin"].map(weights).fillna(0.0),
        after=lambda d: d["bin"].map(after).fillna(0.0))
    picture = grid([overlay(img, m) for _, img, m in samples], [n for n, _, _ in samples], cols=6)
    shards = f"{counts['train'] + counts.get(DRAFT, 0)} shards ({stats['n'][DRAFT]} of them of unreviewed drafts)"
    log.info("train: %d images -> %d augmented copies in %s; %s", len(train), len(plan), shards,
             f"val {stats['n']['val']}, test {stats['n']['test']}; pos_weight {pos_weight:.2f}")
    return stats, table, picture
