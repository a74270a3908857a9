"""Does `bgremoval draft`'s ranking put first the drafts that need the most correction?

    python benchmarks/draft_ranking.py FOLDER [--model u2net] [--workdir DIR] [--permutations 2000] [--seed 0]

FOLDER holds images/ and masks/ (a person's masks, the truth). Its photos alone are copied into WORKDIR/photos and
drafted there exactly as `bgremoval draft` drafts them (--model, else the best at hand: the registry's champion is
not looked up here, so stock U²-Net if `make u2net` put it in the venv, else stock U²-NetP). Each draft is then
scored against its true mask: 1 - IoU, 1 - boundary F and HCE (the clicks and strokes a person needs to correct it).

The table gives, for the uncertainty score and for each look it is made of (the mirrored photo's mask, a second
model's mask):
    Spearman's rank correlation with each true error (random order: 0 on average; its 95 % band from
    --permutations shuffles is printed beside it)
    how many of the truly worst k drafts the ranking's first k hold, for k = 25 and 50 (random: k * k / n on average)
    the HCE a person spends correcting the ranking's first k, against the k worst by HCE (the best any ranking can do)
WORKDIR/draft_ranking.csv keeps every photo's looks and true errors.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SCORES = ("uncertainty", "flip", "second")  # the ranking's score, and the looks it averages
ERRORS = ("iou_error", "boundary_error", "hce")
TOP = (25, 50)


def true_errors(ranking: pd.DataFrame, truth: Path, max_pixels: int) -> pd.DataFrame:
    """Each draft's errors against the person's mask of the same name in `truth` (masks/)."""
    from bgremoval.data.masks import load_mask
    from bgremoval.labelling.folders import read_draft
    from bgremoval.scoring.metrics import score_image

    rows = []
    for row in ranking.itertuples():
        mask = next((truth / "masks").glob(f"{row.name}.*"))
        true = load_mask(mask, max_pixels).astype(np.float64) / 255
        s = score_image(read_draft(Path(row.draft_path)) / 255.0, true, dis=True)
        rows.append({"name": row.name, "iou_error": 1 - s.iou, "boundary_error": 1 - s.boundary_f, "hce": s.dis["hce"]})
    return ranking.merge(pd.DataFrame(rows), on="name")


def random_band(errors: np.ndarray, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of Spearman's correlation between a random order and the errors."""
    from scipy.stats import spearmanr

    values = [spearmanr(rng.permutation(len(errors)), errors).statistic for _ in range(n)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def found_in_top(table: pd.DataFrame, score: str, error: str, k: int) -> int:
    """How many of the k truly worst drafts (by `error`) are among the k ranked first by `score`."""
    worst = set(table.nlargest(k, error)["name"])
    ranked = set(table.sort_values([score, "name"], ascending=[False, True]).head(k)["name"])
    return len(worst & ranked)


def main() -> None:
    from scipy.stats import spearmanr

    from bgremoval.labelling.drafts import draft_folder, open_drafter, photos_to_draft

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", help="u2net, u2netp or a served model (default: the best at hand)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--permutations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="draft_ranking_"))
    photos = work / "photos"
    if not (photos / "drafts.csv").is_file():
        shutil.rmtree(photos, ignore_errors=True)
        shutil.copytree(args.folder / "images", photos / "images")
        # no registry here: the champion of this checkout is not the point, the stock drafter is
        drafter = open_drafter(args.model, "models:/none@champion", f"sqlite:///{work / 'no-registry.db'}")
        done = draft_folder(photos, drafter, photos_to_draft(photos, every=True), 10**8)
        for reason in done.skipped:
            print(f"skipped {reason}", file=sys.stderr)
    ranking = pd.read_csv(photos / "drafts.csv", dtype={"name": str})
    table = true_errors(ranking, args.folder, 10**8)
    table.to_csv(work / "draft_ranking.csv", index=False, float_format="%.6f")
    n, rng = len(table), np.random.default_rng(args.seed)
    drafter, second = table["model"].iloc[0], table["second_model"].dropna().iloc[0] if table["second"].notna().any() else None
    print(f"{n} drafts by {drafter}" + (f", second model {second}" if second else "") + f"; work folder {work}\n")
    print("| score | " + " | ".join(f"Spearman vs {e}" for e in ERRORS)
          + " | " + " | ".join(f"worst {k} found (by IoU)" for k in TOP) + " | " + " | ".join(f"HCE of first {k}" for k in TOP) + " |")
    print("|---" * (1 + len(ERRORS) + 2 * len(TOP)) + "|")
    for score in (s for s in SCORES if table[s].notna().all()):
        corr = [spearmanr(table[score], table[e]).statistic for e in ERRORS]
        found = [found_in_top(table, score, "iou_error", k) for k in TOP]
        hce = [table.sort_values([score, "name"], ascending=[False, True]).head(k)["hce"].sum() for k in TOP]
        print(f"| {score} | " + " | ".join(f"{c:+.3f}" for c in corr) + " | " + " | ".join(f"{f}/{k}" for f, k in zip(found, TOP))
              + " | " + " | ".join(f"{h:.0f}" for h in hce) + " |")
    bands = [random_band(table[e].to_numpy(), args.permutations, rng) for e in ERRORS]
    print("| random order | " + " | ".join(f"{lo:+.3f}..{hi:+.3f}" for lo, hi in bands) + " | "
          + " | ".join(f"{k * k / n:.1f}/{k}" for k in TOP) + " | "
          + " | ".join(f"{table['hce'].mean() * k:.0f}" for k in TOP) + " |")
    print("| the truly worst first | " + " | ".join("+1.000" for _ in ERRORS) + " | " + " | ".join(f"{k}/{k}" for k in TOP)
          + " | " + " | ".join(f"{table.nlargest(k, 'hce')['hce'].sum():.0f}" for k in TOP) + " |")


if __name__ == "__main__":
    main()
