"""The serving set-up, chosen on the val split with the weights that will be served: the input size,
the refinement of the mask, and int8 or float32. Test plays no part; the evaluate stage scores the result."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bgremoval.data.masks import load_mask
from bgremoval.export.onnx import export_checked, has_onnx_export
from bgremoval.export.quantize import quantize_int8
from bgremoval.images import load_rgb
from bgremoval.scoring.metrics import HIGHER_IS_BETTER, ImageScores, score_image, summarise
from bgremoval.scoring.paired import PER_IMAGE, paired_loss, photo_losses
from bgremoval.scoring.score import score
from bgremoval.serving.config import ServingConfig
from bgremoval.serving.refine import Predictor, Refine, combine, mirrored_prediction, refined
from bgremoval.serving.runtime import KerasSegmenter, OnnxSegmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineChoices:
    """Which refinements export.refine lets val choose from."""

    flip: list[bool]
    main_object: list[bool]
    sharpen: list[float]
    tolerance: float      # IoU within this of the best counts as as good

    def grid(self) -> list[Refine]:
        """Every combination, each once."""
        if not (self.flip and self.main_object and self.sharpen):
            raise ValueError("export.refine: flip, main_object and sharpen must each list at least one choice "
                             "(e.g. flip: [false], main_object: [false], sharpen: [1.0] for no refinement)")
        return list(dict.fromkeys(Refine(bool(f), bool(m), float(k))
                                  for f in self.flip for m in self.main_object for k in self.sharpen))


@dataclass(frozen=True)
class SizeChoice:
    """params.yaml export.size_choice: when val lets a smaller (faster) size be served than the larger ones."""

    metrics: list[str]   # per-photo scores, averaged per photo into what a smaller size may lose
    tolerance: float     # at most this much, against every larger size
    confidence: float    # of the paired bootstrap's interval; its upper end bounds the loss
    resamples: int

    def __post_init__(self) -> None:
        if not self.metrics or not set(self.metrics) <= set(PER_IMAGE):
            raise ValueError(f"export.size_choice.metrics must list per-photo scores out of {', '.join(PER_IMAGE)}; "
                             f"got {self.metrics}")
        if not 0 < self.confidence < 1 or self.resamples < 1:
            raise ValueError("export.size_choice: confidence must lie between 0 and 1 and resamples be at least 1; "
                             f"got {self.confidence} and {self.resamples}")

    def rule(self) -> str:
        return (f"the smallest size whose loss against every larger one (per val photo, the mean of "
                f"{' and '.join(self.metrics)}) is at most {self.tolerance} at the upper end of the "
                f"{self.confidence:.0%} interval of a paired bootstrap over the val photos "
                f"({self.resamples} resamples)")


@dataclass(frozen=True)
class ExportConfig:
    """params.yaml export:."""

    runtime: str                 # onnxruntime | keras
    sizes: list[int]             # serving sizes val chooses from
    size_choice: SizeChoice
    refine: RefineChoices
    metric: str                  # what the int8 check compares
    onnx_tolerance: float
    quantize: str                # int8 | none
    calibration_images: int
    max_int8_loss: float
    int8_outlier_ratio: float

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> "ExportConfig":
        return cls(**{**section, "size_choice": SizeChoice(**section["size_choice"]),
                      "refine": RefineChoices(**section["refine"])})


@dataclass(frozen=True)
class ServeSettings:
    """params.yaml serve: what the served model is logged with besides export's choices."""

    max_pixels: int
    max_request_mb: float
    defaults: dict[str, Any]


@dataclass(frozen=True)
class ExportJob:
    """The export stage's settings, from the params.yaml keys dvc.yaml declares for it."""

    export: ExportConfig
    serve: ServeSettings
    served_dir: Path             # paths.served: the folder the served file and serving.json are written to
    onnx_template: str | None    # model.onnx_path: rembg's u2netp graph (None: the installed wheel's)
    max_pixels: int              # prepare.max_pixels: val and calibration images are read at most this large
    seed: int                    # base.seed: the size choice's bootstrap draws

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ExportJob":
        return cls(export=ExportConfig.from_params(params["export"]), serve=ServeSettings(**params["serve"]),
                   served_dir=Path(params["paths"]["served"]), onnx_template=params["model"]["onnx_path"],
                   max_pixels=params["prepare"]["max_pixels"], seed=int(params["base"]["seed"]))


