"""Masks a person drew that are probably wrong: each is compared with a model's mask of its photo, and those that
disagree with it far more than the others do are the first a person should look at (a mask of another photo, a
stale annotation, the background marked instead of the subject).

A report, never a gate: nothing is dropped or changed without a person. `validate` lists them in its report and
the Data Docs; `bgremoval suspects FOLDER` ranks a folder's masks; `bgremoval label push --suspects` sends the
worst to Label Studio, where a person checks them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bgremoval.data.masks import load_mask
from bgremoval.images import ImageReadError, load_rgb
from bgremoval.labelling.drafts import Predictor, disagreement

log = logging.getLogger(__name__)

COLUMNS = ["name", "rank", "disagreement", "image_path", "mask_path", "model"]
RANKING = "suspects.csv"  # in a data folder: its masks ranked, the most suspect first
CONTACT_SHEET = "suspects_worst.png"


def score_masks(rows: pd.DataFrame, predict: Predictor, model: str, max_pixels: int,
                progress: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Each row's disagreement (1 - IoU at 0.5) between its mask and the model's mask of its photo, ranked most
    suspect first (COLUMNS); and the rows that could not be read, each with the reason. `rows` are manifest rows
    (their mask is read as prepare recorded it)."""
    from tqdm import tqdm

    out, unread = [], []
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="suspect masks", unit="mask", leave=False,
                       disable=not progress or len(rows) < 2):
        try:
            image = load_rgb(Path(row["image_path"]), max_pixels)
            mask = load_mask(row, max_pixels)
        except ImageReadError as exc:
            unread.append(f"{row['name']}: {exc}")
            continue
        if mask.shape != image.shape[:2]:
            unread.append(f"{row['name']}: its mask is {mask.shape[1]}x{mask.shape[0]}, its photo "
                          f"{image.shape[1]}x{image.shape[0]}")
            continue
        out.append({"name": row["name"], "disagreement": disagreement(mask.astype(np.float32) / 255, predict(image)),
                    "image_path": row["image_path"], "mask_path": row["mask_path"], "model": model})
    return rank(pd.DataFrame(out, columns=[c for c in COLUMNS if c != "rank"])), unread


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """Rows most suspect first (ties by name), numbered from 1."""
    ordered = table.sort_values(["disagreement", "name"], ascending=[False, True], kind="mergesort")
    ordered = ordered.reset_index(drop=True)
    ordered.insert(1, "rank", np.arange(1, len(ordered) + 1))
    return ordered[COLUMNS]


def flag_above(disagreements: pd.Series, z: float) -> float:
    """The disagreement above which a mask is suspect: a modified z-score (0.6745 (x - median) / MAD, Iglewicz and
    Hoaglin) over z. Median and MAD are relative to the folder's own masks, so a model that knows this kind of
    photo less well does not flag them all, and they stay put where a few masks are far off (a quartile rule's
    spread grows with them). Never above 1, the largest disagreement there is."""
    if disagreements.empty:
        return 1.0
    values = disagreements.to_numpy(dtype=float)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return float(min(1.0, median + z * mad / 0.6745))


def contact_sheet(ranking: pd.DataFrame, n: int, predict: Predictor, max_pixels: int, out: Path,
                  tile: int = 200) -> int:
    """The n most suspect pairs, one per row: the photo, the person's mask over it, the model's mask over it;
    how many pairs were drawn."""
    from bgremoval.data.masks import resize_mask
    from bgremoval.pictures import grid, overlay, square

    worst = ranking.head(n)
    tiles, labels = [], []
    for row in worst.itertuples():
        image = load_rgb(Path(row.image_path), max_pixels)
        mask = load_mask(Path(row.mask_path), max_pixels)
        if mask.shape != image.shape[:2]:  # a scaled mask that prepare.resize_masks resizes
            mask = resize_mask(mask, image.shape[1], image.shape[0], hard=False)
        model = np.round(np.clip(predict(image), 0, 1) * 255).astype(np.uint8)
        tiles += [square(image), square(overlay(image, mask)), square(overlay(image, model))]
        labels += [f"{row.rank}. {row.name} d={row.disagreement:.3f}", "its mask", f"{row.model}'s mask"]
    if not tiles:
        return 0
    grid(tiles, labels, cols=3, tile=tile).save(out)
    return len(worst)
