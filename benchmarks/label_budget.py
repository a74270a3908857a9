"""How many drafts must a person correct? The label budget, played on a folder whose masks are all known.

    python benchmarks/label_budget.py FOLDER [--holdout 150] [--checked 50] [--model u2net] [--seed 0]
                                      [--rows k0,k50-ranked,...] [--workdir DIR] [--set KEY=VALUE ...]

FOLDER holds images/ and masks/ (a person's masks: the truth). The benchmark plays the person of
docs/labelling.md:

1. Held out: the same --holdout photos as benchmarks/quality.py (drawn with --seed), never seen by any run.
2. Checked: --checked photos of the rest (drawn with seed + 2) keep their true masks in every row, half val,
   half test (a split file): the gate scores on masks a person checked, so a user checks these whatever the
   budget. They are the same photos in every row and are not counted in k.
3. Drafted: every other photo (the pool) is drafted once, exactly as `bgremoval draft` drafts it (--model,
   else stock U²-Net if `make u2net` put it in the venv, else stock U²-NetP), and ranked by its uncertainty.
4. Each row "corrects" k photos of the pool by giving them their true masks and runs the whole pipeline
   (`dvc exp run` in a copy of the project, benchmarks/real_data_profile.yaml and prepare.drafts: true):
     k0            no correction: the pool trains on its drafts alone
     kK-ranked     the K worst-ranked corrected, the other drafts kept
     kK-random     K drawn at random (seed + 3) corrected, the other drafts kept
     kK-alone      the K worst-ranked corrected, and the other drafts left out (prepare.drafts: false)
     all           every photo of the pool with its true mask (what a fully hand-labelled folder gives)
5. Each row's champion is scored on the held-out photos, as benchmarks/quality.py scores it.

Each row also gives what the correction cost: the HCE (pysodmetrics' human correction effort: the points and
strokes that fix a mask) of the k chosen drafts against their true masks, and the HCE of drawing those k from
nothing (an empty mask). Rows are kept in WORKDIR/label_budget.json as they finish; a second call runs only the
rows not there yet, with the same drafts (WORKDIR/pool/drafts.csv), so a long table can be filled over several
sittings. Each row's run takes as long as benchmarks/quality.py's (its training budget does not depend on k).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from quality import ROOT, compared, complete_pairs, held_out, parse_sets, run_pipeline, score_all, table

ROWS = ("k0", "k25-ranked", "k25-random", "k25-alone", "k50-ranked", "k50-random", "k50-alone", "k100-ranked", "all")
_ROW = re.compile(r"^(?:k0|k(\d+)-(ranked|random|alone)|all)$")
REPORT = "label_budget.json"


def row_spec(name: str, pool: int) -> tuple[int, str]:
    """(k, how) of a row's name: k0, kK-ranked|random|alone, or all."""
    match = _ROW.match(name)
    if not match:
        raise ValueError(f"row {name!r}: give k0, kK-ranked, kK-random, kK-alone (K a number) or all")
    if name == "k0":
        return 0, "ranked"
    if name == "all":
        return pool, "ranked"
    k = int(match.group(1))
    if not 0 < k <= pool:
        raise ValueError(f"row {name!r}: K must be between 1 and the pool's {pool} photos")
    return k, match.group(2)


def chosen(ranking: pd.DataFrame, k: int, how: str, seed: int) -> list[str]:
    """The k names a person corrects: the k worst-ranked, or k drawn at random."""
    if how == "random":
        rng = np.random.default_rng(seed + 3)
        return sorted(str(n) for n in rng.choice(ranking["name"].to_numpy(), size=k, replace=False))
    return ranking.sort_values("rank")["name"].head(k).tolist()


# --- the drafts, once --------------------------------------------------------------------------------------

def stock_best() -> str:
    """Stock U²-Net if `make u2net` put it in the venv, else stock U²-NetP (no registry is looked up here)."""
    from bgremoval.weights import WeightsError, find_u2net_onnx

    try:
        find_u2net_onnx()
        return "u2net"
    except WeightsError:
        return "u2netp"


