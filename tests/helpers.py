"""What the tests share: tiny synthetic data, toy models and projects, servers and a headless browser."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}
ARTIFACTS = Path(os.environ.get("BGREMOVAL_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
PHOTOS = Path(sys.prefix) / "share" / "bgremoval" / "photos"  # `make photos`


# --- data ----------------------------------------------------------------------------------------

def sample_photo(name: str) -> np.ndarray:
    """One of the two real photos `make photos` puts in the venv (china.jpg, flower.jpg), as RGB."""
    path = PHOTOS / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: `make photos` takes it out of scikit-learn's wheel")
    return np.asarray(Image.open(path).convert("RGB"))


def write_pair(folder: Path, name: str, size=(32, 24), fg=0.3, ext=".png", seed=0) -> tuple[Path, Path]:
    """One image/mask pair: a random RGB image and a mask whose top rows are foreground."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[: max(1, int(round(h * fg))), :] = 255
    image_path, mask_path = folder / "images" / f"{name}{ext}", folder / "masks" / f"{name}.png"
    Image.fromarray(rgb).save(image_path)
    Image.fromarray(mask, mode="L").save(mask_path)
    return image_path, mask_path


def manifest_for(folder: Path, splits=SPLITS, seed=0) -> pd.DataFrame:
    """The manifest prepare would build for a folder."""
    from bgremoval.data.manifest import build_manifest, pair_files
    from bgremoval.data.masks import MaskChoices
    from bgremoval.data.split import assign_groups, split_groups

    choices = MaskChoices(jpeg=PARAMS["prepare"]["jpeg_masks"], resize=PARAMS["prepare"]["resize_masks"])
    df = build_manifest(pair_files(folder), 10_000_000, choices)
    df["group"] = assign_groups(df["name"], r"^(.*)_\d+$")
    df["split"] = split_groups(df["group"], splits, seed)
    return df


def disc_image(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc on dark noise (what the toy model learns), and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r = min(h, w) * 0.3
    mask = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r * r).astype(np.uint8) * 255
    img = (rng.uniform(0, 60, (h, w, 3)) + (mask[..., None] > 0) * 150).astype(np.uint8)
    return img, mask


def disc_folder(folder: Path, n: int, size=(48, 40), seed=0) -> pd.DataFrame:
    """n disc images with masks in folder/images, folder/masks; their manifest rows (all split 'val')."""
    rows = []
    for i in range(n):
        img, mask = disc_image(size[1], size[0], seed + i)
        image_path, mask_path = folder / "images" / f"d_{i:03d}.png", folder / "masks" / f"d_{i:03d}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(image_path)
        Image.fromarray(mask, "L").save(mask_path)
        rows.append({"name": f"d_{i:03d}", "image_path": str(image_path), "mask_path": str(mask_path),
                     "content_hash": f"h{i}", "split": "val"})
    return pd.DataFrame(rows)


def toy_shards(folder: Path, n_train=32, n_val=8, size=32) -> Path:
    """Shards of bright discs on dark noise, as the augment stage writes them: learnable in an epoch."""
    from bgremoval.data.shards import write_shards

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]

    def records(n, prefix):
        for i in range(n):
            cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(4, 9)]
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255
            img = (rng.uniform(0, 60, (size, size, 3)) + (mask[..., None] > 0) * 150).astype(np.uint8)
            yield f"{prefix}{i}", img, mask

    write_shards(records(n_train, "t"), folder, "train", 16)
    write_shards(records(n_val, "v"), folder, "val", 16)
    (folder / "stats.json").write_text(json.dumps({"n": {"train": n_train, "val": n_val, "test": 0}, "pos_weight": 3.0}))
    return folder


# --- configs as params.yaml writes them ------------------------------------------------------------

def train_config(**overrides):
    """params.yaml's train: section as a TrainConfig, with overrides."""
    from bgremoval.training.fit import TrainConfig

    return TrainConfig(**{**PARAMS["train"], **overrides})


def model_config(**overrides):
    """params.yaml's model: section as a ModelConfig, with overrides."""
    from bgremoval.model.network import ModelConfig

    return ModelConfig(**{**PARAMS["model"], **overrides})


def serving_config(**overrides):
    """A ServingConfig with params.yaml's serve: section, serving a Keras file at 32 unrefined."""
    from bgremoval.serving.config import ServingConfig
    from bgremoval.serving.refine import Refine

    base = {"runtime": "keras", "model_file": "model.keras", "size": 32, "refine": Refine.none(), "int8": False,
            "max_pixels": PARAMS["serve"]["max_pixels"], "max_request_mb": float(PARAMS["serve"]["max_request_mb"]),
            "defaults": dict(PARAMS["serve"]["defaults"])}
    return ServingConfig(**{**base, **overrides})


