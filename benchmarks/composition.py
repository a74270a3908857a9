"""Clean edges, measured by the standard composition test: the plain cut-out, foreground estimation, matting.

    python benchmarks/composition.py [--data DIR ...] [--n 10] [--model MODEL] [--size 320] [--out FOLDER]

Each sample is a photo F with a known soft alpha: a hand-drawn mask from each --data folder (images/ and
masks/ with the same names; default: ccp_dev and davis_train in the data folder beside the project, where they exist), with the photo
scaled to 1 MP and the mask feathered at its edge (Gaussian, --feather px); with no such folder, the two photos
of `make photos` (scikit-learn's sample images) with a synthetic alpha. Nothing of the data is written out.

F is composited onto background A (the flower photo, fitted to cover): I = aF + (1 - a)A. I is cut
out with a predicted alpha -- the true one degraded as a network's soft edge is (down to --size x --size and
back up, bilinear), or with --model a served model's own prediction -- and composited by the served code
(`render`) onto background B (the china photo) with each edge method. The truth is aF + (1 - a)B. Inside the
edge band (true or predicted alpha strictly in (0.02, 0.98), grown 3 px) it reports SAD (the sum over the band of
the RGB mean of |composite - truth| in [0, 1], in thousands, as matting benchmarks do) and MSE (x 10^3), the
alpha's SAD there (matting changes the alpha), and the milliseconds each method adds to a plain composite.

Prints a table and writes composition.json (and a .gitignore that keeps the folder out of git) into --out
(default: reports/composition).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from bgremoval.images import IMAGE_EXTENSIONS  # noqa: E402
from bgremoval.serving.options import options_from  # noqa: E402
from bgremoval.serving.render import EDGE, EDGE_GROW, edge_band, fit_cover, render, warm_up  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
METHODS = {"plain": {"estimate_foreground": False, "matting": False},
           "foreground estimation": {"estimate_foreground": True, "matting": False},
           "matting": {"estimate_foreground": True, "matting": True}}
MEGAPIXEL = 1_000_000


def to_megapixel(image: Image.Image) -> tuple[int, int]:
    scale = (MEGAPIXEL / (image.width * image.height)) ** 0.5
    return round(image.width * scale), round(image.height * scale)


def feathered(mask: Image.Image, sigma: float) -> np.ndarray:
    """A 0/255 mask -> a soft alpha in [0, 1], its edge a Gaussian ramp."""
    return np.clip(ndimage.gaussian_filter(np.asarray(mask, np.float32) / 255, sigma), 0, 1)


def from_folder(folder: Path, n: int, feather: float):
    """n (photo, soft alpha) pairs spread evenly over a folder's sorted images, at 1 MP."""
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    pick = [images[round(i * (len(images) - 1) / max(n - 1, 1))] for i in range(min(n, len(images)))]
    for path in pick:
        photo = Image.open(path).convert("RGB")
        mask = Image.open(folder / "masks" / f"{path.stem}.png").convert("L")
        size = to_megapixel(photo)
        hard = mask.resize(size, Image.Resampling.BILINEAR).point(lambda v: 255 if v >= 128 else 0)
        photo = np.asarray(photo.resize(size, Image.Resampling.BICUBIC))
        yield f"{folder.name}/{path.stem}", photo, feathered(hard, feather)


def photo(name: str) -> np.ndarray:
    """One of the two real photos (china.jpg, flower.jpg) that `make photos` takes out of scikit-learn's wheel."""
    path = Path(sys.prefix) / "share" / "bgremoval" / "photos" / name
    if not path.is_file():
        sys.exit(f"{path} is missing: run `make photos`")
    return np.asarray(Image.open(path).convert("RGB"))


def synthetic(feather: float):
    """The two photos of `make photos`, each with an alpha of a wavy ellipse and a few fine strands at its edge."""
    for name in ("china.jpg", "flower.jpg"):
        photo_ = Image.fromarray(photo(name)).rotate(180)
        size = to_megapixel(photo_)
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        angle = np.arctan2(yy - h / 2, xx - w / 2)
        radius = np.hypot((xx - w / 2) / (0.3 * w), (yy - h / 2) / (0.35 * h))
        inside = radius <= 1 + 0.08 * np.sin(7 * angle)
        strands = (np.abs(np.sin(60 * angle)) < 0.08) & (radius <= 1.15)
        hard = Image.fromarray(((inside | strands) * 255).astype(np.uint8))
        yield f"photos/{name}", np.asarray(photo_.resize(size, Image.Resampling.BICUBIC)), feathered(hard, feather)


