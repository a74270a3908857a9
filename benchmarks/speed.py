"""Speed of the served model, as ratios measured in one run; prints a table and writes JSON.

Run in the project after `dvc repro` (by default it measures the version the register stage registered,
champion or challenger, as reports/registered.json names it; else models:/bgremoval@champion):

    python benchmarks/speed.py [--model models:/bgremoval@champion] [--threads 2] [--out reports/speed.json]
                               [--project DIR]   (another run of the project, e.g. benchmarks/quality.py's workdir)

Each ratio's two sides are timed in alternation, and the ratio is the median of the rounds' ratios.

- ms per image: the champion as served (onnxruntime at its input size) vs stock u2netp
  (rembg's u2netp.onnx at 320, rembg's preprocessing) in onnxruntime with the same threads;
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
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from serve_helper import served  # noqa: E402


def timed_pair(a, b, repeat: int, warmup: int = 2) -> tuple[float, float, float]:
    """Median wall times of a() and b() in ms, and the median of the rounds' ratios a/b. The two are called in
    alternation (a b, b a, a b, ...): on a shared machine whose speed drifts (session 13 saw the same server
    request take 103 and 146 ms in two runs a minute apart), both sides of a ratio then see the same machine."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for i in range(repeat):
        for fn, times in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def test_images(project: Path, n: int) -> list[np.ndarray]:
    import pandas as pd

    from bgremoval.imageio import load_rgb

    manifest = pd.read_parquet(project / "data" / "manifest.parquet")
    paths = manifest[manifest["split"] == "test"]["image_path"].head(n)
    return [load_rgb(Path(p), 10**8) for p in paths]


def train_vs_forward(project: Path, size: int, repeat: int) -> tuple[float, float, float]:
    import keras
    import tensorflow as tf

    from bgremoval import train, u2netp  # noqa: F401

    model = keras.models.load_model(project / "models" / "model.keras", compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy")
    x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
    y = (x[..., :1] > 0.5).astype(np.float32)
    forward = tf.function(lambda t: model(t, training=False))
    return timed_pair(lambda: model.train_on_batch(x, y), lambda: forward(x).numpy(), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="model URI (default: the version in the project's reports/registered.json, else @champion)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "speed.json")
    parser.add_argument("--project", type=Path, default=ROOT, help="the project run to measure (default: this checkout)")
    args = parser.parse_args()
    project = args.project.resolve()
    params = yaml.safe_load((project / "params.yaml").read_text())
    if args.model is None:
        registered = project / params["paths"]["reports"] / "registered.json"
        args.model = json.loads(registered.read_text())["model_uri"] if registered.exists() else "models:/bgremoval@champion"
        print(f"model: {args.model}")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"]
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = f"sqlite:///{project / tracking_uri[len('sqlite:///'):]}"  # relative to the project
    os.environ["BGREMOVAL_THREADS"] = str(args.threads)

    import mlflow

    from bgremoval import serving
    from bgremoval.stock import RembgModel
    from bgremoval.u2netp import find_u2netp_onnx

    mlflow.set_tracking_uri(tracking_uri)
    images = test_images(project, 8)
    pyfunc = mlflow.pyfunc.load_model(args.model)
    champion = pyfunc.unwrap_python_model().segmenter
    runtime = pyfunc.model_config.get("runtime", "keras")
    stock = RembgModel(find_u2netp_onnx(), args.threads)
    # Each side walks the same images in the same order, so every round compares the two on one image.
    ia, ib = iter(range(10**9)), iter(range(10**9))
    champ_ms, stock_ms, champ_ratio = timed_pair(lambda: champion(images[next(ia) % len(images)]),
                                                 lambda: stock(images[next(ib) % len(images)]), args.repeat)

    frame = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(serving.png_bytes(Image.fromarray(images[0]))).decode()]]},
             "params": {"output": "cutout"}}
    body = json.dumps(frame).encode()
    import pandas as pd

    df = pd.DataFrame({"image": frame["dataframe_split"]["data"][0]})
    with served(project, args.model, tracking_uri, BGREMOVAL_THREADS=str(args.threads)) as (port, _):
        def over_http():
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                resp.read()

        serve_ms, inproc_ms, serve_ratio = timed_pair(over_http, lambda: pyfunc.predict(df, params={"output": "cutout"}),
                                                      args.repeat)

    size = params["train"]["size"]
    step_ms, fwd_ms, step_ratio = train_vs_forward(project, size, args.repeat)

    t = time.perf_counter()
    noop = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"))
    noop_s = time.perf_counter() - t

    h, w = images[0].shape[:2]
    rows = [
        ("champion per image (ms)", f"{champ_ms:.1f}", f"{runtime} at {champion.size}², {args.threads} threads"),
        ("stock u2netp per image (ms)", f"{stock_ms:.1f}", f"onnxruntime at 320², {args.threads} threads"),
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
    args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPU cores", "model": args.model, "runtime": runtime,
                                    "rows": [dict(zip(("measure", "value", "note"), r)) for r in rows]}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
