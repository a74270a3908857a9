"""Speed of the served model, as ratios measured in one run; prints a table and writes JSON.

Run in the project after `dvc repro` (by default it measures the version the register stage registered,
champion or challenger, as reports/registered.json names it; else models:/bgremoval@champion):

    python benchmarks/speed.py [--model models:/bgremoval@champion] [--repeat 15] [--out FILE]
                               [--project DIR]   (another run of the project, e.g. benchmarks/quality.py's WORKDIR/project)

Each ratio's two sides are timed in alternation, and the ratio is the median of the rounds' ratios.

- ms per image: the champion as served (its runtime at its size, with its refinement) vs stock u2netp as rembg
  runs it (rembg's u2netp.onnx at 320², rembg's pre- and post-processing), both in onnxruntime
  ($BGREMOVAL_THREADS, when set, sets the champion's onnxruntime threads only; unset, both use onnxruntime's default);
- `mlflow models serve` round trip vs in-process predict of the same request;
- one training step (batch 1, at train.size) vs one forward pass at the same size, in Keras;
- `dvc repro` when nothing changed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from serve_helper import served  # noqa: E402


def timed_pair(a, b, repeat: int, warmup: int = 2) -> tuple[float, float, float]:
    """Median wall times of a() and b() in ms, and the median of the rounds' ratios a/b. The two are called in
    alternation (a b, b a, a b, ...), so on a shared machine whose speed drifts both sides of a ratio see the
    same machine, and neither always runs first."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for i in range(repeat):
        for fn, times in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def photos(project: Path, manifest: str, n: int, max_pixels: int) -> list[np.ndarray]:
    """The first n test images of the project's manifest."""
    import pandas as pd

    from bgremoval.images import load_rgb

    table = pd.read_parquet(project / manifest)
    return [load_rgb(Path(p), max_pixels) for p in table[table["split"] == "test"]["image_path"].head(n)]


def train_vs_forward(model_file: Path, size: int, repeat: int) -> tuple[float, float, float]:
    """One Keras training step against one forward pass, batch 1 at size²."""
    from bgremoval.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras
    import tensorflow as tf

    from bgremoval.model.network import load_model

    model = load_model(model_file)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    y = (x[..., :1] > 0.5).astype(np.float32)
    forward = tf.function(lambda t: model(t, training=False))
    return timed_pair(lambda: model.train_on_batch(x, y), lambda: forward(x).numpy(), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model URI (default: the version in the project's reports/registered.json, else @champion)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bgremoval-speed.json")
    parser.add_argument("--project", type=Path, default=ROOT, help="the project run to measure (default: this checkout)")
    args = parser.parse_args()
    project = args.project.resolve()
    params = yaml.safe_load((project / "params.yaml").read_text())
    paths, max_pixels = params["paths"], params["prepare"]["max_pixels"]
    if args.model is None:
        registered = project / paths["reports"] / "registered.json"
        args.model = (json.loads(registered.read_text())["model_uri"] if registered.exists()
                      else f"models:/{params['register']['model_name']}@champion")
        print(f"model: {args.model}")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"]
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = f"sqlite:///{project / tracking_uri[len('sqlite:///'):]}"  # relative to the project

    import mlflow
    import pandas as pd
    from PIL import Image

    from bgremoval.scoring.stock import REMBG_SIZE, RembgModel
    from bgremoval.serving.render import png_bytes
    from bgremoval.weights import find_u2netp_onnx

    mlflow.set_tracking_uri(tracking_uri)
    images = photos(project, paths["manifest"], 8, max_pixels)
    pyfunc = mlflow.pyfunc.load_model(args.model)
    champion = pyfunc.unwrap_python_model().served
    config = champion.config
    stock = RembgModel(find_u2netp_onnx(params["model"]["onnx_path"]))
    # Each side walks the same images in the same order, so every round compares the two on one image.
    ia, ib = iter(range(10**9)), iter(range(10**9))
    champ_ms, stock_ms, champ_ratio = timed_pair(lambda: champion(images[next(ia) % len(images)]),
                                                 lambda: stock(images[next(ib) % len(images)]), args.repeat)

    b64 = base64.b64encode(png_bytes(Image.fromarray(images[0]))).decode()
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[b64]]}, "params": {"output": "cutout"}}).encode()
    frame = pd.DataFrame({"image": [b64]})
    with served(project, args.model, tracking_uri) as (port, _):
        def over_http():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                resp.read()

        serve_ms, inproc_ms, serve_ratio = timed_pair(over_http, lambda: pyfunc.predict(frame, params={"output": "cutout"}),
                                                      args.repeat)

    size = params["train"]["size"]
    step_ms, fwd_ms, step_ratio = train_vs_forward(project / paths["models"] / "model.keras", size, args.repeat)

    t = time.perf_counter()
    noop = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
    noop_s = time.perf_counter() - t

    h, w = images[0].shape[:2]
    served_as = f"{config.runtime}{' int8' if config.int8 else ''} at {config.size}², refinement {config.refine.name}"
    rows = [
        ("champion per image (ms)", f"{champ_ms:.1f}", served_as),
        ("stock u2netp per image (ms)", f"{stock_ms:.1f}", f"onnxruntime at {REMBG_SIZE}², as rembg runs it"),
        ("champion / u2netp", f"{champ_ratio:.2f}", "median of paired rounds; target <= 0.5"),
        ("in-process predict (ms)", f"{inproc_ms:.1f}", f"one {w}x{h} image, base64 in, cut-out PNG out"),
        ("mlflow models serve round trip (ms)", f"{serve_ms:.1f}", "same request over HTTP on 127.0.0.1"),
        ("serve / in-process", f"{serve_ratio:.2f}", "median of paired rounds; target <= 1.2"),
        ("train step (ms)", f"{step_ms:.1f}", f"batch 1 at {size}², Keras"),
        ("forward (ms)", f"{fwd_ms:.1f}", f"batch 1 at {size}², Keras"),
        ("train step / forward", f"{step_ratio:.2f}", "median of paired rounds"),
        ("dvc repro, nothing changed (s)", f"{noop_s:.1f}", "prepare re-scans the data; the rest is skipped"
         + ("" if noop.returncode == 0 else f" (exit {noop.returncode})")),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}} | {'value':>8} | note")
    print(f"{'-' * width}-|{'-' * 10}|{'-' * 40}")
    for name, value, note in rows:
        print(f"{name:<{width}} | {value:>8} | {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPU cores", "model": args.model, "serving": config.to_dict(),
                                    "rows": [dict(zip(("measure", "value", "note"), r)) for r in rows]}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