def choose_size(rows: pd.DataFrame, predictor_at: Callable[[int], Predictor], sizes: Sequence[int], max_pixels: int, *,
                choice: SizeChoice, seed: int) -> tuple[int, dict[int, dict[str, float]], dict[int, dict[str, Any]]]:
    """The size to serve, every size's val summary, and each smaller size's losses against the larger ones.

    A larger input is the quality default; a smaller, faster size is served only where val is confident it
    gives up little: against every larger size, its per-photo loss (the mean of `choice.metrics`) has a
    paired bootstrap interval whose upper end is at most `choice.tolerance`. The smallest such size wins;
    the largest always qualifies. A difference val cannot tell from noise buys no speed, and a larger size
    that val finds clearly worse does not hold a smaller one back. Each size is scored at the images' own
    resolution; one size listed is taken without scoring."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"export.sizes must list positive sizes; got {list(sizes)}")
    if len(sizes) == 1:
        return sizes[0], {}, {}
    if rows.empty:
        raise ValueError("export.sizes: the val split is empty, so there is nothing to choose the size on")
    per_photo = {s: score(rows, predictor_at(s), max_pixels, progress=f"val at {s}")[1] for s in sizes}
    size, margins = pick_size({s: {m: [getattr(x, m) for x in per_photo[s]] for m in choice.metrics} for s in sizes},
                              choice, seed)
    return size, {s: summarise(scores) for s, scores in per_photo.items()}, margins


def pick_size(per_photo: dict[int, dict[str, Sequence[float]]], choice: SizeChoice,
              seed: int) -> tuple[int, dict[int, dict[str, Any]]]:
    """choose_size's rule on scores already taken: per size, each of `choice.metrics` per val photo (the same
    photos in the same order for every size). The size, and each smaller size's losses against the larger."""
    sizes = sorted(per_photo)
    photos = len(per_photo[sizes[0]][choice.metrics[0]])
    margins: dict[int, dict[str, Any]] = {}
    for s in sizes[:-1]:
        against = {}
        for larger in (L for L in sizes if L > s):
            loss = paired_loss(photo_losses(choice.metrics, per_photo[larger], per_photo[s]),
                               confidence=choice.confidence, resamples=choice.resamples, seed=seed)
            against[str(larger)] = {"mean": loss.mean, "lower": loss.lower, "upper": loss.upper}
        margins[s] = {"photos": photos, "within": all(a["upper"] <= choice.tolerance for a in against.values()),
                      "loss_against": against}
    return min([s for s, margin in margins.items() if margin["within"]] + [sizes[-1]]), margins


def choose_refine(rows: pd.DataFrame, predict: Predictor, choices: Sequence[Refine], max_pixels: int,
                  tolerance: float) -> tuple[Refine, dict[Refine, dict[str, float]]]:
    """IoU decides what the mask covers: the cheapest choice (fewest forward passes) within `tolerance` of
    the best val IoU, and of those the lowest MAE (sharpening moves MAE, never IoU). Each image is
    predicted once (and once mirrored if any choice flips). One choice is taken without scoring."""
    from tqdm import tqdm

    choices = list(dict.fromkeys(choices))
    if len(choices) == 1:
        return choices[0], {}
    if rows.empty:
        raise ValueError("export.refine: the val split is empty, so there is nothing to choose the refinement on")
    any_flip = any(c.flip for c in choices)
    scores: dict[Refine, list[ImageScores]] = {c: [] for c in choices}
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="val refinements", unit="image", leave=False):
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(row, max_pixels).astype(np.float64) / 255
        plain = predict(image)
        mirrored = mirrored_prediction(predict, image) if any_flip else None
        for choice in choices:
            scores[choice].append(score_image(combine(plain, mirrored, choice), truth))
    summaries = {c: summarise(s) for c, s in scores.items()}
    best = max(m["iou"] for m in summaries.values())
    close = [c for c in choices if summaries[c]["iou"] >= best - tolerance]
    return min(close, key=lambda c: (c.cost, summaries[c]["mae"])), summaries


