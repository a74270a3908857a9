"""Where the edge errors are: how far each model's predicted boundary lies from the true one on the held-out
photos of a quality benchmark, and what averaging the pipeline's model with stock U²-Net would give.

    python benchmarks/edge_errors.py WORKDIR [--limit N]

WORKDIR is a finished `benchmarks/quality.py` work folder (its holdout.csv and project/). For the champion
and stock U²-Net (`make u2net`), on the first --limit held-out photos (all by default):

1. The predicted boundary's pixels (mask at 0.5) by their distance to the true boundary, in units of boundary
   F's tolerance (0.8 % of the photo's diagonal): within it, 1 to 2 tolerances (just past), and 2 or more
   (a missed limb, a filled gap: what the photo shows, not where its edge runs).
2. Per photo: the median boundary F and how many photos score below 0.9.
3. The average of the two models' soft masks, scored as quality.py scores: a teacher better than either
   would show here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from bgremoval.scoring.metrics import HEADLINE, boundary_pixels, boundary_radius  # noqa: E402

BANDS = (("within", 1.0), ("1-2x", 2.0), ("2x+", np.inf))  # each band's upper end, in tolerances


def boundary_distances(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each predicted boundary pixel's distance to the true boundary, in tolerances (both masks boolean)."""
    from scipy import ndimage

    p, t = boundary_pixels(pred), boundary_pixels(truth)
    if not p.any() or not t.any():
        return np.zeros(0)
    return ndimage.distance_transform_edt(~t)[p] / boundary_radius(truth.shape)


def band_shares(distances: np.ndarray) -> dict[str, float]:
    """The share of boundary pixels in each band of BANDS (distances exactly at a band's upper end are in
    it, as boundary F's disk includes its radius)."""
    n = max(1, len(distances))
    shares, lower = {}, -1.0
    for name, upper in BANDS:
        shares[name] = float(((distances > lower) & (distances <= upper)).sum() / n)
        lower = upper
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    from quality import compared
    from tqdm import tqdm

    from bgremoval.images import load_rgb
    from bgremoval.scoring.metrics import score_image, summarise
    from bgremoval.scoring.score import load_mask

    models, _, _ = compared(args.workdir)
    if "u2net" not in models:
        raise SystemExit("stock U²-Net not found: run `make u2net` first")
    rows = pd.read_csv(args.workdir / "holdout.csv").iloc[:args.limit]
    max_pixels = yaml.safe_load((args.workdir / "project" / "params.yaml").read_text())["prepare"]["max_pixels"]
    names = ("champion", "u2net", "average")
    distances = {name: [] for name in names[:2]}
    scores = {name: [] for name in names}
    for _, row in tqdm(rows.iterrows(), total=len(rows), unit="photo", leave=False):
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(row, max_pixels).astype(np.float64) / 255
        probs = {name: np.asarray(models[name][0](image), np.float64) for name in names[:2]}
        probs["average"] = (probs["champion"] + probs["u2net"]) / 2
        for name, prob in probs.items():
            scores[name].append(score_image(prob, truth))
            if name in distances:
                distances[name].append(boundary_distances(prob >= 0.5, truth >= 0.5))

    print(f"{len(rows)} held-out photos of {args.workdir}")
    print("\npredicted boundary by distance to the true one (in tolerances of boundary F):")
    print(f"| model | {' | '.join(b[0] for b in BANDS)} | photos' median boundary F | photos below 0.9 |")
    print("|---|" + "---|" * (len(BANDS) + 2))
    for name, dist in distances.items():
        shares = band_shares(np.concatenate(dist))
        per_photo = np.array([s.boundary_f for s in scores[name]])
        print(f"| {name} | " + " | ".join(f"{100 * shares[b[0]]:.1f} %" for b in BANDS)
              + f" | {np.median(per_photo):.4f} | {int((per_photo < 0.9).sum())} |")
    print("\nscored as quality.py scores:")
    print("| model | " + " | ".join(HEADLINE) + " |")
    print("|---|" + "---|" * len(HEADLINE))
    for name in names:
        summary = summarise(scores[name])
        print(f"| {name} | " + " | ".join(f"{summary[k]:.4f}" for k in HEADLINE) + " |")


if __name__ == "__main__":
    main()