def served_folder(folder: Path, model_file: Path, **overrides) -> Path:
    """A served folder (the export stage's layout) for a model file: the file beside its serving.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = serving_config(model_file=Path(model_file).name, **overrides)
    shutil.copy(model_file, folder / config.model_file)
    config.write(folder)
    return folder


def train_toy_model(tmp: Path) -> Path:
    """A tiny U-Net trained for a few seconds on bright discs, saved as the train stage saves it."""
    import keras

    from bgremoval.model.network import build_network, inference_model
    from bgremoval.training.fit import datasets, fit

    shards = toy_shards(tmp / "shards", n_train=64, n_val=8)
    cfg = train_config(size=32, batch_size=8, epochs=4, steps_per_epoch=8, learning_rate=1e-2, schedule="constant",
                       loss="bce_dice", freeze_epochs=0, patience=10, pos_weight=3.0, blend=[1.0])
    keras.utils.set_random_seed(0)
    network = build_network(model_config(family="unet", unet_filters=[4, 8, 16]))
    train_ds, val_ds = datasets(shards, cfg.size, cfg.batch_size, 0, 0.0)
    fit(network, train_ds, val_ds, cfg, pos_weight=3.0, steps_per_epoch=cfg.steps_per_epoch, checkpoint_dir=tmp / "ckpt",
        callbacks=[])
    path = tmp / "model.keras"
    inference_model(network).save(path)
    return path


def stock_onnx_export(out: Path) -> Path:
    """Stock U²-NetP exported as the export stage exports a fine-tuned one (symbolic height and width)."""
    from bgremoval.export.onnx import export_u2netp
    from bgremoval.model.network import build_network, inference_model

    return export_u2netp(inference_model(build_network(model_config(family="u2netp"))), out, None)


def skip_without_u2netp_weights() -> None:
    """Skip the calling test when rembg's pretrained U²-NetP weights are not installed (the error says how)."""
    from bgremoval.weights import WeightsError, find_u2netp_onnx

    try:
        find_u2netp_onnx()
    except WeightsError as exc:
        pytest.skip(f"pretrained U²-NetP weights not available: {exc}")


# --- toy projects -----------------------------------------------------------------------------------

# Left out of a copy anywhere, and at the top only (bgremoval/data/ is code).
_SKIP = {".git", ".venv", "mlruns", "mlartifacts", "__pycache__", ".pytest_cache", ".hypothesis", "mlflow.db",
         "optuna.db", "test-artifacts", ".checkpoints"}
_SKIP_TOP = {"data", "reports", "models", "benchmarks", "docs"}
# A whole pipeline in about a minute: a small sample, a tiny U-Net, a few steps.
TOY_PARAMS = {"prepare.sample.n_scenes": 6, "prepare.sample.frames_per_scene": 3,
              "prepare.sample.min_size": 64, "prepare.sample.max_size": 80,
              "augment.size": 32, "augment.copies": 1,
              "model.family": "unet", "model.unet_filters": [4, 8, 16],
              "train.size": 32, "train.epochs": 2, "train.steps_per_epoch": 2, "train.batch_size": 4,
              "train.freeze_epochs": 1, "train.run_eagerly": True,
              "tune.n_trials": 2, "tune.epochs": 1, "tune.steps_per_epoch": 2, "tune.size": 32,
              "tune.space": {"train.learning_rate": {"type": "float", "low": 0.0001, "high": 0.01, "log": True},
                             "train.batch_size": {"type": "categorical", "choices": [2, 4]}},
              "tune.apply": ["train.learning_rate", "train.batch_size"],
              "export.sizes": [32, 48]}


