"""Where a data folder keeps what a person drew or checked, and what a model drafted.

    FOLDER/images/NAME.jpg    the photos
    FOLDER/masks/NAME.png     masks drawn or checked by a person: the only ones val and test are scored on
    FOLDER/drafts/NAME.png    a model's drafts (soft, 0-255), each tagged as a draft in its PNG text
    FOLDER/drafts.csv         the drafts ranked, most correction probably needed first
    FOLDER/drafts_worst.png   a contact sheet of the worst-ranked drafts
    FOLDER/suspects.csv       the masks a person drew, ranked by disagreement with a model (`bgremoval suspects`)
    FOLDER/suspects_worst.png a contact sheet of the most suspect: photo, its mask, the model's
    FOLDER/replaced/NAME.png  a mask that a checked one from Label Studio replaced, kept

A draft never lives in masks/; one copied there by hand still carries its tag, and prepare reads it as a
draft (`is_draft`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from bgremoval.data.manifest import DRAFT_TAG, drafted_by

IMAGES, MASKS, DRAFTS, REPLACED = "images", "masks", "drafts", "replaced"
RANKING = "drafts.csv"
CONTACT_SHEET = "drafts_worst.png"


def drafts_dir(folder: Path) -> Path:
    return Path(folder) / DRAFTS


def draft_path(folder: Path, name: str) -> Path:
    return drafts_dir(folder) / f"{name}.png"


def mask_path(folder: Path, name: str) -> Path:
    return Path(folder) / MASKS / f"{name}.png"


def write_draft(path: Path, mask: np.ndarray, model: str) -> None:
    """An 8-bit grey PNG of a draft (H, W) uint8, tagged (DRAFT_TAG) with the model that drafted it; written
    atomically."""
    info = PngImagePlugin.PngInfo()
    info.add_text(DRAFT_TAG, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    Image.fromarray(np.asarray(mask, np.uint8), mode="L").save(part, format="PNG", pnginfo=info)
    part.replace(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """An 8-bit grey PNG of a mask a person drew or checked (no draft tag); written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    Image.fromarray(np.asarray(mask, np.uint8), mode="L").save(part, format="PNG")
    part.replace(path)


def is_draft(path: Path) -> bool:
    """Whether a mask file is a model's draft (tagged), wherever it lies."""
    return drafted_by(path) is not None


def read_draft(path: Path) -> np.ndarray:
    """A draft as (H, W) uint8."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L"))


def replace_mask(folder: Path, name: str, mask: np.ndarray) -> Path | None:
    """Write a person's mask as FOLDER/masks/NAME.png; a different mask of that name it replaces (any format) is
    moved to FOLDER/replaced/ first, so nothing a person drew is lost and masks/ keeps one file per name. Where
    the old one went, or None."""
    import glob

    from bgremoval.images import IMAGE_EXTENSIONS

    target, kept = mask_path(folder, name), None
    for path in (Path(folder) / MASKS).glob(f"{glob.escape(name)}.*"):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path == target and _same(path, mask):
            return None  # pulled again unchanged
        kept = Path(folder) / REPLACED / path.name
        kept.parent.mkdir(parents=True, exist_ok=True)
        path.replace(kept)
    write_mask(target, mask)
    return kept


def _same(path: Path, mask: np.ndarray) -> bool:
    try:
        with Image.open(path) as img:
            return img.mode == "L" and np.array_equal(np.asarray(img), mask)
    except OSError:
        return False
