"""How export's size choice (export.size_choice) fares on a real folder when val is small, against picking the
best val IoU.

    python benchmarks/size_choice.py FOLDER [--sizes 256 288 320] [--val 25 | --val-groups 2] [--draws 400]
                                     [--model FILE.onnx]

Every photo of FOLDER (images/ and masks/) is predicted once at each size by an ONNX model (default: stock
U²-NetP from the installed wheel, its input made any size; or a served folder's model.onnx), and scored
at its own resolution. Then, --draws times, --val photos are drawn as a val split and the rest are the
photos that come later (with --val-groups, that many whole groups by params.yaml's prepare.group_pattern,
e.g. video sequences, as prepare splits them: frames of one sequence are never on both sides): each rule picks a size on the val photos alone, and the pick is scored on the
rest against the size that is best there (the mean of IoU and boundary F). It prints, per rule, how often
each size was picked, the mean loss on the rest, and how often that loss passed 0.003 on IoU or on
boundary F; and each size's milliseconds a photo. The table goes to --out as JSON too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from quality import any_size  # noqa: E402
from refine import rows_for  # noqa: E402

METRICS = ("iou", "boundary_f")
LARGE_LOSS = 0.003


def per_photo_scores(rows, model: Path, sizes: list[int], max_pixels: int) -> tuple[dict, dict]:
    """{size: {metric: array over photos}} and {size: median ms a photo} of the model at each size."""
    from tqdm import tqdm

    from bgremoval.data.masks import load_mask
    from bgremoval.images import load_rgb
    from bgremoval.scoring.metrics import score_image
    from bgremoval.serving.runtime import OnnxSegmenter

    segmenters = {s: OnnxSegmenter(model, s) for s in sizes}
    scores = {s: {m: [] for m in METRICS} for s in sizes}
    ms = {s: [] for s in sizes}
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="photos", unit="photo", mininterval=10):
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(row, max_pixels).astype(np.float64) / 255
        for s in sizes:
            start = time.perf_counter()
            prob = segmenters[s](image)
            ms[s].append(1000 * (time.perf_counter() - start))
            got = score_image(prob, truth)
            for m in METRICS:
                scores[s][m].append(getattr(got, m))
    return ({s: {m: np.array(v) for m, v in by.items()} for s, by in scores.items()},
            {s: float(np.median(v)) for s, v in ms.items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="folder with images/ and masks/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 288, 320])
    parser.add_argument("--val", type=int, default=25, help="photos in each drawn val split")
    parser.add_argument("--val-groups", type=int, help="draw this many whole groups as val instead of --val photos")
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--model", type=Path, help="an ONNX file (default: stock U²-NetP)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bgremoval-size-choice.json")
    args = parser.parse_args()

    from bgremoval.export.choose import SizeChoice, pick_size
    from bgremoval.weights import find_u2netp_onnx

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    choice = SizeChoice(**params["export"]["size_choice"])
    model = args.model or any_size(find_u2netp_onnx(), Path(tempfile.mkdtemp()) / "u2netp.onnx")
    rows = rows_for(args.data, 1)
    sizes = sorted(set(args.sizes))
    groups = rows["group"].to_numpy()
    names = sorted(set(groups))
    if (len(names) <= args.val_groups) if args.val_groups else (len(rows) <= args.val):
        raise SystemExit(f"{args.data}: {len(rows)} pairs in {len(names)} groups; --val {args.val} or --val-groups "
                         f"{args.val_groups} leaves none to judge the pick on")
    scores, ms = per_photo_scores(rows, model, sizes, params["prepare"]["max_pixels"])

    rng = np.random.default_rng(params["base"]["seed"])
    rules = {"best val IoU": [], "export.size_choice": []}
    for draw in range(args.draws):
        if args.val_groups:
            val = np.flatnonzero(np.isin(groups, rng.choice(names, size=args.val_groups, replace=False)))
        else:
            val = rng.choice(len(rows), size=args.val, replace=False)
        rest = np.setdiff1d(np.arange(len(rows)), val)
        on = lambda idx: {s: {m: scores[s][m][idx] for m in METRICS} for s in sizes}  # noqa: E731
        val_scores, rest_scores = on(val), on(rest)
        best_iou = max(val_scores[s]["iou"].mean() for s in sizes)
        picks = {"best val IoU": min(s for s in sizes if val_scores[s]["iou"].mean() == best_iou),
                 "export.size_choice": pick_size(val_scores, choice, seed=draw)[0]}
        quality = {s: np.mean([rest_scores[s][m].mean() for m in METRICS]) for s in sizes}
        best_rest = max(sizes, key=lambda s: quality[s])
        for rule, size in picks.items():
            loss = {m: float(rest_scores[best_rest][m].mean() - rest_scores[size][m].mean()) for m in METRICS}
            rules[rule].append({"size": size, **loss})

    drawn = f"{args.val_groups} whole groups of {len(names)}" if args.val_groups else f"{args.val} photos"
    print(f"{args.data.name}: {len(rows)} photos, {model.name}, val of {drawn} drawn {args.draws} times; "
          "loss on the rest against the size best there")
    print("ms a photo (median): " + ", ".join(f"{s}²: {ms[s]:.0f}" for s in sizes))
    print(f"rule: {choice.rule()}")
    head = " | ".join(f"{s}² picked" for s in sizes)
    print(f"| rule | {head} | mean IoU loss | mean boundary F loss | loss > {LARGE_LOSS} |")
    table = {}
    for rule, picks in rules.items():
        share = {s: np.mean([p["size"] == s for p in picks]) for s in sizes}
        loss = {m: float(np.mean([p[m] for p in picks])) for m in METRICS}
        large = float(np.mean([max(p[m] for m in METRICS) > LARGE_LOSS for p in picks]))
        table[rule] = {"picked": {str(s): float(v) for s, v in share.items()}, "loss": loss, "large_loss": large}
        print(f"| {rule} | " + " | ".join(f"{share[s]:.0%}" for s in sizes)
              + f" | {loss['iou']:.4f} | {loss['boundary_f']:.4f} | {large:.0%} |")
    args.out.write_text(json.dumps({"photos": len(rows), "val": args.val_groups or args.val,
                                    "val_unit": "groups" if args.val_groups else "photos", "draws": args.draws,
                                    "model": str(model),
                                    "ms": {str(s): v for s, v in ms.items()}, "rules": table,
                                    "full_set": {str(s): {m: float(scores[s][m].mean()) for m in METRICS}
                                                 for s in sizes}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
