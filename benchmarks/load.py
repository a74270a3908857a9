"""The model server under load, measured: a burst of concurrent requests, memory over many requests,
and malformed requests. Prints tables and writes JSON.

Run in the project after `dvc repro` (it serves models:/bgremoval@champion with `mlflow models serve`):

    python benchmarks/load.py [--model models:/bgremoval@champion] [--project DIR] [--out FILE]

- burst: --burst requests (default 200) sent at once, images of mixed sizes and every output and
  background in turn (colour, blur, image; matting); all must answer 200 with a picture of the
  input's size; latency percentiles;
- memory: --requests (default 1,000) requests, --concurrency at a time; the RSS of the server's whole
  process tree, measured every 100 requests (bounded = no trend after warm-up);
- malformed: 100 bad requests of 10 kinds (a bad background image and colour among them); every one
  must get a 4xx, and a good request after them a 200.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from serve_helper import served  # noqa: E402

SIZES = [(120, 160), (240, 320), (480, 640), (768, 1024), (333, 500)]  # (h, w): thumbnails to camera frames


def photo(h: int, w: int, seed: int) -> bytes:
    """A JPEG with structure (a smooth background and an ellipse), cheap to make at any size."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.dstack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), np.full((h, w), 90)]).astype(np.float32)
    inside = ((xx - w * rng.uniform(0.3, 0.7)) / (w * 0.25)) ** 2 + ((yy - h * 0.5) / (h * 0.3)) ** 2 <= 1
    img[inside] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def post(port: int, data: bytes, content_type: str = "application/json") -> tuple[int, bytes, float]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data, {"Content-Type": content_type})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return resp.status, resp.read(), time.perf_counter() - t
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.perf_counter() - t


# Every output and background in turn: the served defaults (a cut-out), a mask, composites onto a colour,
# a blur and a background image, and a matted cut-out without the main-object refinement.
REQUEST_PARAMS = [{}, {"output": "mask", "threshold": 0.5},
                  {"output": "composite", "background": "color", "bg_color": "#00ff00"},
                  {"output": "composite", "background": "blur"},
                  {"output": "composite", "background": "image", "bg_image": base64.b64encode(photo(300, 400, 99)).decode()},
                  {"output": "cutout", "matting": True, "main_object": False}]


def good_body(i: int) -> tuple[bytes, tuple[int, int]]:
    h, w = SIZES[i % len(SIZES)]
    b64 = base64.b64encode(photo(h, w, i)).decode()
    body = {"dataframe_split": {"columns": ["image"], "data": [[b64]]}, "params": REQUEST_PARAMS[i % len(REQUEST_PARAMS)]}
    return json.dumps(body).encode(), (w, h)


def check(answer: tuple[int, bytes, float], want: tuple[int, int]) -> bool:
    status, body, _ = answer
    if status != 200:
        return False
    row = json.loads(body)["predictions"][0]
    return (row["width"], row["height"]) == want


def rss_mb(proc: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


MALFORMED = [
    (b'{"dataframe_split": {"columns": ["image"], "data": [["not base64 !!"]]}}', "application/json"),
    (json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"GIF89a no").decode()]]}}).encode(), "application/json"),
    (b'{"dataframe_split": {"columns": ["image"], "data": [[12345]]}}', "application/json"),
    (b'{"dataframe_split": {"columns": ["image"], "data": []}}', "application/json"),
    (b'{"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}', "application/json"),
    (b"{not json", "application/json"),
    (b"image\nabc", "text/plain"),
    (json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo(64, 64, 0)).decode()]]},
                 "params": {"output": "sparkles"}}).encode(), "application/json"),
    (json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo(64, 64, 0)).decode()]]},
                 "params": {"output": "composite", "background": "image", "bg_image": "not an image"}}).encode(), "application/json"),
    (json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo(64, 64, 0)).decode()]]},
                 "params": {"output": "composite", "bg_color": "#12345"}}).encode(), "application/json"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model URI (default: models:/<register.model_name>@champion)")
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bgremoval-load.json")
    args = parser.parse_args()
    project = args.project.resolve()
    params = yaml.safe_load((project / "params.yaml").read_text())
    args.model = args.model or f"models:/{params['register']['model_name']}@champion"
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or params["mlflow"]["tracking_uri"]
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = f"sqlite:///{project / tracking_uri[len('sqlite:///'):]}"  # relative to the project
    bodies = [good_body(i) for i in range(len(SIZES) * 4)]
    report: dict = {"model": args.model, "machine": f"{os.cpu_count()} CPU cores"}
    with served(project, args.model, tracking_uri) as (port, proc):
        server = psutil.Process(proc.pid)
        report["rss_start_mb"] = round(rss_mb(server), 1)
        # The burst: every request in flight at once.
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.burst) as pool:
            answers = list(pool.map(lambda i: post(port, bodies[i % len(bodies)][0]), range(args.burst)))
        wall = time.perf_counter() - t
        ok = sum(check(a, bodies[i % len(bodies)][1]) for i, a in enumerate(answers))
        lat = sorted(a[2] for a in answers)
        report["burst"] = {"requests": args.burst, "ok": ok, "wall_s": round(wall, 1),
                           "p50_s": round(statistics.median(lat), 2), "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 2),
                           "max_s": round(lat[-1], 2), "statuses": sorted({a[0] for a in answers})}
        # Memory over many requests, a few at a time.
        samples, done, failures = [(0, rss_mb(server))], 0, 0  # 0 = right after the burst
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            while done < args.requests:
                batch = range(done, min(done + 100, args.requests))
                results = list(pool.map(lambda i: check(post(port, bodies[i % len(bodies)][0]), bodies[i % len(bodies)][1]), batch))
                failures += results.count(False)
                done += len(batch)
                samples.append((done, rss_mb(server)))
        report["memory"] = {"requests": done, "failures": failures, "rss_mb": [(n, round(m, 1)) for n, m in samples]}
        # Malformed requests, then a good one.
        with ThreadPoolExecutor(max_workers=20) as pool:
            bad = list(pool.map(lambda i: post(port, *MALFORMED[i % len(MALFORMED)])[0], range(100)))
        after = post(port, bodies[0][0])
        report["malformed"] = {"requests": 100, "4xx": sum(400 <= s < 500 for s in bad), "statuses": sorted(set(bad)),
                               "good_after": after[0]}

    b, m, bad = report["burst"], report["memory"], report["malformed"]
    print(f"\nserver: mlflow models serve -m {args.model} (1 worker), {report['machine']}; sizes {SIZES}")
    print(f"{'burst':<10} | {b['requests']} at once: {b['ok']} answered 200 with the right size; "
          f"wall {b['wall_s']} s, p50 {b['p50_s']} s, p95 {b['p95_s']} s, max {b['max_s']} s")
    print(f"{'memory':<10} | requests | RSS of the server's process tree (MB); {report['rss_start_mb']} MB before the burst")
    for n, mb in m["rss_mb"]:
        print(f"{'':<10} | {n:>8} | {mb:>8.1f}")
    warm = 200 if m["requests"] > 200 else 0  # the first requests after the burst still grow caches
    after_warm = [mb for n, mb in m["rss_mb"] if n >= warm]
    print(f"{'':<10} | growth after {warm} requests: {max(after_warm) - after_warm[0]:+.1f} MB; failures {m['failures']}")
    print(f"{'malformed':<10} | {bad['4xx']} of {bad['requests']} answered 4xx ({bad['statuses']}); "
          f"a good request after them: {bad['good_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
