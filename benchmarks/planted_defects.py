"""How many planted defects validation finds in a folder of real pairs, and how many clean pairs it flags; prints a table.

    python benchmarks/planted_defects.py FOLDER [--each 10] [--model u2netp]

FOLDER (images/ + masks/) is copied into a temporary folder, and defects are planted in the copy, `--each` of
each kind, on pairs drawn with base.seed:
- blank: the photo replaced by a near-black one of its size (every value 0..2) with a full foreground mask;
- near-copy: a copy of a photo under a new name (resized to half, re-encoded at JPEG quality 40, cropped 3 %,
  turned grey, or brighter and more saturated, in turn), its mask made the same way; a split that puts it in
  another split than its original (as a split file can) must fail validation, and prepare's own split must
  keep the two together;
- swapped: two photos trade masks (each resized to the other's photo): masks of another photo.
Then prepare's and validate's checks run with params.yaml's settings: the contrast floor, the near-copy search,
and the suspect-mask report with --model (default validate.suspects.model, else u2netp). Nothing is written
to the project.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402

from bgremoval.data.content import copies_in, merge_groups  # noqa: E402
from bgremoval.data.manifest import build_manifest, pair_files  # noqa: E402
from bgremoval.data.masks import MaskChoices  # noqa: E402
from bgremoval.data.split import SPLITS, assign_groups, split_groups  # noqa: E402
from bgremoval.data.validation import Thresholds, add_derived_columns, run_suite, scorable, summarise  # noqa: E402
from bgremoval.labelling.drafts import open_model  # noqa: E402
from bgremoval.labelling.suspects import flag_above, score_masks  # noqa: E402


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _crop(img: Image.Image, share: float = 0.03) -> Image.Image:
    w, h = img.size
    dx, dy = round(w * share / 2), round(h * share / 2)
    return img.crop((dx, dy, w - dx, h - dy))


# How each near-copy is made: (photo, mask) -> (photo, mask).
COPIES = {
    "resized to half": lambda im, m: (im.resize((im.width // 2, im.height // 2)), m.resize((m.width // 2, m.height // 2))),
    "JPEG quality 40": lambda im, m: (_jpeg(im, 40), m),
    "cropped 3 %": lambda im, m: (_crop(im), _crop(m)),
    "grey": lambda im, m: (ImageOps.grayscale(im), m),
    "recoloured": lambda im, m: (ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(1.3), m),
}


def plant(folder: Path, each: int, seed: int) -> dict[str, set[str]]:
    """Plant the defects in the folder; the names of the pairs planted, by kind (a near-copy's name is its
    copy's)."""
    rng = np.random.default_rng(seed)
    names = sorted(p.stem for p in (folder / "images").iterdir())
    picked = [str(n) for n in rng.choice(names, size=4 * each, replace=False)]
    blank, originals, swapped = picked[:each], picked[each:2 * each], picked[2 * each:]
    image = {p.stem: p for p in (folder / "images").iterdir()}
    mask = {p.stem: p for p in (folder / "masks").iterdir()}
    for name in blank:
        with Image.open(image[name]) as img:
            w, h = img.size
        image[name].unlink()
        Image.fromarray(rng.integers(0, 3, (h, w, 3), dtype=np.uint8)).save(folder / "images" / f"{name}.png")
        Image.fromarray(np.full((h, w), 255, np.uint8), "L").save(mask[name])
    copies = set()
    for i, name in enumerate(originals):
        how = list(COPIES)[i % len(COPIES)]
        with Image.open(image[name]) as img, Image.open(mask[name]) as m:
            photo, its_mask = COPIES[how](img.convert("RGB"), m.convert("L"))
        copy = f"copy{i:03d}_{name}"
        photo.convert("RGB").save(folder / "images" / f"{copy}.jpg", quality=92)
        its_mask.save(folder / "masks" / f"{copy}.png")
        copies.add(copy)
    for a, b in zip(swapped[::2], swapped[1::2]):
        with Image.open(mask[a]) as ma, Image.open(mask[b]) as mb, Image.open(image[a]) as ia, Image.open(image[b]) as ib:
            new_a, new_b = mb.convert("L").resize(ia.size), ma.convert("L").resize(ib.size)
        new_a.save(mask[a])
        new_b.save(mask[b])
    return {"blank": set(blank), "near-copy": copies, "swapped": set(swapped)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with images/ and masks/")
    parser.add_argument("--each", type=int, default=10, help="defects planted of each kind (swapped: pairs x 2)")
    parser.add_argument("--model", help="the suspect-mask model (default: validate.suspects.model, else u2netp)")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    prepare, validate, seed = params["prepare"], params["validate"], params["base"]["seed"]
    model = args.model or validate["suspects"]["model"] or "u2netp"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "data"
        shutil.copytree(args.folder / "images", folder / "images")
        shutil.copytree(args.folder / "masks", folder / "masks")
        planted = plant(folder, args.each, seed)
        t0 = time.perf_counter()
        choices = MaskChoices(jpeg=prepare["jpeg_masks"], resize=prepare["resize_masks"])
        manifest = build_manifest(pair_files(folder), prepare["max_pixels"], choices)
        manifest["group"] = assign_groups(manifest["name"], prepare["group_pattern"])
        t1 = time.perf_counter()
        found = copies_in(manifest, prepare["near_copy_distance"], validate["min_contrast"])
        t2 = time.perf_counter()

        # prepare's split: near-copies merged into one group, so none is separated from its original
        merged = merge_groups(manifest["group"], found)
        fresh = split_groups(merged, prepare["splits"], seed)
        by_name = dict(zip(manifest["name"], fresh))
        together = sum(by_name[c] == by_name[c.split("_", 1)[1]] for c in planted["near-copy"])

        # a split file's split: each copy in another split than its original
        split = split_groups(manifest["group"], prepare["splits"], seed)
        by_name = dict(zip(manifest["name"], split))
        for c in planted["near-copy"]:
            other = next(s for s in SPLITS if s != by_name[c.split("_", 1)[1]])
            split[manifest["name"] == c] = other
        manifest["split"] = split

        predict = open_model(model, tracking_uri=None)
        ranking, _ = score_masks(scorable(manifest, validate["min_contrast"]), predict, model, prepare["max_pixels"])
        above = flag_above(ranking["disagreement"], validate["suspects"]["z"])
        manifest["mask_disagreement"] = manifest["mask_path"].map(dict(zip(ranking["mask_path"], ranking["disagreement"])))
        t3 = time.perf_counter()
        t = Thresholds.from_params(params, suspect_above=above)
        report = summarise(run_suite(add_derived_columns(manifest, t), t, None))
        t4 = time.perf_counter()

    outcomes = report["failures"] + report["warnings"]
    flagged = {kind: set().union(*[{u["name"] for u in o.get("unexpected", [])} for o in outcomes
                                   if o["guards"].startswith(prefix)])
               for kind, prefix in (("blank", "every photo shows something"), ("near-copy", "no photo has a near-copy"),
                                    ("swapped", "a mask a person drew agrees"))}
    # A photo named beside a planted copy is right: the copy's original, or a frame of its scene close to it.
    copy_leaks = [o for o in outcomes if o["guards"].startswith("no photo has a near-copy")]
    beside = {u["name"] for o in copy_leaks for u in o.get("unexpected", [])
              if Path(str(u["values"].get("near_copy_of"))).stem in planted["near-copy"]}
    print(f"{len(manifest)} pairs from {args.folder}, {args.each} defects of each kind planted (seed {seed}); "
          f"suspect masks by {model}, flagged above 1 - IoU {above:.3f} (median {ranking['disagreement'].median():.3f})")
    print(f"{'defect':<10} | {'planted':>7} | {'found':>5} | {'clean pairs flagged':>19} | check")
    print(f"{'-' * 10}-|{'-' * 9}|{'-' * 7}|{'-' * 21}|{'-' * 40}")
    for kind, check in (("blank", f"contrast < {validate['min_contrast']}"),
                        ("near-copy", f"hashes within {prepare['near_copy_distance']} bits, in two splits"),
                        ("swapped", f"suspect mask (z > {validate['suspects']['z']}), a warning")):
        hit = planted[kind] | (beside if kind == "near-copy" else set())
        hits = len(flagged[kind] & planted[kind])
        clean = flagged[kind] - hit
        print(f"{kind:<10} | {len(planted[kind]):>7} | {hits:>5} | {len(clean):>19} | {check}"
              + (f" ({', '.join(sorted(clean)[:4])})" if clean else ""))
    print(f"near-copies kept with their original by prepare's split: {together} of {len(planted['near-copy'])}; "
          f"near-copy pairs found in all: {len(found)}")
    rank_of = dict(zip(ranking["name"], ranking["rank"]))
    print(f"swapped masks' ranks among {len(ranking)}: {sorted(int(rank_of[n]) for n in planted['swapped'] if n in rank_of)}")
    clean = ranking[~ranking["name"].isin(planted["swapped"])]["disagreement"]
    print("clean masks' disagreement: " + ", ".join(f"p{q} {clean.quantile(q / 100):.3f}" for q in (50, 90, 95, 99, 100))
          + "; swapped: min " + f"{ranking[ranking['name'].isin(planted['swapped'])]['disagreement'].min():.3f}")
    swapped = ranking["name"].isin(planted["swapped"])
    print("the flag's cut-off z against what it finds: " + "; ".join(
        f"z {z:g}: above {flag_above(ranking['disagreement'], z):.3f}, swapped {int((ranking['disagreement'] > flag_above(ranking['disagreement'], z))[swapped].sum())}"
        f" of {int(swapped.sum())}, clean {int((ranking['disagreement'] > flag_above(ranking['disagreement'], z))[~swapped].sum())}"
        for z in (3.5, 5, 7, 10)))
    print(f"seconds: decode + contrast + hashes {t1 - t0:.1f}, near-copy search {t2 - t1:.2f}, "
          f"suspect masks {t3 - t2:.1f}, GX suite {t4 - t3:.1f}")


if __name__ == "__main__":
    main()
