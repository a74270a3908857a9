"""The prepare stage's settings, typed: where the photos come from, how masks are read, how pairs are grouped and
split (params.yaml prepare:, with base.seed, paths.sample_dir and validate.min_contrast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgremoval.data.masks import MaskChoices
from bgremoval.data.sample import SampleSpec


@dataclass(frozen=True)
class PrepareConfig:
    source: str                    # "sample" (the built-in one, drawn into sample_dir) or a folder
    sample_dir: Path
    sample: SampleSpec
    reference: Path | None         # photos of other kinds with masks: the gate's guard against forgetting
    unlabelled: Path | None        # photos without masks, for distill
    drafts: bool                   # photos without a person's mask train on their drafts
    split_file: Path | None        # name,split rows that fix the splits
    group_pattern: str | None      # the first capture group of a base name names its group
    near_copy_distance: int        # perceptual-hash bits within which two photos are one picture
    min_contrast: float            # blank photos (below it) are left out of the near-copy search
    splits: dict[str, float]
    max_pixels: int
    masks: MaskChoices
    seed: int

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "PrepareConfig":
        cfg = params["prepare"]
        folder = lambda key: Path(cfg[key]).expanduser() if cfg[key] else None  # noqa: E731
        return cls(source=cfg["source"], sample_dir=Path(params["paths"]["sample_dir"]),
                   sample=SampleSpec(**cfg["sample"]), reference=folder("reference"), unlabelled=folder("unlabelled"),
                   drafts=bool(cfg["drafts"]), split_file=folder("split_file"), group_pattern=cfg["group_pattern"],
                   near_copy_distance=cfg["near_copy_distance"], min_contrast=params["validate"]["min_contrast"],
                   splits=cfg["splits"], max_pixels=cfg["max_pixels"],
                   masks=MaskChoices(jpeg=cfg["jpeg_masks"], resize=cfg["resize_masks"]), seed=params["base"]["seed"])
