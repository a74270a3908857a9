"""Draft masks for a folder of photos, ranked by how much correction each probably needs.

The best model at hand drafts: the registry's champion, else stock U²-Net, else stock U²-NetP (or the one
the user names). Each draft gets an uncertainty score from two cheap second looks at the same photo: the
model's mask of the mirrored photo, and a second model's mask. Where the looks disagree, a person most
probably has to correct (benchmarks/draft_ranking.py measures how well the order follows the true error).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bgremoval.images import IMAGE_EXTENSIONS, ImageReadError, load_rgb
from bgremoval.labelling import folders

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (H, W) probability in [0, 1]
STOCK = ("u2net", "u2netp")  # names --model takes for rembg's stock models
COLUMNS = ["name", "rank", "uncertainty", "image_path", "draft_path", "model", "flip", "second", "second_model"]


@dataclass(frozen=True)
class Drafter:
    """The model that drafts, and a second model whose disagreement with it is part of the uncertainty."""

    name: str
    predict: Predictor
    second_name: str | None  # None: no second model at hand
    second: Predictor | None


def stock_model(name: str) -> Predictor:
    """rembg's stock U²-Net or U²-NetP, run as rembg runs it."""
    from bgremoval.scoring.stock import RembgModel
    from bgremoval.weights import find_u2net_onnx, find_u2netp_onnx

    if name not in STOCK:
        raise ValueError(f"{name!r} is not a stock model ({', '.join(STOCK)})")
    return RembgModel(find_u2net_onnx() if name == "u2net" else find_u2netp_onnx())


def registry_has(uri: str, tracking_uri: str | None) -> bool:
    """Whether a models:/NAME@ALIAS resolves in the tracking store, without creating a store that is not there."""
    if tracking_uri and tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        return False
    import mlflow
    from mlflow.exceptions import MlflowException

    name, alias = uri[len("models:/"):].split("@", 1)
    try:
        mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return True


def _u2net_installed() -> bool:
    from bgremoval.weights import WeightsError, find_u2net_onnx

    try:
        find_u2net_onnx()
    except WeightsError:
        return False
    return True


def best_at_hand(champion: str, tracking_uri: str | None) -> str:
    """The best model at hand: `champion` (models:/NAME@champion) if the registry holds it, else stock U²-Net
    (`make u2net`), else stock U²-NetP."""
    if registry_has(champion, tracking_uri):
        return champion
    return "u2net" if _u2net_installed() else "u2netp"


def open_model(model: str, tracking_uri: str | None) -> Predictor:
    """The predictor `model` names: u2net, u2netp, a served folder or an MLflow model URI."""
    if model in STOCK:
        return stock_model(model)
    from bgremoval.serving.load import load

    return load(model, tracking_uri if model.startswith(("models:", "runs:")) else None)


def open_drafter(model: str | None, champion: str, tracking_uri: str | None) -> Drafter:
    """The drafter `model` names (u2net, u2netp, a served folder or an MLflow model URI); without one the best at
    hand (best_at_hand). The second opinion is stock U²-NetP, or U²-Net where U²-NetP drafts."""
    if model is None:
        model = best_at_hand(champion, tracking_uri)
        log.info("drafting with %s (the best model at hand)", model)
    second = "u2netp" if model != "u2netp" else ("u2net" if _u2net_installed() else None)
    return Drafter(model, open_model(model, tracking_uri), second, stock_model(second) if second else None)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def disagreement(mask: np.ndarray, other: np.ndarray) -> float:
    """1 - IoU of two masks at 0.5: 0 where they agree on every pixel, 1 where they share none."""
    return 1.0 - _iou(np.asarray(mask) >= 0.5, np.asarray(other) >= 0.5)


def uncertainty(flip: float, second: float | None) -> float:
    """How much correction a draft probably needs: the mean of the disagreements measured (a draft that
    changes when the photo is mirrored, or that another model draws differently, is probably wrong there)."""
    looks = [flip] + ([] if second is None else [second])
    return float(np.mean(looks))


@dataclass(frozen=True)
class Drafted:
    """What drafting a folder gave: the ranking (drafts.csv's rows, worst first) and the photos skipped, each
    with the reason."""

    ranking: pd.DataFrame
    skipped: list[str]


def photos_to_draft(folder: Path, every: bool) -> list[Path]:
    """The folder's photos (images/) that need a draft: those without a person's mask in masks/, or all."""
    from bgremoval.data.manifest import list_images

    images = Path(folder) / folders.IMAGES
    if not images.is_dir():
        raise FileNotFoundError(f"{folder}: no {folders.IMAGES}/ folder; put the photos in {images}/ "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    photos = list_images(images, root=folder)
    masks = Path(folder) / folders.MASKS
    checked = set(list_images(masks, root=folder)) if masks.is_dir() and not every else set()
    return [path for name, path in sorted(photos.items()) if name not in checked]


def draft_one(drafter: Drafter, image: np.ndarray) -> tuple[np.ndarray, dict[str, float | None]]:
    """A photo's draft (H, W) uint8 and its uncertainty with the looks it is made of."""
    from bgremoval.serving.refine import mirrored_prediction

    prob = drafter.predict(image)
    flip = disagreement(prob, mirrored_prediction(drafter.predict, image))
    second = None if drafter.second is None else disagreement(prob, drafter.second(image))
    draft = np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)
    return draft, {"uncertainty": uncertainty(flip, second), "flip": flip, "second": second}


def draft_folder(folder: Path, drafter: Drafter, photos: list[Path], max_pixels: int,
                 progress: bool = True) -> Drafted:
    """Draft every photo into FOLDER/drafts/, rank them (most uncertain first) into FOLDER/drafts.csv; photos
    that cannot be read are skipped and named."""
    from tqdm import tqdm

    rows, skipped = [], []
    for path in tqdm(photos, desc="draft", unit="photo", disable=not progress or len(photos) < 2):
        try:
            image = load_rgb(path, max_pixels)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        draft, looks = draft_one(drafter, image)
        target = folders.draft_path(folder, path.stem)
        folders.write_draft(target, draft, drafter.name)
        rows.append({"name": path.stem, "image_path": path.as_posix(), "draft_path": target.as_posix(),
                     "model": drafter.name, "second_model": drafter.second_name, **looks})
    ranking = rank(pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"]))
    ranking.to_csv(Path(folder) / folders.RANKING, index=False, float_format="%.6f")
    return Drafted(ranking, skipped)


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """Rows most uncertain first (ties by name, so the order is reproducible), numbered from 1."""
    ordered = table.sort_values(["uncertainty", "name"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
    ordered.insert(1, "rank", np.arange(1, len(ordered) + 1))
    return ordered[COLUMNS]


def contact_sheet(ranking: pd.DataFrame, n: int, max_pixels: int, out: Path, tile: int = 200) -> int:
    """The n worst-ranked drafts over their photos, in rank order, labelled with rank, name and uncertainty;
    how many were drawn."""
    from bgremoval.pictures import grid, overlay, square

    worst = ranking.head(n)
    if worst.empty:
        return 0
    tiles = [square(overlay(load_rgb(Path(row.image_path), max_pixels), folders.read_draft(Path(row.draft_path))))
             for row in worst.itertuples()]
    labels = [f"{row.rank}. {row.name} u={row.uncertainty:.3f}" for row in worst.itertuples()]
    grid(tiles, labels, cols=min(4, len(tiles)), tile=tile).save(out)
    return len(tiles)
