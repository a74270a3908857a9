"""How long `bgremoval predict` takes from a cold start to its first mask, beside `import mlflow` alone.

Run in a project after `dvc repro` (or pass --project): it times, each as a fresh process and the
median of --repeat runs, `python -c "import mlflow"`, `python -c "import tensorflow"`, and
`bgremoval predict` on one photo with the served folder (models/served: onnxruntime and PIL only) and
with the registry's champion (models:/NAME@champion: MLflow on top), each writing a mask and then the
served default (a cut-out, whose edges load pymatting's compiled code). The registry's rows run twice: cold,
with bgremoval's cache of resolved aliases emptied before every run (MLflow resolves the alias), and warm,
with the alias already resolved in the unchanged registry (serving.resolved: no MLflow). It prints a table
(with each command's peak resident memory) and writes JSON.

    python benchmarks/startup.py --project . --out /tmp/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def timed(cmd: list[str], cwd: Path, repeat: int, cache: Path | None = None) -> tuple[float, float]:
    """Median wall time in seconds of a command run `repeat` times, each a fresh process, and the largest peak
    resident memory (MB) of those processes (the kernel's maxrss of the child, from wait4). With `cache`, the
    processes keep resolved aliases there (warm: one untimed run first), or, with cache=None, in a folder
    emptied before every run (cold)."""
    times, peaks = [], []
    cold = Path(tempfile.mkdtemp())
    env = {**os.environ, "BGREMOVAL_CACHE_DIR": str(cache or cold)}
    if cache is not None:
        subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    for _ in range(repeat):
        shutil.rmtree(cold, ignore_errors=True)
        with tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            times.append(time.perf_counter() - start)
            peaks.append(usage.ru_maxrss / 1024)  # KiB on Linux
            if os.waitstatus_to_exitcode(status) != 0:
                err.seek(0)
                raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
    return statistics.median(times), max(peaks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a project after `dvc repro`")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bgremoval-startup.json")
    args = parser.parse_args()
    project = args.project.resolve()
    params = yaml.safe_load((project / "params.yaml").read_text())
    photo = next(p for p in sorted((project / "data" / "sample" / "images").iterdir()))
    bgremoval = str(Path(sys.executable).parent / "bgremoval")
    out_dir = Path(tempfile.mkdtemp())
    os.environ.setdefault("MLFLOW_TRACKING_URI", params["mlflow"]["tracking_uri"])
    name = params["register"]["model_name"]
    rows = [("python -c 'import mlflow'", [sys.executable, "-c", "import mlflow"]),
            ("python -c 'import tensorflow'", [sys.executable, "-c", "import tensorflow"])]
    caches = {}  # label -> the warm cache folder (registry rows)
    for model, label, cache in (("models/served", "models/served", ""), (None, f"models:/{name}@champion", "cold"),
                                (None, f"models:/{name}@champion", "warm")):
        for output in ("mask", None):  # the first mask; then the served default (a cut-out: pymatting's edges)
            cmd = [bgremoval, "predict", "--quiet", *(["--model", model] if model else []),
                   *(["--output", output] if output else []), str(photo), str(out_dir / "out.png")]
            rows.append((f"bgremoval predict --model {label} --output {output or 'default'}"
                         + (f" ({cache})" if cache else ""), cmd))
            if cache == "warm":
                caches[rows[-1][0]] = Path(tempfile.mkdtemp())
    measured = {label: timed(cmd, project, args.repeat, caches.get(label)) for label, cmd in rows}
    width = max(map(len, measured))
    print(f"{'command':<{width}}  seconds (median of {args.repeat})  peak MB")
    for label, (seconds, peak) in measured.items():
        print(f"{label:<{width}}  {seconds:6.2f}  {peak:8.0f}")
    mlflow_s = measured[rows[0][0]][0]
    for label, _ in rows[4:]:
        print(f"{label} minus `import mlflow`: {measured[label][0] - mlflow_s:.2f} s")
    args.out.write_text(json.dumps({label: {"seconds": s, "peak_mb": p} for label, (s, p) in measured.items()},
                                   indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
