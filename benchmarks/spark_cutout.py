"""A catalogue on Spark against `bgremoval predict` on the same cores: photos per second, and what 100,000 need.

    python benchmarks/spark_cutout.py FOLDER [FOLDER ...] [--n 1000] [--model models/served] [--master local[2]]
                                      [--output mask] [--workdir DIR]

FOLDER: folders of photos (their images/ sub-folder where there is one); the first --n photos of them, in name
order, are linked into one folder, so both commands read the same files. --model: a served folder (the export
stage's models/served; it is logged and registered as register does, in a SQLite store under WORKDIR) or an
MLflow model URI (with --tracking-uri). Each command runs once, whole, as a user runs it, start-up included:

    bgremoval predict PHOTOS OUT --model URI --output mask --quiet        (onnxruntime on every core)
    bgremoval spark-cutout PHOTOS OUT.parquet --model URI --output mask --master local[2]

Then the same photos' masks are compared (every 50th photo): the two paths must give the same picture. Prints a
table: seconds, photos per second, the ratio, and the executors (of --executor-cores cores each) that a
100,000-photo catalogue needs to finish in an hour at the measured rate per core.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from bgremoval.images import IMAGE_EXTENSIONS  # noqa: E402

CATALOGUE, HOUR = 100_000, 3600.0


def gather(folders: list[Path], n: int, into: Path) -> list[Path]:
    """The first n photos of the folders (images/ where there is one), linked into one flat folder."""
    found = []
    for folder in folders:
        folder = folder / "images" if (folder / "images").is_dir() else folder
        found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if len(found) < n:
        sys.exit(f"spark_cutout: {len(found)} photos in {', '.join(map(str, folders))}; --n asks for {n}")
    into.mkdir(parents=True)
    links = []
    for i, src in enumerate(found[:n]):
        link = into / f"{i:05d}_{src.name}"
        link.symlink_to(src.resolve())
        links.append(link)
    return links


def registered(served: Path, workdir: Path) -> tuple[str, str]:
    """A served folder logged and registered as the register stage does (the model's own code and config), in a
    SQLite store of the benchmark's own: (model URI, tracking URI)."""
    import mlflow
    from PIL import Image

    from bgremoval.serving.config import ServingConfig
    from bgremoval.serving.pyfunc import log_model
    from bgremoval.serving.render import png_bytes

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("spark-benchmark", artifact_location=(workdir / "artifacts").as_uri())
    config = ServingConfig.read(served)
    with mlflow.start_run(experiment_id=experiment):
        info = log_model(served / config.model_file, config, png_bytes(Image.new("RGB", (24, 24))), name="model")
    version = mlflow.register_model(info.model_uri, "bgremoval").version
    mlflow.MlflowClient().set_registered_model_alias("bgremoval", "champion", version)
    return "models:/bgremoval@champion", uri


def timed(cmd: list[str], env: dict) -> float:
    """Seconds the whole command took; it must succeed."""
    start = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        sys.exit(f"spark_cutout: {' '.join(cmd)} failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
    return seconds


def same_masks(photos: list[Path], predicted: Path, table: Path, every: int) -> tuple[int, int]:
    """(photos compared, photos whose two masks differ): predict's PNG files against the Parquet table's bytes."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rows = pd.read_parquet(table).assign(name=lambda t: t["path"].map(lambda p: Path(p).name)).set_index("name")
    checked = differ = 0
    for link in photos[::every]:
        mine = np.asarray(Image.open(predicted / f"{link.stem}.png"))
        theirs = np.asarray(Image.open(io.BytesIO(rows.loc[link.name, "png"])))
        checked += 1
        differ += int(mine.shape != theirs.shape or not np.array_equal(mine, theirs))
    return checked, differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="folders of photos (their images/ sub-folder if any)")
    parser.add_argument("--n", type=int, default=1000, help="photos (default 1000)")
    parser.add_argument("--model", default="models/served", help="a served folder or an MLflow model URI")
    parser.add_argument("--tracking-uri", help="for a models:/ URI")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    parser.add_argument("--output", default="mask", choices=("mask", "cutout", "composite"))
    parser.add_argument("--executor-cores", type=int, default=4, help="cores per executor in the estimate")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bgremoval-spark-benchmark"))
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    photos = gather(args.folders, args.n, workdir / "photos")
    if Path(args.model, "serving.json").is_file():
        model, tracking = registered(Path(args.model).resolve(), workdir)
    else:
        model, tracking = args.model, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("BGREMOVAL_THREADS", None)  # predict: onnxruntime's own choice, every core; spark: one a task
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
    common = ["--model", model, "--output", args.output]
    predict_s = timed(["bgremoval", "predict", str(workdir / "photos"), str(workdir / "predicted"), *common,
                       "--quiet"], env)
    spark_s = timed(["bgremoval", "spark-cutout", str(workdir / "photos"), str(workdir / "spark.parquet"), *common,
                     "--master", args.master], env)
    checked, differ = same_masks(photos, workdir / "predicted", workdir / "spark.parquet", every=50)
    cores = os.cpu_count() if args.master in ("local[*]", "local") else int(args.master.strip("local[]") or 1)
    per_core = args.n / spark_s / cores
    executors = math.ceil(CATALOGUE / HOUR / per_core / args.executor_cores)
    result = {"photos": args.n, "model": model, "output": args.output, "master": args.master,
              "predict_seconds": round(predict_s, 1), "spark_seconds": round(spark_s, 1),
              "predict_photos_per_s": round(args.n / predict_s, 2), "spark_photos_per_s": round(args.n / spark_s, 2),
              "ratio": round(predict_s / spark_s, 3), "spark_photos_per_s_per_core": round(per_core, 3),
              "executors_for_100k_in_an_hour": executors, "executor_cores": args.executor_cores,
              "compared": checked, "differing": differ}
    print(f"\n{args.n} photos, {args.output}, {model}\n")
    print("| path | seconds | photos / s |")
    print("|---|---|---|")
    print(f"| bgremoval predict (one process, onnxruntime on {cores} cores) | {predict_s:.1f} | {args.n / predict_s:.2f} |")
    print(f"| bgremoval spark-cutout ({args.master}) | {spark_s:.1f} | {args.n / spark_s:.2f} |")
    print(f"\nspark / predict photos per second: {result['ratio']:.2f}")
    print(f"{CATALOGUE:,} photos in an hour at {per_core:.2f} photos / s per core: {executors} executors of "
          f"{args.executor_cores} cores ({math.ceil(CATALOGUE / HOUR / per_core)} cores)")
    print(f"masks compared: {checked}, differing: {differ}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
