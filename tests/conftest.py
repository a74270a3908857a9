"""Shared fixtures: tiny synthetic image/mask folders and manifests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bgremoval.manifest import build_manifest, pair_files
from bgremoval.split import assign_groups, split_groups

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


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


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A valid folder: 6 groups x 4 frames of 32x24 pairs, distinct content."""
    folder = tmp_path / "data"
    for g in range(6):
        for f in range(4):
            write_pair(folder, f"seq{g}_{f:03d}", seed=g * 10 + f)
    return folder


SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}


def manifest_for(folder: Path, splits=SPLITS, seed=0) -> pd.DataFrame:
    """The manifest prepare would build for a folder."""
    df = build_manifest(pair_files(folder), max_pixels=10_000_000)
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


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> Path:
    """A tiny U-Net trained for a few seconds on bright discs, saved as the train stage saves it."""
    import keras

    from bgremoval.train import ModelConfig, TrainConfig, build_network, datasets, fit, inference_model
    from tests.test_train import _toy_shards

    tmp = tmp_path_factory.mktemp("toy_model")
    shards = _toy_shards(tmp / "shards", n_train=64, n_val=8)
    cfg = TrainConfig(size=32, batch_size=8, epochs=4, steps_per_epoch=8, learning_rate=1e-2, schedule="constant",
                      loss="bce_dice", freeze_epochs=0, patience=10, side_weight=1.0)
    keras.utils.set_random_seed(0)
    network = build_network(ModelConfig(family="unet", unet_filters=[4, 8, 16]))
    train_ds, val_ds = datasets(shards, cfg.size, cfg.batch_size, 0)
    fit(network, train_ds, val_ds, cfg, 3.0, cfg.steps_per_epoch, tmp / "ckpt", [])
    path = tmp / "model.keras"
    inference_model(network).save(path)
    return path


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


ARTIFACTS = Path(os.environ.get("BGREMOVAL_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


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


@pytest.fixture(scope="session")
def browser():
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
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no Selenium Manager download
    try:
        yield Browser(driver)
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One `dvc repro` of the whole toy pipeline, shared by the tests that inspect its results."""
    from tests.test_pipeline_e2e import copy_project, dvc, set_params

    dst = copy_project(tmp_path_factory.mktemp("full") / "project")
    set_params(dst, {"evaluate.size": 32})
    return dst, dvc(dst, "repro")
