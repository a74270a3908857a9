"""Shared fixtures: tiny synthetic image/mask folders and manifests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.manifest import build_manifest, pair_files
from bgremoval.split import assign_groups, split_groups

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def write_pair(folder: Path, name: str, size=(32, 24), fg=0.3, ext=".png", seed=0) -> tuple[Path, Path]:
    """One image/mask pair: a random RGB image and a mask whose top rows are foreground."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[: max(1, int(round(h * fg))), :] = 255
    image_path, mask_path = folder / "images" / f"{name}{ext}", folder / "masks" / f"{name}.png"
    Image.fromarray(rgb).save(image_path)
    Image.fromarray(mask, mode="L").save(mask_path)
    return image_path, mask_path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A valid folder: 6 groups x 4 frames of 32x24 pairs, distinct content."""
    folder = tmp_path / "data"
    for g in range(6):
        for f in range(4):
            write_pair(folder, f"seq{g}_{f:03d}", seed=g * 10 + f)
    return folder


SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}


def manifest_for(folder: Path, splits=SPLITS, seed=0) -> pd.DataFrame:
    """The manifest prepare would build for a folder."""
    df = build_manifest(pair_files(folder), max_pixels=10_000_000)
    df["group"] = assign_groups(df["name"], r"^(.*)_\d+$")
    df["split"] = split_groups(df["group"], splits, seed)
    return df
