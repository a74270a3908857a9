"""Masks as public data sets ship them, through prepare's manifest and the validation suite; prints a table.

    python benchmarks/mask_formats.py [--scenes N] [--frames N]

Draws the built-in sample (bgremoval.data.sample, soft 8-bit masks) once, then re-saves its masks in each
layout a downloaded data set may have: 0/255, 1-bit, 0/1-valued, palette, 16-bit, RGBA alpha, RGB grey,
JPEG of a 0/255 mask (read thresholded or soft), the same at half size, and a folder where some photos are
stored rotated; plus ambiguous masks (colour, empty). Each folder goes through the manifest prepare builds (with
params.yaml's prepare: choices, and the other value of the switch where it matters) and the Great
Expectations suite with params.yaml's validate: thresholds. Per layout: the pairs, the mask kinds
found, how far each mask's foreground fraction is from the sample's own, the JPEG noise, the verdict
and the pairs it names. Everything happens in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from bgremoval.data.manifest import build_manifest, pair_files  # noqa: E402
from bgremoval.data.masks import MaskChoices  # noqa: E402
from bgremoval.data.sample import SampleSpec, generate_sample  # noqa: E402
from bgremoval.data.split import assign_groups, split_groups  # noqa: E402
from bgremoval.data.validation import Thresholds, add_derived_columns, run_suite, summarise  # noqa: E402

ROTATED = 3  # photos stored rotated in the rotated layouts


def _palette(alpha: np.ndarray) -> Image.Image:
    indices = (alpha >= 128).astype(np.uint8)
    img = Image.frombytes("P", (alpha.shape[1], alpha.shape[0]), indices.tobytes())
    img.putpalette([0, 0, 0, 128, 0, 0] + [224, 224, 192] * 254)  # VOC's first colours
    return img


def _hard(alpha: np.ndarray) -> np.ndarray:
    return np.where(alpha >= 128, 255, 0).astype(np.uint8)


def _half(alpha: np.ndarray) -> Image.Image:
    h, w = alpha.shape
    return Image.fromarray(_hard(alpha), "L").resize((round(w / 2), round(h / 2)), Image.Resampling.BILINEAR)


def _colour(alpha: np.ndarray) -> Image.Image:
    rgb = np.zeros((*alpha.shape, 3), np.uint8)
    rgb[alpha >= 128] = (192, 32, 32)
    return Image.fromarray(rgb)


Saver = Callable[[np.ndarray, Path], None]
# name: how each mask is saved (alpha, path without suffix)
SAVERS: dict[str, Saver] = {
    "8-bit grey, soft (as drawn)": lambda a, p: Image.fromarray(a, "L").save(p.with_suffix(".png")),
    "8-bit 0/255": lambda a, p: Image.fromarray(_hard(a), "L").save(p.with_suffix(".png")),
    "1-bit PNG": lambda a, p: Image.fromarray(a >= 128).save(p.with_suffix(".png")),
    "8-bit 0/1-valued": lambda a, p: Image.fromarray((a >= 128).astype(np.uint8), "L").save(p.with_suffix(".png")),
    "palette PNG (VOC/DAVIS)": lambda a, p: _palette(a).save(p.with_suffix(".png")),
    "16-bit PNG": lambda a, p: Image.fromarray(a.astype(np.uint16) * 257).save(p.with_suffix(".png")),
    "RGBA cut-outs (alpha)": lambda a, p: Image.fromarray(
        np.dstack([np.full((*a.shape, 3), 128, np.uint8), a]), "RGBA").save(p.with_suffix(".png")),
    "RGB, three equal channels": lambda a, p: Image.fromarray(np.stack([a] * 3, -1)).save(p.with_suffix(".png")),
    "JPEG q85": lambda a, p: Image.fromarray(_hard(a), "L").save(p.with_suffix(".jpg"), quality=85),
    "JPEG q85 at half size": lambda a, p: _half(a).save(p.with_suffix(".jpg"), quality=85),
}


def layouts(prepare: dict) -> list[tuple[str, str, dict]]:
    """(layout, saver, overrides): every layout with params.yaml's choices, and the other value where it matters."""
    out = [(name, name, {}) for name in SAVERS]
    other_jpeg = "soft" if prepare["jpeg_masks"] == "threshold" else "threshold"
    out.insert(out.index(("JPEG q85", "JPEG q85", {})) + 1, ("JPEG q85", "JPEG q85", {"jpeg_masks": other_jpeg}))
    out.append(("JPEG q85 at half size", "JPEG q85 at half size", {"resize_masks": not prepare["resize_masks"]}))
    out.append((f"{ROTATED} photos stored rotated", "8-bit grey, soft (as drawn)", {}))
    out.append((f"{ROTATED} photos rotated, JPEG half size", "JPEG q85 at half size", {"resize_masks": True}))
    out.append(("2 colour masks + 1 empty", "8-bit grey, soft (as drawn)", {}))
    return out