def degraded(alpha: np.ndarray, size: int) -> np.ndarray:
    """The alpha as a network at size x size sees it and serving resizes it back: the soft edge of the low
    resolution, no detail finer than it."""
    h, w = alpha.shape
    small = Image.fromarray(alpha, "F").resize((size, size), Image.Resampling.BOX)
    return np.clip(np.asarray(small.resize((w, h), Image.Resampling.BILINEAR)), 0, 1)


def composite(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float32)
    return np.clip(np.round(fg * a + bg * (1 - a)), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", help="folder with images/ and masks/ (repeatable)")
    parser.add_argument("--n", type=int, default=10, help="photos per folder (spread evenly over its sorted names)")
    parser.add_argument("--feather", type=float, default=2.0, help="the true alpha's feather (Gaussian sigma, px at 1 MP)")
    parser.add_argument("--size", type=int, default=320, help="the degraded alpha's resolution (a network's input size)")
    parser.add_argument("--model", help="a served model (models/served, models:/NAME@ALIAS, ...) to predict the alpha")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "composition", help="folder for composition.json")
    args = parser.parse_args()

    folders = args.data if args.data else [f for f in (SHARED / "ccp_dev", SHARED / "davis_train") if f.is_dir()]
    samples = ([s for f in folders for s in from_folder(f, args.n, args.feather)] if folders
               else list(synthetic(args.feather)))
    served = None
    if args.model:
        from bgremoval.serving.load import load

        served = load(args.model)
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())["serve"]["defaults"]
    bg_a, bg_b = photo("flower.jpg"), photo("china.jpg")
    warm_up()

    rows = []
    for name, photo, alpha in samples:
        h, w = alpha.shape
        image = composite(photo, alpha, fit_cover(bg_a, w, h))
        predicted = served(image) if served is not None else degraded(alpha, args.size)
        truth = composite(photo, alpha, fit_cover(bg_b, w, h)).astype(np.float32) / 255
        band = edge_band(alpha, EDGE_GROW) | edge_band(predicted, EDGE_GROW)
        row = {"name": name, "width": w, "height": h, "band_pixels": int(band.sum())}
        for method, switches in METHODS.items():
            opts = options_from({"output": "composite", "background": "image", "bg_image": bg_b, **switches},
                                defaults, 10**9)
            start = time.perf_counter()
            out = np.asarray(render(image, predicted, opts), np.float32) / 255
            ms = (time.perf_counter() - start) * 1000
            alpha_out = np.asarray(render(image, predicted, options_from({"output": "mask", **switches}, defaults, 10**9)),
                                   np.float32) / 255
            err = np.abs(out - truth)[band]
            row[method] = {"sad": float(err.mean(axis=1).sum() / 1000), "mse": float((err ** 2).mean() * 1000),
                           "alpha_sad": float(np.abs(alpha_out - alpha)[band].sum() / 1000),
                           "ms": ms * MEGAPIXEL / (w * h)}
        rows.append(row)
        print(f"{name:<28} band {row['band_pixels']:>7} px  " + "  ".join(
            f"{m}: SAD {row[m]['sad']:.2f} {row[m]['ms']:.0f} ms" for m in METHODS), flush=True)

    summary = {}
    for method in METHODS:
        summary[method] = {key: statistics.mean(r[method][key] for r in rows) for key in ("sad", "mse", "alpha_sad")}
        summary[method]["extra_ms_per_mp"] = statistics.median(r[method]["ms"] - r["plain"]["ms"] for r in rows)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}",
        "command": " ".join(["python", "benchmarks/composition.py", *sys.argv[1:]]),
        "samples": len(rows),
        "sources": [os.path.relpath(f, ROOT) for f in folders] or ["the photos of `make photos` (synthetic alpha)"],
        "predicted_alpha": f"served model {args.model}" if args.model else f"true alpha degraded to {args.size}px",
        "feather_px": args.feather, "band": f"alpha in ({EDGE[0]}, {EDGE[1]}), grown {EDGE_GROW} px",
        "summary": summary, "rows": rows,
    }
    print(f"\n{len(rows)} photos at 1 MP; {report['predicted_alpha']}; errors inside the edge band, means over photos")
    print(f"{'method':<22} | {'SAD (k)':>8} | {'MSE (1e-3)':>10} | {'alpha SAD (k)':>13} | {'extra ms / MP':>13}")
    for method, s in summary.items():
        print(f"{method:<22} | {s['sad']:>8.2f} | {s['mse']:>10.3f} | {s['alpha_sad']:>13.2f} | "
              f"{s['extra_ms_per_mp']:>13.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ".gitignore").write_text("*\n")  # measurements of this machine: never committed
    (args.out / "composition.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'composition.json'}")


if __name__ == "__main__":
    main()