def int8_loss(metric: str, f32: dict[str, float], int8: dict[str, float]) -> float:
    """How much worse int8 is on `metric` (negative: better)."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"export.metric {metric!r} is not one of {', '.join(HIGHER_IS_BETTER)}")
    return (1.0 if HIGHER_IS_BETTER[metric] else -1.0) * (f32[metric] - int8[metric])


def export_served(model, model_file: Path, *, val: pd.DataFrame, calibration: pd.DataFrame,
                  job: ExportJob) -> tuple[ServingConfig, dict[str, Any]]:
    """Write the served file and serving.json into job.served_dir; return the config and a report of every choice.
    val chooses the set-up; calibration's images (train's) calibrate int8."""
    cfg, serve, max_pixels = job.export, job.serve, job.max_pixels
    out_dir = Path(job.served_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    report: dict[str, Any] = {}
    images = lambda rows, n: [load_rgb(Path(p), max_pixels) for p in rows["image_path"].head(n)]  # noqa: E731
    if cfg.runtime not in ("onnxruntime", "keras"):
        raise ValueError(f"export.runtime {cfg.runtime!r} is not one of onnxruntime, keras")
    onnx = cfg.runtime == "onnxruntime" and has_onnx_export(model)
    if cfg.runtime == "onnxruntime" and not onnx:
        log.info("model %s has no ONNX export (only networks build_network made have one): it is served with Keras", model.name)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx:
            f32 = Path(tmp) / "model_f32.onnx"
            checks = export_checked(model, f32, sorted(set(cfg.sizes)), images=images(val, 4),
                                    tolerance=cfg.onnx_tolerance, template=job.onnx_template)
            report["onnx_vs_keras"] = [asdict(c) for c in checks]
            network_at = lambda s: OnnxSegmenter(f32, s)  # noqa: E731
        else:
            network_at = lambda s: KerasSegmenter(model, s)  # noqa: E731
        size, by_size, margins = choose_size(val, network_at, cfg.sizes, max_pixels, choice=cfg.size_choice,
                                             seed=job.seed)
        report |= {"size": size, "size_rule": cfg.size_choice.rule(),
                   "val_by_size": {str(s): m for s, m in by_size.items()},
                   "size_margins": {str(s): m for s, m in margins.items()}}
        refine, by_refine = choose_refine(val, network_at(size), cfg.refine.grid(), max_pixels, cfg.refine.tolerance)
        report |= {"refine": refine.name, "val_by_refine": {r.name: m for r, m in by_refine.items()}}
        served, int8 = (f32, False) if onnx else (Path(model_file), False)
        if onnx and cfg.quantize == "int8":
            served, int8, report["int8"] = _choose_int8(
                f32, Path(tmp) / "model_int8.onnx", size=size, refine=refine, val=val,
                calibration=images(calibration, cfg.calibration_images), cfg=cfg, max_pixels=max_pixels)
        elif onnx and cfg.quantize not in ("none", None):
            raise ValueError(f"export.quantize {cfg.quantize!r} is not one of int8, none")
        name = "model.onnx" if onnx else "model.keras"
        shutil.copy(served, out_dir / name)
    config = ServingConfig(runtime="onnxruntime" if onnx else "keras", model_file=name, size=size, refine=refine,
                           int8=int8, max_pixels=serve.max_pixels, max_request_mb=float(serve.max_request_mb),
                           defaults=dict(serve.defaults))
    config.write(out_dir)
    report["served_mb"] = (out_dir / name).stat().st_size / 1e6
    return config, report


def _choose_int8(f32: Path, out: Path, *, size: int, refine: Refine, val: pd.DataFrame, calibration: list[np.ndarray],
                 cfg: ExportConfig, max_pixels: int) -> tuple[Path, bool, dict[str, Any]]:
    """int8 (calibrated at the serving size; convs fed an outlier channel stay float32), kept only if it
    loses at most export.max_int8_loss of export.metric on val against float32, both refined as served."""
    int8, kept_float = quantize_int8(f32, out, calibration, size, float(cfg.int8_outlier_ratio))
    m32 = summarise(score(val, refined(OnnxSegmenter(f32, size), refine), max_pixels, progress="val float32")[1])
    m8 = summarise(score(val, refined(OnnxSegmenter(int8, size), refine), max_pixels, progress="val int8")[1])
    loss = int8_loss(cfg.metric, m32, m8)
    keep = loss <= cfg.max_int8_loss
    reason = (f"int8 {cfg.metric} {m8[cfg.metric]:.4f} against float32 {m32[cfg.metric]:.4f} on val: loss "
              f"{loss:+.4f} {'<=' if keep else '>'} export.max_int8_loss {cfg.max_int8_loss}")
    (log.info if keep else log.warning)("%s: serving %s", reason, "int8" if keep else "float32")
    detail = {"kept": keep, "reason": reason, "val_float32": m32, "val_int8": m8, "nodes_kept_float32": kept_float}
    return (int8 if keep else f32), keep, detail
