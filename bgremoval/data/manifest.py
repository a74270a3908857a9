"""The manifest: one row per image/mask pair, with what validation and training need to know."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from bgremoval.data.content import contrast, perceptual_hash
from bgremoval.data.masks import MaskChoices, describe_mask, is_jpeg, mask_fit
from bgremoval.images import IMAGE_EXTENSIONS, ImageReadError, open_image, sha256_file

# Who made a pair's mask: a person drew or checked it (masks/), or a model drafted it and nobody checked it yet
# (drafts/, or a file in masks/ that still carries the draft tag). val and test are scored on a person's only.
PERSON, DRAFT = "person", "draft"
DRAFT_TAG = "bgremoval-draft"  # the PNG text key `bgremoval draft` writes (bgremoval.labelling.folders)

log = logging.getLogger(__name__)

# Column order of the manifest; numeric columns are float so a failed decode can be NaN.
COLUMNS = [
    "name",
    "image_path",
    "mask_path",
    "width",
    "height",
    "channels",
    "image_mode",
    "mask_width",
    "mask_height",
    "mask_mode",
    "mask_kind",
    "mask_noise",
    "mask_fit",
    "mask_resize",
    "mask_origin",
    "fg_fraction",
    "image_contrast",
    "image_hash",
    "content_hash",
    "image_error",
    "mask_error",
    "group",
    "split",
]

_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def list_images(folder: Path, root: Path | None = None) -> dict[str, Path]:
    """Image files in a folder by base name; two files with one base name is an error, and so is a
    file link that resolves outside `root` (the data folder) and the folder itself: the pipeline reads
    only what the user put there (images/ or masks/ may themselves link to another disk)."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder. A data folder needs images/ and masks/ with files "
            "paired by base name (e.g. images/cat_001.jpg + masks/cat_001.png)."
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in found:
            raise ValueError(
                f"{found[path.stem]} and {path} share the base name {path.stem!r}; "
                "pairs are matched by base name, so rename or remove one of them"
            )
        found[path.stem] = path
    if root is not None:
        inside = (Path(root).resolve(), folder.resolve())
        outside = [f"{p} -> {p.resolve()}" for p in found.values()
                   if not any(p.resolve().is_relative_to(d) for d in inside)]
        if outside:
            raise ValueError(
                f"{len(outside)} file(s) in {folder} link outside the data folder {root}: {outside[:5]}. "
                "Copy the files into the folder (or link within it) and run again."
            )
    return found


def pair_files(data_dir: Path) -> list[tuple[str, Path | None, Path | None]]:
    """(name, image, mask) for every base name in images/ or masks/, orphans included."""
    images = list_images(Path(data_dir) / "images", root=data_dir)
    masks = list_images(Path(data_dir) / "masks", root=data_dir)
    if not images and not masks:
        raise FileNotFoundError(f"{data_dir}: images/ and masks/ hold no image files")
    return [(name, images.get(name), masks.get(name)) for name in sorted(images.keys() | masks.keys())]


def with_drafts(pairs: list[tuple[str, Path | None, Path | None]], data_dir: Path) -> list[tuple[str, Path | None, Path | None]]:
    """The pairs with each photo that has no mask paired with its draft in data_dir/drafts/, if it has one."""
    folder = Path(data_dir) / "drafts"
    drafts = list_images(folder, root=data_dir) if folder.is_dir() else {}
    return [(name, image, drafts.get(name) if mask is None and image is not None else mask)
            for name, image, mask in pairs]


def drafted_by(mask: Path) -> str | None:
    """The model a mask file's draft tag names, or None for a file without one (a person's mask, or a file that
    cannot be read: mask_error reports that)."""
    from PIL import Image

    try:
        with Image.open(mask) as img:
            return (getattr(img, "text", None) or {}).get(DRAFT_TAG)
    except (OSError, ValueError):
        return None


def mask_origin(mask: Path) -> str:
    """PERSON, or DRAFT for a mask a model drafted (its PNG carries the draft tag, wherever the file lies)."""
    return PERSON if drafted_by(mask) is None else DRAFT


