"""What each refinement of the mask (export.refine) does to stock U²-NetP on a real folder, by group.

    python benchmarks/refine.py FOLDER [--every 5] [--size 320] [--groups a,b --groups c,d] [--out FILE]

Stock U²-NetP's weights (float32 onnxruntime, served as the export stage serves a model: this project's
preprocessing at --size, the mask resized back to each image) on every --every-th image (frame numbers
divisible by it), scored at the images' own resolution with each combination of flip / main object / sharpen,
on all the images and on each --groups subset (groups by params.yaml's prepare.group_pattern). No training:
this is what serving alone changes. Prints a table and writes it as JSON (--out, default
/tmp/bgremoval-refine.json).
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

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from quality import any_size  # noqa: E402

from bgremoval.data.manifest import pair_files  # noqa: E402
from bgremoval.data.split import group_of  # noqa: E402


def rows_for(data: Path, every: int) -> pd.DataFrame:
    """name, image_path, mask_path and group of the pairs whose trailing number is divisible by `every`."""
    pattern = re.compile(yaml.safe_load((ROOT / "params.yaml").read_text())["prepare"]["group_pattern"])
    records = []
    for name, image, mask in pair_files(data):
        number = re.search(r"(\d+)$", name)
        if image is not None and mask is not None and (every == 1 or (number and int(number.group(1)) % every == 0)):
            records.append({"name": name, "image_path": str(image), "mask_path": str(mask),
                            "group": group_of(name, pattern)})
    return pd.DataFrame(records, columns=["name", "image_path", "mask_path", "group"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="folder with images/ and masks/")
    parser.add_argument("--every", type=int, default=1, help="every n-th image (by its trailing frame number)")
    parser.add_argument("--size", type=int, default=320, help="input size of the network")
    parser.add_argument("--groups", action="append", default=[], help="comma-separated groups scored apart (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bgremoval-refine.json")
    args = parser.parse_args()

    from bgremoval.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()  # export.choose imports Keras
    from bgremoval.export.choose import RefineChoices, choose_refine
    from bgremoval.serving.runtime import OnnxSegmenter
    from bgremoval.weights import find_u2netp_onnx

    rows = rows_for(args.data, args.every)
    if rows.empty:
        parser.error(f"{args.data}: no image/mask pairs (with --every {args.every})")
    subsets = {"all": rows} | {g: rows[rows["group"].isin(g.split(","))].reset_index(drop=True) for g in args.groups}
    empty = [name for name, subset in subsets.items() if subset.empty]
    if empty:
        parser.error(f"--groups {', '.join(empty)}: no such images; groups here: {', '.join(sorted(rows['group'].unique()))}")
    max_pixels = yaml.safe_load((ROOT / "params.yaml").read_text())["prepare"]["max_pixels"]
    choices = RefineChoices(flip=[False, True], main_object=[False, True], sharpen=[1.0, 2.0], tolerance=0.0).grid()
    with tempfile.TemporaryDirectory() as tmp:
        predict = OnnxSegmenter(any_size(find_u2netp_onnx(), Path(tmp) / "u2netp.onnx"), args.size)
        scores = {name: choose_refine(subset, predict, choices, max_pixels, 0.0)[1] for name, subset in subsets.items()}
    names = list(subsets)
    print(f"stock U²-NetP at {args.size}², {len(rows)} images; MAE / max F / IoU per subset")
    print(f"{'refinement':<28} | " + " | ".join(f"{n[:24]:^24}" for n in names))
    print("-" * 29 + "|" + "|".join("-" * 26 for _ in names))
    for choice in choices:
        print(f"{choice.name:<28} | " + " | ".join(
            f"{scores[n][choice]['mae']:.4f} {scores[n][choice]['max_f']:.4f} {scores[n][choice]['iou']:.4f}".center(24)
            for n in names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"size": args.size, "n_images": len(rows), "subsets": {n: len(s) for n, s in subsets.items()},
                                    "scores": {c.name: {n: scores[n][c] for n in names} for c in choices}}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