def draft_pool(pool: pd.DataFrame, workdir: Path, model: str | None, max_pixels: int) -> pd.DataFrame:
    """WORKDIR/pool: the pool's photos drafted and ranked as `bgremoval draft` does it, each draft's cost (HCE)
    against its true mask and the cost of drawing that mask from nothing; kept for later calls."""
    from bgremoval.data.masks import load_mask
    from bgremoval.labelling.drafts import draft_folder, open_drafter
    from bgremoval.labelling.folders import read_draft
    from bgremoval.scoring.metrics import dis_measures

    folder = workdir / "pool"
    costs = folder / "costs.csv"
    if costs.is_file():
        return pd.read_csv(costs, dtype={"name": str})  # names such as 0453 stay names
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for path in map(Path, pool["image_path"]):
        shutil.copy2(path, folder / "images" / path.name)
    drafter = open_drafter(model or stock_best(), champion="", tracking_uri=None)
    start = time.perf_counter()
    done = draft_folder(folder, drafter, sorted((folder / "images").iterdir()), max_pixels)
    if done.skipped:
        raise SystemExit("photos that could not be drafted: " + "; ".join(done.skipped))
    print(f"drafted {len(done.ranking)} photos with {drafter.name} in {(time.perf_counter() - start) / 60:.1f} min")
    truth = dict(zip(pool["name"], pool["mask_path"]))
    rows = []
    for row in done.ranking.itertuples():
        true = load_mask(Path(truth[row.name]), max_pixels).astype(np.float64) / 255
        draft = read_draft(Path(row.draft_path)) / 255.0
        rows.append({"name": row.name, "rank": row.rank, "uncertainty": row.uncertainty, "model": row.model,
                     "hce_correct": dis_measures(draft, true)["hce"],
                     "hce_draw": dis_measures(np.zeros_like(true), true)["hce"]})
    table_ = pd.DataFrame(rows)
    table_.to_csv(costs, index=False)
    return table_


# --- one row -----------------------------------------------------------------------------------------------

