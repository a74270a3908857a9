"""`bgremoval demo`: the page's function (the request options in, the picture out at the photo's size, a bad
value a message naming it), the page's controls, and, in headless Chromium, a real photo dropped on the page
served by the command, on this machine only."""

from __future__ import annotations

import argparse
import io
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgremoval.cli import build_parser
from bgremoval.cli import main as cli
from bgremoval.demo import UNSET, build, option_help, predict_fn
from bgremoval.serving.options import KINDS, OPTION_HELP, options_from
from bgremoval.serving.render import render
from bgremoval.serving.served import Served
from tests.helpers import PARAMS, disc_image, free_port, project_env, running_server, sample_photo, serving_config

DEFAULTS = dict(PARAMS["serve"]["defaults"])


def soft_disc(image: np.ndarray) -> np.ndarray:
    """A stand-in network: a centred disc with a soft rim, whatever the photo."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2) / (min(h, w) * 0.3)
    return np.clip((1.2 - r) / 0.4, 0, 1).astype(np.float32)


@pytest.fixture
def served() -> Served:
    return Served(serving_config(), soft_disc, PARAMS["serve"]["max_pixels"], PARAMS["serve"]["max_request_mb"])


@pytest.fixture
def photo(tmp_path) -> tuple[Path, np.ndarray]:
    image, _ = disc_image(60, 84, seed=3)
    path = tmp_path / "photo.jpg"
    Image.fromarray(image).save(path, quality=95)
    return path, np.asarray(Image.open(path).convert("RGB"))


def page_values(**changes) -> list:
    """What the page's controls hold before anyone touches them (a null switch 'default', a null number
    empty, no background uploaded), changed."""
    unset = {name: UNSET if kind == "boolean" else "" for name, kind in KINDS.items() if DEFAULTS[name] is None}
    values = {**DEFAULTS, **unset, "bg_image": None, **changes}
    return [values[name] for name in KINDS]


def test_the_page_renders_the_options_it_is_given_at_the_photos_size(served, photo, tmp_path):
    path, image = photo
    predict = predict_fn(served, tmp_path)
    shown, download = predict(str(path), *page_values())
    assert shown == download and Path(shown).name == "photo-cutout.png"
    cut = Image.open(shown)
    assert cut.mode == "RGBA" and cut.size == (84, 60)  # serve.defaults.output, the photo's own size
    expected = render(image, soft_disc(image), options_from(None, served.config.defaults, served.max_pixels))
    assert (np.asarray(cut) == np.asarray(expected)).all()

    mask = np.asarray(Image.open(predict(str(path), *page_values(output="mask", threshold=0.5))[0]))
    assert mask.shape == (60, 84) and set(np.unique(mask)) == {0, 255}

    background = tmp_path / "bg.png"
    Image.fromarray(np.full((10, 30, 3), (0, 0, 255), np.uint8)).save(background)
    values = page_values(output="composite", background="image", threshold=0.5, bg_image=str(background))
    comp = np.asarray(Image.open(predict(str(path), *values)[0]))
    assert (comp == np.where(mask[..., None] == 255, image, [0, 0, 255])).all()
    # An uploaded background waits, unused, while another output or background is picked.
    assert Image.open(predict(str(path), *page_values(bg_image=str(background)))[0]).mode == "RGBA"


@pytest.mark.parametrize(("changes", "named"), [
    ({"bg_color": "not-a-colour", "output": "composite"}, "bg_color 'not-a-colour' is not a colour"),
    ({"bg_blur": 99}, "bg_blur 99 is outside (0, 25]"),
    ({"threshold": 3}, "threshold 3.0 is outside [0, 1]"),
    ({"output": "composite", "background": "image"}, "background 'image' needs bg_image"),
])
def test_a_bad_option_is_an_error_on_the_page_naming_it(served, photo, tmp_path, changes, named):
    import gradio as gr

    with pytest.raises(gr.Error, match=named.replace("(", r"\(").replace("[", r"\[")):
        predict_fn(served, tmp_path)(str(photo[0]), *page_values(**changes))


def test_an_unreadable_or_missing_photo_is_an_error_on_the_page(served, tmp_path):
    import gradio as gr

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(gr.Error, match="broken.png"):
        predict_fn(served, tmp_path)(str(broken), *page_values())
    with pytest.raises(gr.Error, match="Drop a photo"):
        predict_fn(served, tmp_path)(None, *page_values())


def test_the_page_has_a_control_per_option_at_the_models_default_explained_as_the_cli_does(served, tmp_path):
    page = build(served, "toy", tmp_path)
    controls = {b.label: b for b in page.blocks.values() if getattr(b, "label", None) in KINDS}
    assert set(controls) == set(KINDS) - {"bg_image"}  # the background image's upload says what it is for
    for name, control in controls.items():
        unset = UNSET if KINDS[name] == "boolean" else ""  # the page's null: options_from reads it as unset
        assert control.value == (unset if DEFAULTS[name] is None else DEFAULTS[name]), name
    help_ = option_help()
    assert set(help_) == set(KINDS) and not any("--" in text or "%%" in text for text in help_.values())
    assert "bg_color" in help_["background"] and "%" in help_["bg_blur"]
    # ... and `bgremoval predict --help` says the same of each flag.
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    said = {a.dest: a.help.replace("%%", "%") for a in subs["predict"]._actions if a.dest in KINDS}
    assert said == OPTION_HELP


def test_demo_takes_its_defaults_elsewhere_and_names_a_model_it_cannot_open(tmp_path, capsys):
    args = build_parser().parse_args(["demo"])
    assert (args.model, args.host, args.port) == (None, None, None)  # the champion, 127.0.0.1, Gradio's port
    with pytest.raises(SystemExit) as exit_:
        cli(["demo", "--model", str(tmp_path / "nowhere")])
    assert "bgremoval demo: cannot load model" in str(exit_.value.code) and "nowhere" in str(exit_.value.code)


@pytest.mark.slow
def test_a_photo_dropped_on_the_page_comes_back_cut_out_at_its_size(onnx_served, browser, tmp_path):
    import psutil
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "flower.jpg"  # a real photo with one clear subject
    Image.fromarray(sample_photo("flower.jpg")).save(photo, quality=95)
    size = Image.open(photo).size
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "bgremoval"), "demo", "--model", str(onnx_served), "--port", str(port)]
    log = tmp_path / "demo.log"
    with running_server(cmd, f"http://127.0.0.1:{port}/", log, project_env(), cwd=tmp_path) as proc:
        url = f"http://127.0.0.1:{port}"
        process = psutil.Process(proc.pid)
        listening = [c.laddr for p in [process, *process.children(recursive=True)] for c in p.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening

        browser.open(url, "Remove background", "bg_color", shot="demo")
        browser.driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(photo))
        WebDriverWait(browser.driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))
        browser.driver.find_element(By.CSS_SELECTOR, "#run").click()
        natural = ("const i = document.querySelector('#result img'); "
                   "return i && i.complete ? [i.naturalWidth, i.naturalHeight, i.src] : null")
        # Shown: the image and every block around it opaque, and none of them still fading in.
        opaque = ("const i = document.querySelector('#result img'); if (!i) return false; "
                  "for (let e = i; e; e = e.parentElement) if (getComputedStyle(e).opacity !== '1') return false; "
                  "return !document.getAnimations().some(a => a.playState === 'running' && a.effect "
                  "&& a.effect.target && (a.effect.target.contains(i) || i.contains(a.effect.target)))")
        try:
            width, height, src = WebDriverWait(browser.driver, 120).until(lambda d: d.execute_script(natural))
            WebDriverWait(browser.driver, 30).until(lambda d: d.execute_script(opaque))  # the result's fade-in
        finally:
            browser.screenshot("demo")
        shown = browser.driver.find_element(By.CSS_SELECTOR, "#result img")
        assert shown.is_displayed() and shown.size["width"] > 0 and shown.size["height"] > 0
        assert (width, height) == size
        with urllib.request.urlopen(src, timeout=30) as resp:
            result = Image.open(io.BytesIO(resp.read()))
        assert result.size == size and result.mode == "RGBA"  # serve.defaults.output: a cut-out
        alpha = np.asarray(result)[..., 3]
        assert len(np.unique(np.asarray(result.convert("L")))) > 16 and 0.01 < (alpha > 127).mean() < 0.99
        downloads = tmp_path / "downloads"
        browser.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                       {"behavior": "allow", "downloadPath": str(downloads)})
        browser.driver.find_element(By.CSS_SELECTOR, "#download").click()
        WebDriverWait(browser.driver, 30).until(lambda d: list(downloads.glob("*.png")))
        (saved,) = downloads.glob("*.png")
        assert saved.name == "flower-cutout.png" and (np.asarray(Image.open(saved)) == np.asarray(result)).all()
        loaded = browser.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(name.startswith((url, "data:", "blob:")) for name in loaded), loaded  # works offline
        field = browser.driver.find_element(By.CSS_SELECTOR, "#option-threshold input, #option-threshold textarea")
        field.send_keys("2")
        browser.driver.find_element(By.CSS_SELECTOR, "#run").click()
        browser.wait_for("threshold 2.0 is outside [0, 1]", shot="demo-bad-option", timeout=60)  # said, not a crash
        assert f"bgremoval demo: {url}" in log.read_text()
