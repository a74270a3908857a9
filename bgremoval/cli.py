"""The `bgremoval` command line."""

from __future__ import annotations

import argparse
import json
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


STDIO = "-"  # predict's input or output: stdin, stdout


def _images_under(folder: Path, out: Path) -> list[Path]:
    """The images (by extension) anywhere under a folder, sorted; none from inside OUT when it lies within."""
    from bgremoval.images import IMAGE_EXTENSIONS

    skip = out.resolve() if str(out) != STDIO else None
    files = []
    for root, dirs, names in os.walk(folder):  # symbolic links to folders are not followed: no loops
        dirs[:] = [d for d in dirs if skip is None or (Path(root) / d).resolve() != skip]
        files += [Path(root) / n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS
                  and (Path(root) / n).is_file()]
    return sorted(files)


def _open_model(args: argparse.Namespace, command: str):
    """The served model --model names (default: the registry's champion), and that name; or an exit saying
    what to pass."""
    from bgremoval.serving.load import load

    model, tracking_uri = (args.model, args.tracking_uri) if args.model else _default_model(args.params)
    tracking_uri = args.tracking_uri or tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if "://" in model or model.startswith(("models:", "runs:")):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # ours is the one that counts
    try:
        return load(model, tracking_uri), model
    except Exception as exc:  # noqa: BLE001 - any load failure ends here with what to do next
        sys.exit(f"bgremoval {command}: cannot load model {model!r}: {exc}\n"
                 "Pass --model models/served (after `dvc repro`), models:/bgremoval@champion, runs:/RUN_ID/model or "
                 "an MLflow model folder; --tracking-uri says where the registry is.")


