"""The `bgremoval` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from bgremoval import __version__


def _params(path: Path) -> dict:
    """params.yaml is where every default lives; the CLI reads it rather than repeating it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        sys.exit(f"bgremoval: {path} not found; run from the project root or pass --params")


def _cmd_sample(args: argparse.Namespace) -> int:
    from bgremoval.data.sample import SampleSpec, generate_sample

    params = _params(args.params)
    n = generate_sample(Path(args.out), SampleSpec(**params["prepare"]["sample"]), params["base"]["seed"])
    print(f"wrote {n} synthetic image/mask pairs to {args.out}/images and {args.out}/masks")
    return 0


def _default_model(params_path: Path) -> tuple[str, str | None]:
    """Where `predict` finds a model when --model is not given: the registry's champion, in the tracking
    store params.yaml names (MLFLOW_TRACKING_URI wins)."""
    params = _params(params_path)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"]
    return f"models:/{params['register']['model_name']}@champion", uri


def _outputs_for(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input file, output PNG) pairs: a folder's images (sorted) into OUT/, or one file into OUT."""
    from bgremoval.images import IMAGE_EXTENSIONS

    if inp.is_dir():
        files = sorted(p for p in inp.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    elif inp.is_file():
        files = [inp]
        if out.suffix.lower() == ".png" and not out.is_dir():
            return [(inp, out)]
    else:
        raise SystemExit(f"bgremoval predict: {inp} does not exist (give an image file or a folder of images)")
    pairs, taken = [], set()
    for f in files:
        target = out / f"{f.stem}.png"
        if target in taken:  # photo.jpg and photo.png: keep both
            target = out / f"{f.stem}.{f.suffix.lstrip('.').lower()}.png"
        taken.add(target)
        pairs.append((f, target))
    return pairs


def _cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from bgremoval.images import IMAGE_EXTENSIONS, ImageReadError, open_image
    from bgremoval.serving.load import load
    from bgremoval.serving.options import KINDS, options_from
    from bgremoval.serving.render import render

    pairs = _outputs_for(Path(args.input), Path(args.out))
    if not pairs:
        sys.exit(f"bgremoval predict: no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.input}")
    model, tracking_uri = (args.model, args.tracking_uri) if args.model else _default_model(args.params)
    if "://" in model or model.startswith(("models:", "runs:")):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours is the one that counts
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri or tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    try:
        served = load(model)
    except Exception as exc:  # noqa: BLE001 - any load failure ends here with what to do next
        sys.exit(f"bgremoval predict: cannot load model {model!r}: {exc}\n"
                 "Pass --model models/served (after `dvc repro`), models:/bgremoval@champion, runs:/RUN_ID/model or "
                 "an MLflow model folder; --tracking-uri says where the registry is.")
    request = {name: getattr(args, name) for name in KINDS}  # the flags are the request options, by name
    try:
        if args.bg_image:
            request["bg_image"] = np.asarray(open_image(Path(args.bg_image), served.max_pixels, label=args.bg_image,
                                                        limit_name="serve.max_pixels").convert("RGB"), dtype=np.uint8)
        opts = options_from(request, served.config.defaults, served.max_pixels)
    except (ImageReadError, ValueError) as exc:
        sys.exit(f"bgremoval predict: {'--bg-image ' if isinstance(exc, ImageReadError) else ''}{exc}")
    predictor = served.predictor_for(opts)
    failed = []
    for src, dst in tqdm(pairs, desc="predict", unit="image", disable=len(pairs) < 2 or args.quiet):
        try:
            image = np.asarray(open_image(src, served.max_pixels).convert("RGB"), dtype=np.uint8)
        except ImageReadError as exc:
            failed.append(str(exc))
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        render(image, predictor(image), opts).save(dst)
    done = len(pairs) - len(failed)
    for reason in failed:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"wrote {done} {opts.output} PNG{'s' if done != 1 else ''} to {args.out}"
          + (f"; {len(failed)} unreadable file(s) skipped (listed above)" if failed else ""))
    return 1 if failed else 0


def _cmd_tune_worker(args: argparse.Namespace) -> int:
    from bgremoval.quiet import import_tensorflow_quietly

    logging.getLogger("bgremoval").setLevel(logging.INFO)
    import_tensorflow_quietly()
    import optuna

    from bgremoval import tracking
    from bgremoval.training.tune import DONE, count, open_study, optimise, queue_each_choice
    from bgremoval.training.tune_job import STORAGE_ENV, TuneJob

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
    with tracking.run(run_id=job.parent_run_id(study)):
        optimise(study, job.cfg, params["tune"]["space"], job.train_one, progress=not args.quiet)
    print(f"study {job.cfg.study_name}: {count(study, DONE)} of {job.cfg.n_trials} trials done; "
          "`dvc repro` now reads it (the tune stage runs whatever is left)", flush=True)
    return 0


