"""The `bgremoval` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import yaml

from bgremoval import __version__
from bgremoval.quiet import import_tensorflow_quietly


def _params(path: Path) -> dict:
    """params.yaml is where every default lives; the CLI reads it rather than repeating it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        sys.exit(f"bgremoval: {path} not found; run from the project root or pass --params")


def _cmd_sample(args: argparse.Namespace) -> int:
    from bgremoval.sample import SampleSpec, generate_sample

    params = _params(args.params)
    spec = SampleSpec(**params["prepare"]["sample"])
    n = generate_sample(Path(args.out), spec, params["base"]["seed"])
    print(f"wrote {n} synthetic image/mask pairs to {args.out}/images and {args.out}/masks")
    return 0


def _metrics_json(params_path: Path) -> dict | None:
    """The evaluate stage's reports/metrics.json beside a params file, or None."""
    import json

    try:
        params = yaml.safe_load(Path(params_path).read_text())
        return json.loads((Path(params_path).parent / params["paths"]["reports"] / "metrics.json").read_text())
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def _default_refine(params_path: Path):
    """The refinement a bare .keras file is predicted with: the one the evaluate stage chose, else none."""
    from bgremoval.refine import Refine

    return Refine.from_dict((_metrics_json(params_path) or {}).get("refine"))


def _default_size(params_path: Path) -> int:
    """The input size a bare .keras file is predicted at: the serving size the evaluate stage used (its
    metrics.json, where tune or evaluate.size_choices may have picked it), else evaluate.size from
    params.yaml, else rembg's 320."""
    try:
        params = yaml.safe_load(Path(params_path).read_text())
    except (OSError, yaml.YAMLError):
        return 320
    try:
        return int(_metrics_json(params_path)["size"])
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return int(params["evaluate"]["size"])
    except (KeyError, TypeError, ValueError):
        return 320


