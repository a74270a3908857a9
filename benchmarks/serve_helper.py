"""`mlflow models serve` for the benchmarks: a free loopback port, started and stopped around a block."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(project: Path, model_uri: str, tracking_uri: str, **env_extra: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """The model behind a real `mlflow models serve` (default host: 127.0.0.1); yields (port, process)."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, **env_extra,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
                             "-p", str(port), "-w", "1"], env=env, cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow models serve -m {model_uri} did not start (exit {proc.poll()})") from None
                time.sleep(1)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