def unlabelled_files(folder: Path) -> list[tuple[str, Path, None]]:
    """(name, image, None) for every photo of a folder of photos without masks (its images/, or the folder)."""
    folder = Path(folder)
    images = folder / "images" if (folder / "images").is_dir() else folder
    found = list_images(images, root=folder)
    if not found:
        raise FileNotFoundError(f"{folder}: no image files (prepare.unlabelled names a folder of photos)")
    return [(name, path, None) for name, path in sorted(found.items())]


def describe_pair(name: str, image: Path | None, mask: Path | None, max_pixels: int,
                  choices: MaskChoices) -> dict:
    """One manifest row; decode problems are recorded in image_error/mask_error, not raised. The mask's
    kind, its JPEG noise, how its size fits the photo's (mask_fit: same | scaled | different) and whether
    readers resize it to the photo (mask_resize: scaled, with prepare.resize_masks on) are recorded too."""
    row: dict = {c: None for c in COLUMNS}
    row.update(name=name, image_path=_str(image), mask_path=_str(mask), mask_resize=False,
               mask_origin=None if mask is None else mask_origin(mask))
    for key in ("width", "height", "channels", "mask_width", "mask_height", "mask_noise", "fg_fraction", "image_contrast"):
        row[key] = np.nan
    if image is not None:
        try:
            img = open_image(image, max_pixels)
            row.update(
                width=img.width,
                height=img.height,
                image_mode=img.mode,
                channels=_CHANNELS.get(img.mode, np.nan),
                image_contrast=contrast(img),  # a blank photo (validate.min_contrast)
                image_hash=perceptual_hash(img),  # the same picture under another name (prepare.near_copy_distance)
                content_hash=sha256_file(image),
            )
        except ImageReadError as exc:
            row["image_error"] = str(exc)
    if mask is not None:
        try:
            info = describe_mask(open_image(mask, max_pixels), is_jpeg(mask), choices)
            row.update(
                mask_width=info.width,
                mask_height=info.height,
                mask_mode=info.mode,
                mask_kind=info.kind,
                mask_noise=info.noise,
                fg_fraction=info.fg_fraction,
            )
        except ImageReadError as exc:
            row["mask_error"] = str(exc)
    if row["image_error"] is None and row["mask_error"] is None and image is not None and mask is not None:
        fit = mask_fit(row["width"], row["height"], row["mask_width"], row["mask_height"])
        row.update(mask_fit=fit, mask_resize=fit == "scaled" and choices.resize)
    return row


def build_manifest(pairs: Iterable[tuple[str, Path | None, Path | None]], max_pixels: int,
                   choices: MaskChoices) -> pd.DataFrame:
    """Describe every pair; group and split columns are left empty for the splitter. `choices`: prepare's
    for JPEG and scaled masks (params.yaml prepare.jpeg_masks, prepare.resize_masks)."""
    rows = [describe_pair(name, image, mask, max_pixels, choices) for name, image, mask in pairs]
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["mask_resize"] = df["mask_resize"].astype(bool)
    n_bad = int(df["image_error"].notna().sum() + df["mask_error"].notna().sum())
    if n_bad:
        log.warning("%d files could not be decoded; validation will list them", n_bad)
    return df


def resolve_source(source: str, sample_dir: Path) -> Path:
    """The data folder prepare reads: the built-in sample's folder, or the user's."""
    return Path(sample_dir) if source == "sample" else Path(source).expanduser()


def _str(path: Path | None) -> str | None:
    return None if path is None else Path(path).as_posix()


def add_rows(manifest: pd.DataFrame, extra: pd.DataFrame, split: str, groups: pd.Series) -> pd.DataFrame:
    """The manifest with rows that the splitter does not place (reference or unlabelled photos) appended."""
    return pd.concat([manifest, extra.assign(group=groups.to_numpy(), split=split)], ignore_index=True)