def _outputs_for(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input file, output PNG) pairs: a folder's images (sorted) into OUT/, or one file into OUT."""
    from bgremoval.imageio import IMAGE_EXTENSIONS

    if inp.is_dir():
        files = sorted(p for p in inp.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        folder = out
    elif inp.is_file():
        files = [inp]
        if out.suffix.lower() == ".png" and not out.is_dir():
            return [(inp, out)]
        folder = out
    else:
        raise SystemExit(f"bgremoval predict: {inp} does not exist (give an image file or a folder of images)")
    pairs, taken = [], set()
    for f in files:
        target = folder / f"{f.stem}.png"
        if target in taken:  # photo.jpg and photo.png: keep both
            target = folder / f"{f.stem}.{f.suffix.lstrip('.').lower()}.png"
        taken.add(target)
        pairs.append((f, target))
    return pairs


def _cmd_predict(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from bgremoval import serving
    from bgremoval.imageio import ImageReadError, open_image

    try:
        opts = serving.options_from({"output": args.output, "threshold": args.threshold, "bg_color": args.bg_color})
    except serving.RequestError as exc:
        sys.exit(f"bgremoval predict: {exc}")
    pairs = _outputs_for(Path(args.input), Path(args.out))
    if not pairs:
        sys.exit(f"bgremoval predict: no images ({', '.join(_image_exts())}) in {args.input}")

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours is the one that counts
    import_tensorflow_quietly()
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    try:
        segmenter, max_pixels = serving.load(args.model, keras_size=args.size or _default_size(args.params),
                                             keras_refine=_default_refine(args.params))
    except Exception as exc:  # noqa: BLE001 - any load failure ends here with what to do next
        sys.exit(f"bgremoval predict: cannot load model {args.model!r}: {exc}\n"
                 "Pass --model models:/bgremoval@champion (after `dvc repro`), runs:/RUN_ID/model, an MLflow "
                 "model folder or a .keras file; --tracking-uri says where the registry is.")
    failed = []
    for src, dst in tqdm(pairs, desc="predict", unit="image", disable=len(pairs) < 2 or args.quiet):
        try:
            image = np.asarray(open_image(src, max_pixels).convert("RGB"), dtype=np.uint8)
        except ImageReadError as exc:
            failed.append(str(exc))
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        serving.render(image, segmenter(image), opts).save(dst)
    done = len(pairs) - len(failed)
    for reason in failed:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"wrote {done} {opts.output} PNG{'s' if done != 1 else ''} to {args.out}"
          + (f"; {len(failed)} unreadable file(s) skipped (listed above)" if failed else ""))
    return 1 if failed else 0


def _image_exts() -> tuple[str, ...]:
    from bgremoval.imageio import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _cmd_tune_worker(args: argparse.Namespace) -> int:
    import os

    import mlflow
    import optuna

    from bgremoval import tracking
    from bgremoval.tune import DONE, count, open_study, optimise, queue_each_choice
    from bgremoval.tune_job import STORAGE_ENV, TuneJob

    logging.getLogger("bgremoval").setLevel(logging.INFO)
    import_tensorflow_quietly()
    params = _params(args.params)
    if args.storage:
        os.environ[STORAGE_ENV] = args.storage
    try:
        job = TuneJob.from_params(params)
    except FileNotFoundError as exc:
        sys.exit(f"bgremoval tune-worker: {exc}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(job.cfg, params["base"]["seed"])
    queue_each_choice(study, params["tune"]["space"], list(params["tune"]["try_each"]), job.cfg.n_trials)
    where = job.cfg.storage.split("@")[-1]
    print(f"joined study {job.cfg.study_name} in {where}: {count(study, DONE)} of {job.cfg.n_trials} trials done", flush=True)
    tracking.configure(params["mlflow"]["tracking_uri"], params["mlflow"]["experiment"])
    with mlflow.start_run(run_id=job.parent_run_id(study)):
        optimise(study, job.cfg, params["tune"]["space"], job.train_one, progress=not args.quiet)
    print(f"study {job.cfg.study_name}: {count(study, DONE)} of {job.cfg.n_trials} trials done; "
          "`dvc repro` now reads it (the tune stage runs whatever is left)", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Sub-commands of the CLI."""
    parser = argparse.ArgumentParser(prog="bgremoval", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bgremoval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="draw the built-in synthetic sample (as configured in params.yaml) into a folder")
    sample.add_argument("out", help="folder to create images/ and masks/ in")
    sample.add_argument("--params", default="params.yaml", help="params file to read prepare.sample and base.seed from")
    sample.set_defaults(func=_cmd_sample)

    predict = sub.add_parser(
        "predict", help="cut out an image or a folder of images with a trained model",
        description="Writes <stem>.png at each input's size: the mask (8-bit), the RGBA cut-out, or a composite "
                    "on --bg-color. Unreadable files are reported and skipped; the exit code is 1 if any were.")
    predict.add_argument("input", help="an image file or a folder of images (jpg, png, webp, bmp)")
    predict.add_argument("out", help="output folder (or, for one input file, a .png path)")
    predict.add_argument("--model", default="models:/bgremoval@champion",
                         help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, an MLflow model "
                              "folder, or a .keras file (default: %(default)s)")
    predict.add_argument("--output", choices=("mask", "cutout", "composite"), default="cutout",
                         help="what to write (default: %(default)s)")
    predict.add_argument("--bg-color", default="#ffffff", help="composite background: '#rrggbb', 'r,g,b' or a name")
    predict.add_argument("--threshold", type=float, default=None,
                         help="binarise the mask at this probability (default: soft edges)")
    predict.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking/registry URI for models:/ and runs:/ (default: $MLFLOW_TRACKING_URI, "
                              "else sqlite:///mlflow.db as params.yaml sets)")
    predict.add_argument("--size", type=int, default=None,
                         help="input size for a bare .keras file (default: the serving size in reports/metrics.json, "
                              "else evaluate.size from --params, else 320)")
    predict.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    worker = sub.add_parser(
        "tune-worker", help="run tuning trials for this project's study, alongside other workers",
        description="Joins the tune stage's Optuna study (the same params and augmented shards give the same study) "
                    "in a shared storage and runs trials until the study holds tune.n_trials finished ones. Start "
                    "as many as you like, on one machine or many; each trial is a nested run under the study's "
                    "MLflow parent run ($MLFLOW_TRACKING_URI). Then `dvc repro` reads the finished study.")
    worker.add_argument("--storage", default=None,
                        help=f"SQLAlchemy URL of the study storage, e.g. postgresql://host/optuna "
                             f"(default: ${{BGREMOVAL_TUNE_STORAGE}}, else tune.storage)")
    worker.add_argument("--params", default="params.yaml", help="the project's params file (default: %(default)s)")
    worker.add_argument("--quiet", action="store_true", help="no progress bar")
    worker.set_defaults(func=_cmd_tune_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bgremoval` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