def build_row(rowdir: Path, drafts_dir: Path, pool: pd.DataFrame, checked: pd.DataFrame, fixed: list[str],
              alone: bool) -> Path:
    """ROWDIR/data (images/, masks/ of the checked and the corrected, drafts/ of the rest unless alone) and
    ROWDIR/splits.csv (the checked: half val, half test; everything else: train)."""
    data = rowdir / "data"
    for kind in ("images", "masks", "drafts"):
        (data / kind).mkdir(parents=True)
    given = set(fixed) | set(checked["name"])
    for row in pd.concat([checked, pool]).itertuples():
        mine = row.name in given
        if alone and not mine:
            continue
        shutil.copy2(row.image_path, data / "images" / Path(row.image_path).name)
        if mine:
            shutil.copy2(row.mask_path, data / "masks" / Path(row.mask_path).name)
        else:
            shutil.copy2(drafts_dir / f"{row.name}.png", data / "drafts" / f"{row.name}.png")
    half = len(checked) // 2
    splits = [{"name": n, "split": "val" if i < half else "test"} for i, n in enumerate(sorted(checked["name"]))]
    splits += [{"name": n, "split": "train"} for n in pool["name"] if not alone or n in given]
    out = rowdir / "splits.csv"
    pd.DataFrame(splits).to_csv(out, index=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder with images/ and masks/ (the masks are the truth)")
    parser.add_argument("--holdout", type=int, default=150, help="photos held out for scoring (default 150)")
    parser.add_argument("--checked", type=int, default=50, help="photos with checked masks for val and test (default 50)")
    parser.add_argument("--model", default=None, help="the drafting model: u2net, u2netp, a served folder or a models:/ URI")
    parser.add_argument("--seed", type=int, default=0, help="draws the held-out, checked and random photos")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows, in order (default {','.join(ROWS)})")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bgremoval-label-budget"),
                        help="where the drafts, each row's run and the results go (outside this checkout)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param over the profile for every row (repeatable; VALUE as YAML)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(ROOT):
        parser.error(f"--workdir {workdir} is inside this checkout; give a folder outside it")
    max_pixels = yaml.safe_load((ROOT / "params.yaml").read_text())["prepare"]["max_pixels"]

    pairs, _ = complete_pairs(args.folder.resolve())
    holdout_names = set(held_out(pairs["name"].tolist(), args.holdout, args.seed))
    holdout = pairs[pairs["name"].isin(holdout_names)].reset_index(drop=True)
    rest = pairs[~pairs["name"].isin(holdout_names)].reset_index(drop=True)
    checked_names = set(held_out(rest["name"].tolist(), args.checked, args.seed + 2))
    checked = rest[rest["name"].isin(checked_names)].reset_index(drop=True)
    pool = rest[~rest["name"].isin(checked_names)].reset_index(drop=True)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    try:
        specs = {name: row_spec(name, len(pool)) for name in names}
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{len(pairs)} pairs: {len(holdout)} held out, {len(checked)} checked (val and test), {len(pool)} to draft")

    workdir.mkdir(parents=True, exist_ok=True)
    report_file = workdir / REPORT
    report = json.loads(report_file.read_text()) if report_file.is_file() else {"rows": {}}
    costs = draft_pool(pool, workdir, args.model, max_pixels)
    overrides = parse_sets(args.set)
    for name, (k, how) in specs.items():
        if name in report["rows"]:
            print(f"{name}: done earlier ({report_file})")
            continue
        fixed = chosen(costs, k, how, args.seed)
        rowdir = workdir / "rows" / name
        if rowdir.exists():
            shutil.rmtree(rowdir)
        alone = how == "alone"
        splits = build_row(rowdir, workdir / "pool" / "drafts", pool, checked, fixed, alone)
        settings = {"prepare.drafts": not alone, "prepare.split_file": str(splits),
                    "validate.split_tolerance": 1.0,  # val and test are the checked photos, sized by --checked
                    # The masks here are the truth: ranking them against a model's (a report) changes no row.
                    "validate.suspects.model": None,
                    **overrides}
        print(f"\n== {name}: {k} corrected ({how}), {'no drafts' if alone else f'{len(pool) - k} drafts'}", flush=True)
        seconds = run_pipeline(rowdir, settings)
        models, about, _ = compared(rowdir)
        scores = score_all({"champion": models["champion"]}, holdout, max_pixels)["champion"]
        spent = costs[costs["name"].isin(fixed)]
        report["rows"][name] = {"k": k, "how": how, "drafts_kept": 0 if alone else len(pool) - k,
                                "hce_correcting": float(spent["hce_correct"].sum()),
                                "hce_drawing": float(spent["hce_draw"].sum()), "scores": scores,
                                "champion": about, "pipeline_seconds": round(seconds), "overrides": settings}
        report |= {"folder": str(args.folder.resolve()), "n_holdout": len(holdout), "n_checked": len(checked),
                   "n_pool": len(pool), "drafted_by": str(costs["model"].iloc[0])}
        report_file.write_text(json.dumps(report, indent=2, default=str))
        print(f"{name}: IoU {scores['iou']:.4f}, boundary F {scores['boundary_f']:.4f} "
              f"({seconds / 60:.1f} min); kept in {report_file}", flush=True)

    if "stock" not in report:
        models, _, _ = compared(next((workdir / "rows").iterdir()))
        report["stock"] = score_all({k: v for k, v in models.items() if k in ("u2netp", "u2net")}, holdout, max_pixels)
        report_file.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)


def print_table(report: dict) -> None:
    done = sorted(report["rows"], key=lambda n: (ROWS.index(n) if n in ROWS else len(ROWS), n))
    rows = {name: report["rows"][name]["scores"] for name in done} | report.get("stock", {})
    print(f"\n{report['n_holdout']} held-out photos; {report['n_checked']} checked photos (val and test) in every "
          f"row; {report['n_pool']} drafted by {report['drafted_by']}")
    print(table(rows))
    print("\nrow | corrected | drafts kept | HCE correcting them | HCE drawing them | pipeline min")
    for name in done:
        r = report["rows"][name]
        print(f"{name} | {r['k']} | {r['drafts_kept']} | {r['hce_correcting']:.0f} | {r['hce_drawing']:.0f} | "
              f"{r['pipeline_seconds'] / 60:.1f}")


if __name__ == "__main__":
    main()