def copy_project(dst: Path, overrides: dict | None = None) -> Path:
    """The repo's code and config in dst, with toy settings (and overrides), as its own git + DVC repo."""
    def ignore(folder, names):
        top = Path(folder) == ROOT
        return [n for n in names if n in _SKIP or (top and n in _SKIP_TOP) or n.endswith(".egg-info")
                or (Path(folder).name == ".dvc" and n in ("cache", "tmp"))]

    shutil.copytree(ROOT, dst, ignore=ignore)
    (dst / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    set_params(dst, {**TOY_PARAMS, **(overrides or {})})
    return dst


def set_params(project: Path, overrides: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in overrides.items():
        node = params
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def project_env(**extra: str) -> dict:
    """The environment a user's shell has in the project: this venv first on PATH, the project's own MLflow store."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GX_ANALYTICS_ENABLED="false")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(name, None)
    env.update(extra)
    return env


def dvc(project: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=project_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


# --- MLflow ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def tracking_store(uri: str | None):
    """MLflow pointed at `uri` (None: its default, MLFLOW_TRACKING_URI unset) for a block; afterwards the
    tracking URI (and MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri sets for subprocesses) as the
    environment had it, so no later test inherits the store. A SQLite store keeps its experiments' artifacts
    beside its database (see open_sqlite_store), and the block fails if one of them is in the source tree."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith(SQLITE):
        open_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
        if uri and uri.startswith(SQLITE):
            every = mlflow.MlflowClient(uri).search_experiments(view_type=mlflow.entities.ViewType.ALL)
            in_repo = [(e.name, e.artifact_location) for e in every if _in_repo(e.artifact_location)]
            assert not in_repo, f"experiments of {uri} keep their artifacts in the source tree: {in_repo}"
    finally:
        mlflow.set_tracking_uri(before)  # None: MLflow's default, and the variable unset


SQLITE = "sqlite:///"


def open_sqlite_store(uri: str) -> None:
    """Open an MLflow SQLite store (its tables created) from its database's folder. MLflow roots the artifacts of
    the experiments a SQLite store creates at ./mlruns of the working directory the store was first opened from in
    the process (the repo, under pytest): opened here first, they go beside the database instead."""
    import mlflow

    with contextlib.chdir(Path(uri.removeprefix(SQLITE)).parent):
        mlflow.MlflowClient(uri).search_experiments()


def _in_repo(location: str) -> bool:
    """Whether an artifact location (a path or a file: URI) lies in the source tree."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return False
    return Path(unquote(parsed.path) if parsed.scheme else location).resolve().is_relative_to(ROOT)


# --- servers and the browser --------------------------------------------------------------------------

# `mlflow server` and `mlflow ui` start a job runner for MLflow's GenAI jobs unless told not to: eight more
# processes, each importing MLflow (about 26 s of CPU per server on 2 Xeon cores). The pipeline runs no such
# jobs, so the tests' servers run without it.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], url: str, log_file: Path, env: dict, cwd: Path | None = None, timeout: float = 180):
    """Start a server process, wait until `url` answers 200, yield, then stop it. Its output goes to
    log_file: an unread pipe fills up and the server stops answering."""
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{' '.join(cmd[:4])} exited with {proc.returncode}:\n{log_file.read_text()}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    if time.time() > deadline:
                        pytest.fail(f"{' '.join(cmd[:4])}: {url} did not answer within {timeout:.0f} s")
                    time.sleep(1)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Browser:
    """Headless Debian Chromium driven by Selenium; every page it opens is saved as a screenshot."""

    def __init__(self, driver):
        self.driver = driver

    def open(self, url: str, *texts: str, shot: str, timeout: float = 90) -> str:
        """Load url, wait until the page shows every text, save ARTIFACTS/shot.png; the page's text."""
        self.driver.get(url)
        return self.wait_for(*texts, shot=shot, timeout=timeout)

    def wait_for(self, *texts: str, shot: str, timeout: float = 90) -> str:
        """Wait until the current page shows every text; screenshot it either way; the page's text."""
        from selenium.webdriver.support.ui import WebDriverWait

        body = lambda: self.driver.find_element("tag name", "body").text  # noqa: E731
        try:
            WebDriverWait(self.driver, timeout).until(lambda d: all(t in body() for t in texts))
        finally:
            self.screenshot(shot)
        return body()

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def image_sizes(self) -> list[tuple[int, int]]:
        """(naturalWidth, naturalHeight) of every loaded <img> on the page."""
        return [tuple(self.driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img))
                for img in self.driver.find_elements("tag name", "img")]


def start_browser() -> Browser:
    """Headless Chromium (Debian's chromium + chromium-driver, installed by `make test`)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} not found: run `make test` (it installs Debian's chromium and "
                    "chromium-driver) or `apt-get install chromium chromium-driver`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Offline machine: no background networking, no first-run or component updates; root needs no sandbox.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    return Browser(webdriver.Chrome(service=Service(CHROMEDRIVER), options=options))  # no Selenium Manager download