def _outputs_for(inp: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input file, output PNG) pairs: a folder's images, found in its sub-folders too (sorted), into the same
    tree under OUT/; or one file (or `-`, stdin) into OUT, a .png path or `-` (stdout)."""
    single = str(inp) == STDIO or inp.is_file()
    if not single and not inp.is_dir():
        raise SystemExit(f"bgremoval predict: {inp} does not exist (give an image file, a folder of images, a video "
                         "or - for stdin)")
    if single and (str(out) == STDIO or (out.suffix.lower() == ".png" and not out.is_dir())):
        return [(inp, out)]
    if str(out) == STDIO:
        raise SystemExit(f"bgremoval predict: the images of folder {inp} cannot all go to stdout; name an output folder")
    files = _images_under(inp, out) if inp.is_dir() else [inp]
    pairs, taken = [], set()
    for f in files:
        folder = out / f.parent.relative_to(inp) if inp.is_dir() else out
        stem = "stdin" if str(f) == STDIO else f.stem
        target = folder / f"{stem}.png"
        if target in taken:  # photo.jpg and photo.png: keep both
            target = folder / f"{stem}.{f.suffix.lstrip('.').lower()}.png"
        taken.add(target)
        pairs.append((f, target))
    return pairs


def _smoothing(args: argparse.Namespace) -> float:
    """A video's temporal smoothing: --smooth, else params.yaml's video.smoothing (checked either way)."""
    from bgremoval.video import TemporalSmoother

    smoothing = args.smooth
    if smoothing is None:
        if not Path(args.params).is_file():
            sys.exit(f"bgremoval predict: {args.params} (where video.smoothing is set) not found; run from the "
                     "project root, or pass --smooth S (0: off)")
        smoothing = (_params(args.params).get("video") or {}).get("smoothing")
        if smoothing is None:
            sys.exit(f"bgremoval predict: {args.params} sets no video.smoothing; add it, or pass --smooth S (0: off)")
    try:
        TemporalSmoother(smoothing)
    except (TypeError, ValueError) as exc:
        sys.exit(f"bgremoval predict: --smooth: {exc}")
    return float(smoothing)


def _read(src: Path, max_pixels: int):
    """An input image as (H, W, 3) uint8 RGB: a file, or `-`, the bytes on stdin."""
    from bgremoval.images import ImageReadError, load_rgb
    from bgremoval.serving.options import MAX_PIXELS_NAME

    if str(src) != STDIO:
        return load_rgb(src, max_pixels, limit_name=MAX_PIXELS_NAME)
    if sys.stdin is None or sys.stdin.isatty():
        raise ImageReadError("stdin: is a terminal, not an image; pipe one in (bgremoval predict - out.png < photo.jpg)")
    return load_rgb(sys.stdin.buffer.read(), max_pixels, label="stdin", limit_name=MAX_PIXELS_NAME)


def _predict_video(args: argparse.Namespace, src: Path, served, opts, smoothing: float) -> int:
    """One video cut out frame by frame (bgremoval.video), written beside its audio."""
    import av

    from bgremoval.video import cut_video, output_path

    try:
        dst = output_path(src, Path(args.out), opts.output)
    except ValueError as exc:
        sys.exit(f"bgremoval predict: {exc}")
    try:
        n = cut_video(src, dst, served.predictor_for(opts), opts, smoothing, progress=not args.quiet)
    except (av.FFmpegError, ValueError) as exc:
        print(f"bgremoval predict: {src}: cannot be cut out as a video ({exc})", file=sys.stderr)
        return 1
    print(f"wrote {n} {opts.output} frame{'s' if n != 1 else ''} to {dst} (smoothing {smoothing:g})")
    return 0


def _cmd_spark_cutout(args: argparse.Namespace) -> int:
    from bgremoval.batch.spark_cutout import main as spark_main

    return spark_main(args)


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bgremoval.images import IMAGE_EXTENSIONS, ImageReadError
    from bgremoval.serving.options import KINDS, options_from
    from bgremoval.serving.render import png_bytes, render
    from bgremoval.video import is_video

    inp, to_stdout = Path(args.input), args.out == STDIO
    video = args.input != STDIO and not inp.is_dir() and is_video(inp)
    if video:
        if to_stdout:
            sys.exit("bgremoval predict: a video cannot be written to stdout; name a file (.webm, .mov, .mp4, .mkv) "
                     "or a folder")
        smoothing = _smoothing(args)
    else:
        pairs = _outputs_for(inp, Path(args.out))
        if not pairs:
            sys.exit(f"bgremoval predict: no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.input} or its folders")
    served, _ = _open_model(args, "predict")
    request = {name: getattr(args, name) for name in KINDS}  # the flags are the request options, by name
    try:
        if args.bg_image:
            request["bg_image"] = _read(Path(args.bg_image), served.max_pixels)
        opts = options_from(request, served.config.defaults, served.max_pixels)
    except (ImageReadError, ValueError) as exc:
        sys.exit(f"bgremoval predict: {'--bg-image ' if isinstance(exc, ImageReadError) else ''}{exc}")
    if video:
        return _predict_video(args, inp, served, opts, smoothing)
    predictor = served.predictor_for(opts)
    failed = []
    for src, dst in tqdm(pairs, desc="predict", unit="image", disable=len(pairs) < 2 or args.quiet or to_stdout):
        try:
            image = _read(src, served.max_pixels)
        except ImageReadError as exc:
            failed.append(str(exc))
            continue
        picture = render(image, predictor(image), opts)
        if str(dst) == STDIO:
            sys.stdout.buffer.write(png_bytes(picture))
            sys.stdout.flush()
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            picture.save(dst)
    done = len(pairs) - len(failed)
    for reason in failed:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"wrote {done} {opts.output} PNG{'s' if done != 1 else ''} to {'stdout' if to_stdout else args.out}"
          + (f"; {len(failed)} unreadable file(s) skipped (listed above)" if failed else ""),
          file=sys.stderr if to_stdout else sys.stdout)
    return 1 if failed else 0


def _cmd_draft(args: argparse.Namespace) -> int:
    from bgremoval.labelling import folders
    from bgremoval.labelling.drafts import contact_sheet, draft_folder, open_drafter, photos_to_draft
    from bgremoval.weights import WeightsError

    params = _params(args.params)
    cfg, folder = params["draft"], Path(args.folder)
    try:
        photos = photos_to_draft(folder, args.all)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"bgremoval draft: {exc}")
    if not photos:
        print(f"bgremoval draft: every photo in {folder / folders.IMAGES} has a mask in {folder / folders.MASKS}; "
              "nothing to draft (--all drafts them too)")
        return 0
    champion, tracking_uri = _default_model(args.params)
    model = args.model or cfg["model"]
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a registry model: ours is the bar that counts
    try:
        drafter = open_drafter(model, champion, args.tracking_uri or tracking_uri)
    except (WeightsError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"bgremoval draft: cannot open the model to draft with: {exc}")
    done = draft_folder(folder, drafter, photos, params["prepare"]["max_pixels"], progress=not args.quiet)
    worst = args.worst if args.worst is not None else cfg["worst"]
    drawn = contact_sheet(done.ranking, worst, params["prepare"]["max_pixels"], folder / folders.CONTACT_SHEET)
    for reason in done.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"drafted {len(done.ranking)} photo(s) with {drafter.name} into {folder / folders.DRAFTS}/ (never read as "
          f"a person's masks); ranking {folder / folders.RANKING}, most correction first"
          + (f"; the worst {drawn} in {folder / folders.CONTACT_SHEET}" if drawn else "")
          + (f"; {len(done.skipped)} unreadable photo(s) skipped (listed above)" if done.skipped else ""))
    return 1 if done.skipped else 0


def _cmd_suspects(args: argparse.Namespace) -> int:
    from bgremoval.data.manifest import build_manifest, pair_files
    from bgremoval.data.masks import MaskChoices
    from bgremoval.data.validation import scorable
    from bgremoval.labelling import suspects
    from bgremoval.labelling.drafts import best_at_hand, open_model
    from bgremoval.weights import WeightsError

    params = _params(args.params)
    prepare, cfg, folder = params["prepare"], params["validate"]["suspects"], Path(args.folder)
    try:
        pairs = [p for p in pair_files(folder) if p[1] is not None and p[2] is not None]
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"bgremoval suspects: {exc}")
    manifest = build_manifest(pairs, prepare["max_pixels"], MaskChoices(prepare["jpeg_masks"], prepare["resize_masks"]))
    rows = scorable(manifest, params["validate"]["min_contrast"])
    unread = [f"{r['name']}: {r['image_error'] or r['mask_error']}" for _, r in manifest.iterrows()
              if r["image_error"] or r["mask_error"]]
    if rows.empty:
        sys.exit(f"bgremoval suspects: {folder} holds no pair of a photo and a mask a person drew to check")
    champion, tracking_uri = _default_model(args.params)
    tracking_uri = args.tracking_uri or tracking_uri
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    model = args.model or params["draft"]["model"] or best_at_hand(champion, tracking_uri)
    try:
        predict = open_model(model, tracking_uri)
    except (WeightsError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"bgremoval suspects: cannot open the model {model}: {exc}")
    ranking, more = suspects.score_masks(rows, predict, model, prepare["max_pixels"], progress=not args.quiet)
    unread += more
    ranking.to_csv(folder / suspects.RANKING, index=False, float_format="%.6f")
    above = suspects.flag_above(ranking["disagreement"], cfg["z"])
    flagged = ranking[ranking["disagreement"] > above]
    worst = args.worst if args.worst is not None else cfg["worst"]
    drawn = suspects.contact_sheet(ranking, worst, predict, prepare["max_pixels"], folder / suspects.CONTACT_SHEET)
    for reason in unread:
        print(f"skipped {reason}", file=sys.stderr)
    print(f"ranked {len(ranking)} mask(s) a person drew by their disagreement with {model}'s (1 - IoU; median "
          f"{ranking['disagreement'].median():.3f}) in {folder / suspects.RANKING}, the most suspect first"
          + (f"; the worst {drawn} in {folder / suspects.CONTACT_SHEET}" if drawn else ""))
    print(f"{len(flagged)} far above the rest (over {above:.3f})" + (": " + ", ".join(flagged["name"][:10]) if len(flagged) else "")
          + f". A person checks them in Label Studio: `bgremoval label push {folder} --suspects`")
    return 1 if unread else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bgremoval.demo import launch

    served, model = _open_model(args, "demo")
    try:
        launch(served, model, args.host, args.port)
    except OSError as exc:  # the port is taken, or the host is not this machine's
        sys.exit(f"bgremoval demo: cannot listen on {args.host or '127.0.0.1'}:{args.port or 'a free port'}: {exc}")
    return 0


def _cmd_train_worker(args: argparse.Namespace) -> int:
    from bgremoval.quiet import import_tensorflow_quietly

    logging.getLogger("bgremoval").setLevel(logging.INFO)
    import_tensorflow_quietly()

    import keras

    from bgremoval import tracking
    from bgremoval.training.distribute import make_strategy
    from bgremoval.training.session import TrainSetup, train_worker

    params = _params(args.params)
    best = Path(params["paths"]["best_params"])
    if not best.exists():
        sys.exit(f"bgremoval train-worker: {best} not found: every machine needs the chief's tune result and the "
                 "augmented shards (`dvc pull`, or the same `dvc repro tune`)")
    setup = TrainSetup.from_params(params, json.loads(best.read_text())["apply"])
    if setup.distribute.strategy != "multi_worker":
        sys.exit(f"bgremoval train-worker: distribute.strategy is {setup.distribute.strategy!r}; a worker trains only "
                 "with multi_worker (and $TF_CONFIG naming this machine)")
    try:
        strategy = make_strategy(setup.distribute)
        keras.utils.set_random_seed(setup.seed)
        summary = train_worker(setup, strategy=strategy,
                               data_fingerprint=tracking.fingerprint(list(setup.shards.glob("*.tfrecord"))))
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        sys.exit(f"bgremoval train-worker: {exc}")
    print(f"{summary['task']}: trained {summary['epochs_run']} epoch(s) with the chief; val "
          f"{ {k: round(v, 4) for k, v in summary['val'].items()} } (the chief logs the run and saves the model)",
          flush=True)
    return 0


def _cmd_tune_worker(args: argparse.Namespace) -> int:
    from bgremoval.quiet import import_tensorflow_quietly

    logging.getLogger("bgremoval").setLevel(logging.INFO)
    import_tensorflow_quietly()

    from bgremoval.training.study import DONE, count
    from bgremoval.training.tune_job import STORAGE_ENV, TuneJob, run_job

    params = _params(args.params)
    if args.storage:
        os.environ[STORAGE_ENV] = args.storage
    try:
        job = TuneJob.from_params(params)
    except FileNotFoundError as exc:
        sys.exit(f"bgremoval tune-worker: {exc}")
    study, _ = run_job(job, progress=not args.quiet)  # what the tune stage runs
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


LABEL_STUDIO_VENV = Path(".venv-label-studio")  # `make label-studio` installs Label Studio here, apart from ours
LABEL_STUDIO_DATA = Path(".label-studio")  # its database and uploads, unless $LABEL_STUDIO_BASE_DATA_DIR says


def _cmd_label_start(args: argparse.Namespace) -> int:
    import shutil

    from bgremoval.labelling.studio import DATABASE, KEY_ENV, LOCAL_HOST, LOCAL_PORT, StudioError, start_command

    installed = LABEL_STUDIO_VENV / "bin" / "label-studio"
    program = str(installed) if installed.is_file() else shutil.which("label-studio")
    if not program:
        sys.exit(f"bgremoval label start: {installed} not found: `make label-studio` installs Label Studio there "
                 "(in a venv of its own), from the project root")
    data_dir = Path(os.environ.get("LABEL_STUDIO_BASE_DATA_DIR") or LABEL_STUDIO_DATA).resolve()
    username = args.username or os.environ.get("LABEL_STUDIO_USERNAME")
    password = args.password or os.environ.get("LABEL_STUDIO_PASSWORD")
    api_key = os.environ.get(KEY_ENV)
    if not (data_dir / DATABASE).exists():  # the first start creates the user, with this token
        if not (username and password):
            sys.exit("bgremoval label start: the first start creates Label Studio's user: pass --username EMAIL and "
                     "--password PASSWORD (or set LABEL_STUDIO_USERNAME and LABEL_STUDIO_PASSWORD)")
        if not api_key:
            sys.exit(f"bgremoval label start: {KEY_ENV} is not set; the first start gives the user that API token, "
                     f"which push and pull use (e.g. export {KEY_ENV}=$(python -c 'import secrets; "
                     "print(secrets.token_hex(20))'))")
    port = args.port or LOCAL_PORT
    try:
        argv, env = start_command(program, port=port, data_dir=data_dir, username=username, password=password,
                                  api_key=api_key, environ=os.environ)
    except StudioError as exc:
        sys.exit(f"bgremoval label start: {exc}")
    print(f"Label Studio {program} on http://{LOCAL_HOST}:{port}, its data in {data_dir} (the first start takes "
          "about a minute); Ctrl-C stops it", flush=True)
    os.execve(program, argv, env)  # it becomes this process: a signal to stop reaches the server itself


def _cmd_label_push(args: argparse.Namespace) -> int:
    from bgremoval.labelling.studio import StudioError, connect, project_title, push

    folder = Path(args.folder)
    if not folder.is_dir():
        sys.exit(f"bgremoval label push: {folder} is not a folder (a data folder with images/ and drafts/)")
    if args.limit is not None and args.limit < 1:
        sys.exit(f"bgremoval label push: --limit {args.limit}: give a positive number of photos")
    max_pixels = _params(args.params)["prepare"]["max_pixels"]
    try:
        studio = connect(args.url)
        done = push(studio, folder, project_title(folder, args.project, args.suspects), max_pixels, args.limit,
                    progress=not args.quiet, suspects=args.suspects)
    except (StudioError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"bgremoval label push: {exc}")
    for reason in done.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    project = done.project
    how = (", most suspect first, each with its mask as a prediction" if args.suspects else
           ", worst first, each with its draft as a prediction") if done.imported else ""
    print(f"pushed {len(done.imported)} photo(s) to {'new ' if project.created else ''}project {project.title!r} "
          f"(id {project.id}) at {studio.url}{how}; {done.already} already there, {done.masked} with a person's mask"
          + (f", {done.left} left for a later push (--limit)" if done.left else "")
          + (f"; {len(done.skipped)} skipped (listed above)" if done.skipped else ""))
    print(f"correct them at {studio.url}/projects/{project.id}/data, then `bgremoval label pull {folder}`")
    return 1 if done.skipped else 0


def _cmd_label_pull(args: argparse.Namespace) -> int:
    from bgremoval.labelling import folders
    from bgremoval.labelling.studio import StudioError, connect, project_title, pull

    folder = Path(args.folder)
    if not folder.is_dir():
        sys.exit(f"bgremoval label pull: {folder} is not a folder (the data folder that was pushed)")
    try:
        studio = connect(args.url)
        done = pull(studio, folder, project_title(folder, args.project, args.suspects), progress=not args.quiet)
    except (StudioError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"bgremoval label pull: {exc}")
    for reason in done.failed:
        print(f"not written: {reason}", file=sys.stderr)
    print(f"wrote {len(done.written)} mask(s) to {folder / folders.MASKS}/ from project {done.project.title!r} "
          f"(id {done.project.id}); {done.skipped} skipped and {done.untouched} untouched in Label Studio keep "
          "their drafts" + (f"; {len(done.failed)} could not be written (listed above)" if done.failed else ""))
    return 1 if done.failed else 0


def _model_at_hand_options(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that run the best model at hand over a folder (draft, suspects)."""
    parser.add_argument("--model", help="u2net, u2netp, models/served, models:/NAME@ALIAS, runs:/RUN_ID/model or an "
                                        "MLflow model folder (default: params.yaml draft.model, else the best at hand)")
    parser.add_argument("--tracking-uri", help="MLflow tracking/registry URI where the champion is looked up "
                                               "(default: $MLFLOW_TRACKING_URI, else params.yaml's mlflow.tracking_uri)")
    parser.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """Sub-commands of the CLI. Every option without a value given takes its default from params.yaml
    (or, for predict's output options, from the served model's config, which params' serve.defaults set)."""
    from bgremoval.serving.options import add_option_flags

    parser = argparse.ArgumentParser(prog="bgremoval", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bgremoval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sample = sub.add_parser("sample", help="draw the built-in synthetic sample (as configured in params.yaml) into a folder")
    sample.add_argument("out", help="folder to create images/ and masks/ in")
    sample.add_argument("--params", default="params.yaml", help="params file to read prepare.sample and base.seed from")
    sample.set_defaults(func=_cmd_sample)

    predict = sub.add_parser(
        "predict", help="cut out an image, a folder of images or a video with a trained model",
        description="Writes <stem>.png at each input's size: the mask (8-bit), the RGBA cut-out, or a composite "
                    "on a new background; a folder's images, in its sub-folders too, go to the same tree under "
                    "OUT. Unreadable files are reported and skipped; the exit code is 1 if any were. `-` reads "
                    "one image from stdin or writes its PNG to stdout. A video (mp4, mov, mkv, webm, avi, or "
                    "whatever PyAV opens) is cut out frame by frame at its size and frame rate, its audio kept: a "
                    "cut-out to .webm (VP9 with alpha) or .mov (ProRes 4444), a mask or composite to .mp4 "
                    "(H.264) or .webm. The options below but --smooth are the server's request params of the "
                    "same names; each one not given takes the model's serve.defaults.")
    predict.add_argument("input", help="an image file, a folder of images (jpg, png, webp, bmp), a video, or - (stdin)")
    predict.add_argument("out", help="output folder; for one image a .png path or - (stdout); for a video a "
                                     ".webm/.mov/.mp4/.mkv/.avi path")
    predict.add_argument("--model", help="models/served (the export stage's folder: no MLflow needed), "
                                         "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or an MLflow "
                                         "model folder (default: models:/<register.model_name>@champion)")
    add_option_flags(predict)
    predict.add_argument("--smooth", type=float, metavar="S",
                         help="videos: each pixel's mask keeps weight S in [0, 1) of the previous frame's where the "
                              "picture did not change, against flicker (0: off; default: params.yaml's "
                              "video.smoothing)")
    predict.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ and runs:/ "
                                                "(default: $MLFLOW_TRACKING_URI, else params.yaml's mlflow.tracking_uri)")
    predict.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    predict.add_argument("--quiet", action="store_true", help="no progress bar (none when writing to stdout)")
    predict.set_defaults(func=_cmd_predict)

    draft = sub.add_parser(
        "draft", help="draft masks for a folder of photos, ranked by how much correction each probably needs",
        description="Drafts a mask for every photo in FOLDER/images/ that has no mask in FOLDER/masks/ yet, with "
                    "the best model at hand (the registry's champion, else stock U²-Net, else stock U²-NetP; "
                    "params.yaml draft.model). Drafts go to FOLDER/drafts/ (tagged as drafts in the PNG: never "
                    "read as a person's masks); FOLDER/drafts.csv ranks them by an uncertainty score, most "
                    "correction probably needed first; FOLDER/drafts_worst.png shows the worst. Unreadable "
                    "photos are named and skipped; the exit code is 1 if any were. Next: correct the worst in "
                    "Label Studio (`bgremoval label push FOLDER`).")
    draft.add_argument("folder", help="a data folder with images/ (masks/ may hold the masks a person already has)")
    draft.add_argument("--all", action="store_true", help="draft the photos that have a mask in masks/ too")
    draft.add_argument("--worst", type=int, metavar="N",
                       help="drafts in the contact sheet (default: params.yaml draft.worst)")
    _model_at_hand_options(draft)
    draft.set_defaults(func=_cmd_draft)

    suspects = sub.add_parser(
        "suspects", help="rank the masks a person drew by how much a model disagrees with them",
        description="Compares every mask in FOLDER/masks/ that a person drew (drafts are left out) with the mask "
                    "the best model at hand (as for `draft`) makes of its photo: 1 - IoU at 0.5. FOLDER/suspects.csv "
                    "ranks them, the most suspect first; FOLDER/suspects_worst.png shows the worst (photo, its mask, "
                    "the model's). Those far above the rest (params.yaml validate.suspects.z) are named. A "
                    "report: nothing is changed. Next: `bgremoval label push FOLDER --suspects`, where a person "
                    "checks them. Unreadable pairs are named and skipped; the exit code is 1 if any were.")
    suspects.add_argument("folder", help="a data folder with images/ and masks/")
    suspects.add_argument("--worst", type=int, metavar="N",
                          help="pairs in the contact sheet (default: params.yaml validate.suspects.worst)")
    _model_at_hand_options(suspects)
    suspects.set_defaults(func=_cmd_suspects)

    demo = sub.add_parser(
        "demo", help="a local web page to try a model: drop a photo, pick the output, download the result",
        description="Serves a page (Gradio) with the photo and its result side by side and the same options as "
                    "predict and the server, set to the model's serve.defaults. It prints the page's URL; nothing "
                    "is fetched from the network and no share link is made.")
    demo.add_argument("--model", help="as for predict: models/served, models:/NAME@ALIAS, runs:/RUN_ID/model or an "
                                      "MLflow model folder (default: models:/<register.model_name>@champion)")
    demo.add_argument("--host", help="address to listen on (default: 127.0.0.1, this machine only; "
                                     "$GRADIO_SERVER_NAME if set). 0.0.0.0 opens it to the network")
    demo.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT, else the first free one from 7860)")
    demo.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ and runs:/ "
                                             "(default: $MLFLOW_TRACKING_URI, else params.yaml's mlflow.tracking_uri)")
    demo.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)
    demo.set_defaults(func=_cmd_demo)

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

    trainer = sub.add_parser(
        "train-worker", help="train alongside the chief on a multi-worker cluster (distribute.strategy multi_worker)",
        description="One of the machines of a multi-worker cluster ($TF_CONFIG) other than its chief: trains the train "
                    "stage's model in lockstep with the chief's `dvc repro` (the same params, augmented shards and "
                    "tune result on every machine) and writes nothing but its own checkpoints; the chief logs the "
                    "MLflow run and saves the model.")
    trainer.add_argument("--params", default="params.yaml", help="the project's params file (default: %(default)s)")
    trainer.set_defaults(func=_cmd_train_worker)

    label = sub.add_parser(
        "label", help="correct the drafts in Label Studio: start it, push a folder's drafts, pull the masks back",
        description="A person corrects a folder's drafts (`bgremoval draft FOLDER`) in Label Studio: `start` runs "
                    "it on this machine, `push` imports the photos without a mask worst first, each with its draft "
                    "as a brush pre-annotation, `pull` writes each submitted annotation to FOLDER/masks/. The API "
                    "token comes from $LABEL_STUDIO_API_KEY, never from a file. docs/labelling.md walks through it.")
    label_sub = label.add_subparsers(dest="label_command", required=True)
    start = label_sub.add_parser(
        "start", help="run Label Studio on this machine (127.0.0.1)",
        description="Runs the Label Studio that `make label-studio` installs (.venv-label-studio), on 127.0.0.1 "
                    "only, its data in .label-studio/ (or $LABEL_STUDIO_BASE_DATA_DIR). The first start creates the "
                    "user with $LABEL_STUDIO_API_KEY as its API token (legacy tokens enabled, as push and pull "
                    "use them); later starts keep that user and token. Nothing is sent out: no error reports, "
                    "analytics or version checks.")
    start.add_argument("--port", type=int, help="port (default: 8080, Label Studio's own)")
    start.add_argument("--username", help="the user's e-mail, for the first start (default: $LABEL_STUDIO_USERNAME)")
    start.add_argument("--password",
                       help="the user's password, for the first start (default: $LABEL_STUDIO_PASSWORD)")
    start.set_defaults(func=_cmd_label_start)
    push = label_sub.add_parser(
        "push", help="import a folder's drafted photos without a mask into a project, worst first",
        description="Creates the project (the folder's name, or --project) or updates it, and imports the photos "
                    "of FOLDER/drafts.csv that have no mask in FOLDER/masks/, most correction first, each with its "
                    "draft as a prediction and its rank and uncertainty in the task's data. Photos the project "
                    "already has (by name) are not imported again. Unreadable photos or drafts are named and "
                    "skipped; the exit code is 1 if any were.")
    push.add_argument("--limit", type=int, metavar="N", help="import at most N photos (the worst N not there yet)")
    push.add_argument("--params", default="params.yaml", help=argparse.SUPPRESS)  # prepare.max_pixels
    push.set_defaults(func=_cmd_label_push)
    pull = label_sub.add_parser(
        "pull", help="write the masks a person submitted in Label Studio to FOLDER/masks/",
        description="Writes each task's latest submitted annotation to FOLDER/masks/NAME.png (8-bit grey); a "
                    "skipped task or one nobody annotated writes nothing, and its photo keeps its draft. A draft "
                    "submitted unchanged comes back exactly as it was drafted. The exit code is 1 if an annotation "
                    "could not be written (each is named).")
    pull.set_defaults(func=_cmd_label_pull)
    for cmd in (push, pull):
        cmd.add_argument("folder", help="the data folder (images/, drafts/, drafts.csv, masks/)")
        cmd.add_argument("--url",
                         help="Label Studio's address (default: $LABEL_STUDIO_URL, else http://127.0.0.1:8080)")
        cmd.add_argument("--project", help="the project's title (default: the folder's name)")
        cmd.add_argument("--quiet", action="store_true", help="no progress bar")
        cmd.add_argument("--suspects", action="store_true",
                         help="the masks of FOLDER/suspects.csv (`bgremoval suspects`), each with the mask a person "
                              "drew as the prediction, in a project of their own (the folder's name + "
                              "' masks to check'); a mask a checked one replaces is kept in FOLDER/replaced/")

    from bgremoval.batch.spark_cutout import add_arguments as spark_arguments

    spark = sub.add_parser(
        "spark-cutout", help="cut out a catalogue of photos on Spark with the registered model (MLflow's spark_udf)",
        description="Runs the model as mlflow.pyfunc.spark_udf over Spark's binaryFile source and writes a Parquet "
                    "table: path, png (the PNG's bytes), width, height, foreground, error. A photo that cannot be "
                    "read gets an error naming it, and the job goes on; the exit code is 1 if any did. Locally "
                    "(--master local[N], the default local[*]) the workers run this Python; on a cluster, submit "
                    "bgremoval/batch/spark_cutout.py with spark-submit (docs/scaling-out.md). `bgremoval predict` "
                    "is the one-machine path. Options not given take the model's serve.defaults.")
    spark_arguments(spark)
    spark.set_defaults(func=_cmd_spark_cutout)

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
