"""What each refinement of the mask (evaluate.refine) does to stock U²-NetP on a real folder, by group.

    python benchmarks/refine.py ../shared/data/davis_train --every 5 --size 320 \\
        --groups paragliding-launch,scooter-black --groups blackswan,breakdance

Stock U²-NetP's weights (float32 ONNX, this project's preprocessing, at --size) on every --every-th image
(frame numbers divisible by it), scored with each combination of flip / main object / sharpen, on all the
images and on each --groups subset (a fold's test sequences, say). No training: this is what serving alone
changes. Prints a table and writes it as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from bgremoval.split import group_of  # noqa: E402


def rows_for(data: Path, every: int) -> pd.DataFrame:
    """image_path, mask_path and group of the images whose trailing number is divisible by `every`."""
    pattern = re.compile(yaml.safe_load((ROOT / "params.yaml").read_text())["prepare"]["group_pattern"])
    masks = {p.stem: p for p in (data / "masks").iterdir() if p.is_file()}
    records = []
    for image in sorted(p for p in (data / "images").iterdir() if p.is_file() and p.stem in masks):
        number = re.search(r"(\d+)$", image.stem)
        if number and int(number.group(1)) % every == 0:
            records.append({"name": image.stem, "image_path": str(image), "mask_path": str(masks[image.stem]),
                            "group": group_of(image.stem, pattern)})
    return pd.DataFrame(records)


def main() -> None:
    from bgremoval.evaluate import choose_refine, refine_grid
    from bgremoval.export import OnnxSegmenter, export_u2netp
    from bgremoval.train import ModelConfig, build_network, inference_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with images/ and masks/")
    parser.add_argument("--every", type=int, default=1, help="every n-th image (by its trailing frame number)")
    parser.add_argument("--size", type=int, default=320, help="input size of the network")
    parser.add_argument("--groups", action="append", default=[], help="comma-separated groups scored apart (repeatable)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "refine.json")
    args = parser.parse_args()

    rows = rows_for(args.data, args.every)
    subsets = {"all": rows} | {g: rows[rows["group"].isin(g.split(","))].reset_index(drop=True) for g in args.groups}
    choices = refine_grid([False, True], [False, True], [1.0, 2.0])
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_u2netp(inference_model(build_network(ModelConfig(family="u2netp"))), Path(tmp) / "stock.onnx", args.size)
        predict = OnnxSegmenter(onnx, args.size, args.threads)
        table = {name: choose_refine(subset, predict, choices, 10**9, progress=True)[1] for name, subset in subsets.items()}
    names = list(subsets)
    print(f"stock U²-NetP at {args.size}², {len(rows)} images; MAE / max F / IoU per subset")
    print(f"{'refinement':<28} | " + " | ".join(f"{n[:24]:^24}" for n in names))
    print("-" * 29 + "|" + "|".join("-" * 26 for _ in names))
    for choice in table["all"]:
        print(f"{choice:<28} | " + " | ".join(
            f"{table[n][choice]['mae']:.4f} {table[n][choice]['max_f']:.4f} {table[n][choice]['iou']:.4f}".center(24)
            for n in names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "n_images": len(rows), "subsets": {n: len(s) for n, s in subsets.items()},
                                    "scores": table}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