def _settings(extra: list[str], params: dict) -> list[str]:
    """`--key value` pairs (how `mlflow run -P key=value` passes parameters) as `key=value`, each key checked
    against params.yaml."""
    if len(extra) % 2 or not all(k.startswith("--") for k in extra[::2]):
        raise SystemExit(f"bgremoval run: expected --key value pairs of params.yaml settings, got {' '.join(extra)}")
    settings = []
    for flag, value in zip(extra[::2], extra[1::2]):
        key, node = flag[2:], params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SystemExit(f"bgremoval run: {key} is not a setting in params.yaml (e.g. train.epochs, export.sizes)")
            node = node[part]
        settings.append(f"{key}={value}")
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    import subprocess

    stage = args.rest[0] if args.rest and not args.rest[0].startswith("--") else None
    settings = _settings(args.rest[1:] if stage else args.rest, _params(args.params))
    cmd = ["dvc", "exp", "run", *([stage] if stage else []), *(f"--set-param={s}" for s in settings)]
    print(" ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def build_parser() -> argparse.ArgumentParser:
    """Sub-commands of the CLI. Every option without a value given takes its default from params.yaml
    (or, for predict's output options, from the served model's config, which params' serve.defaults set)."""
    from bgremoval.serving.options import BACKGROUNDS, OUTPUTS

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
                    "on a new background. Unreadable files are reported and skipped; the exit code is 1 if any "
                    "were. The options below are the server's request params of the same names; each one not "
                    "given takes the model's serve.defaults.")
    predict.add_argument("input", help="an image file or a folder of images (jpg, png, webp, bmp)")
    predict.add_argument("out", help="output folder (or, for one input file, a .png path)")
    predict.add_argument("--model", help="models/served (the export stage's folder: no MLflow needed), "
                                         "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or an MLflow "
                                         "model folder (default: models:/<register.model_name>@champion)")
    predict.add_argument("--output", choices=OUTPUTS, help="what to write")
    predict.add_argument("--threshold", type=float,
                         help="binarise the mask at this probability; negative: soft edges")
    predict.add_argument("--background", choices=BACKGROUNDS,
                         help="a composite's background: --bg-color, the photo blurred (--bg-blur) or --bg-image")
    predict.add_argument("--bg-color", help="background color: '#rrggbb', 'r,g,b' or a name")
    predict.add_argument("--bg-image", metavar="FILE", help="background image: scaled to cover each photo, centre-cropped")
    predict.add_argument("--bg-blur", type=float, metavar="PERCENT",
                         help="background blur: Gaussian sigma in %% of the photo's shorter side, in (0, 25]")
    predict.add_argument("--estimate-foreground", action=argparse.BooleanOptionalAction,
                         help="cut-outs and composites take the subject's own colours at soft edges")
    predict.add_argument("--matting", action=argparse.BooleanOptionalAction,
                         help="re-estimate the edge band's alpha by closed-form matting (hair, fur; slower)")
    predict.add_argument("--main-object", action=argparse.BooleanOptionalAction,
                         help="keep only the main object, or (--no-main-object) every one; neither: the model's own "
                              "refinement")
    predict.add_argument("--sharpen", type=float, metavar="K",
                         help="edge sharpening k > 0 (1: none); 0 or negative: the model's own refinement")
    predict.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ and runs:/ "
                                                "(default: $MLFLOW_TRACKING_URI, else params.yaml's mlflow.tracking_uri)")
    predict.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    worker = sub.add_parser(
        "tune-worker", help="run tuning trials for this project's study, alongside other workers",
        description="Joins the tune stage's Optuna study (the same params and augmented shards give the same study) "
                    "in a shared storage and runs trials until the study holds tune.n_trials finished ones. Start "
                    "as many as you like, on one machine or many; each trial is a nested run under the study's "
                    "MLflow parent run ($MLFLOW_TRACKING_URI). Then `dvc repro` reads the finished study.")
    worker.add_argument("--storage", help="SQLAlchemy URL of the study storage, e.g. postgresql://host/optuna "
                                          "(default: $BGREMOVAL_TUNE_STORAGE, else tune.storage)")
    worker.add_argument("--params", default="params.yaml", help="the project's params file (default: %(default)s)")
    worker.add_argument("--quiet", action="store_true", help="no progress bar")
    worker.set_defaults(func=_cmd_tune_worker)

    pipeline = sub.add_parser(
        "run", usage="bgremoval run [STAGE] [--KEY VALUE ...]",
        help="run the pipeline (or up to STAGE) as a DVC experiment, with params.yaml settings changed",
        description="`dvc exp run [STAGE] -S key=value ...`: what `mlflow run .` calls (its -P key=value parameters "
                    "arrive as --key value). The changed settings are written to params.yaml, and the experiment is "
                    "listed by `dvc exp show`; under `mlflow run`, every stage's MLflow run nests under its run.")
    pipeline.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    # [STAGE] [--KEY VALUE ...]: free-form, collected by main() (argparse cannot declare arbitrary --KEY options)
    pipeline.set_defaults(func=_cmd_run, rest=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bgremoval` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        args.rest = extra  # [STAGE] [--KEY VALUE ...]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