def build_folder(sample: Path, out: Path, layout: str, saver: Saver) -> set[str]:
    """The sample's photos with its masks re-saved; the names of the pairs the layout breaks on purpose."""
    shutil.copytree(sample / "images", out / "images")
    (out / "masks").mkdir(parents=True)
    names = sorted(p.stem for p in (sample / "masks").glob("*.png"))
    for name in names:
        saver(np.asarray(Image.open(sample / "masks" / f"{name}.png")), out / "masks" / name)
    broken: set[str] = set()
    if "rotated" in layout:
        broken = set(names[3::max(1, len(names) // ROTATED)][:ROTATED])
        for name in broken:
            photo = next((out / "images").glob(f"{name}.*"))
            Image.open(photo).transpose(Image.Transpose.ROTATE_90).save(photo, quality=95)
    if "colour" in layout:
        broken = {names[1], names[-2], names[5]}
        for name in (names[1], names[-2]):
            _colour(np.asarray(Image.open(sample / "masks" / f"{name}.png"))).save(out / "masks" / f"{name}.png")
        Image.new("L", Image.open(sample / "masks" / f"{names[5]}.png").size, 0).save(out / "masks" / f"{names[5]}.png")
    return broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=6, help="sample scenes (groups)")
    parser.add_argument("--frames", type=int, default=4, help="frames per scene")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    prepare, seed = params["prepare"], params["base"]["seed"]
    spec = SampleSpec(**{**prepare["sample"], "n_scenes": args.scenes, "frames_per_scene": args.frames})
    thresholds = Thresholds.from_params(params)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample"
        generate_sample(sample, spec, seed)
        truth = {p.stem: np.asarray(Image.open(p)).mean() / 255 for p in (sample / "masks").glob("*.png")}
        for i, (layout, saver, overrides) in enumerate(layouts(prepare)):
            folder = Path(tmp) / f"layout{i}"
            broken = build_folder(sample, folder, layout, SAVERS[saver])
            choices = {"jpeg_masks": prepare["jpeg_masks"], "resize_masks": prepare["resize_masks"], **overrides}
            df = build_manifest(pair_files(folder), prepare["max_pixels"],
                                MaskChoices(jpeg=choices["jpeg_masks"], resize=choices["resize_masks"]))
            df["group"] = assign_groups(df["name"], prepare["group_pattern"])
            df["split"] = split_groups(df["group"], prepare["splits"], seed)
            report = summarise(run_suite(add_derived_columns(df, thresholds), thresholds, None))
            named = set().union(*[{u["name"] for u in f.get("unexpected", [])} for f in report["failures"]])
            fg_err = (df["fg_fraction"] - df["name"].map(truth)).abs()
            clean = ~df["name"].isin(broken)
            rows.append({
                "layout": layout,
                "switches": ", ".join(f"{k}={v}".replace("True", "true").replace("False", "false")
                                      for k, v in overrides.items()) or "params.yaml",
                "pairs": len(df),
                "kinds": ", ".join(f"{k} {n}" for k, n in df["mask_kind"].value_counts().items()),
                "fg_err": f"{fg_err[clean].max():.3f}",
                "noise": f"{df['mask_noise'].mean():.2%}" if df["mask_noise"].notna().any() else "-",
                "result": ("passed" if report["success"] else
                           "failed: " + "; ".join(_short(f["guards"]) for f in report["failures"])),
                "named": _named(named, broken, len(df)),
            })

    print(f"{spec.n_scenes * spec.frames_per_scene} pairs of the built-in sample ({spec.min_size}-{spec.max_size} px) "
          f"per layout; params.yaml: jpeg_masks={prepare['jpeg_masks']}, "
          f"resize_masks={str(prepare['resize_masks']).lower()}")
    print("fg err: largest |foreground fraction - the drawn mask's| over the pairs not broken on purpose "
          "(0/255 layouts lose the soft edge); noise: JPEG pixels neither near 0 nor near 255\n")
    header = ["layout", "switches", "pairs", "mask kinds found", "fg err", "JPEG noise", "validation",
              "pairs named"]
    keys = ["layout", "switches", "pairs", "kinds", "fg_err", "noise", "result", "named"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


def _short(guard: str) -> str:
    return guard.split(":")[0].split(" (")[0]


def _named(named: set[str], broken: set[str], total: int) -> str:
    if not named:
        return "none"
    if named == broken:
        return f"{len(named)}, exactly those broken: {', '.join(sorted(named))}"
    if len(named) == total:
        return f"all {total}"
    return f"{len(named)}: {', '.join(sorted(named)[:4])}{' ...' if len(named) > 4 else ''}"


if __name__ == "__main__":
    main()
