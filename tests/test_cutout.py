"""The cut-out's edges and backgrounds on tiny synthetic images whose truth is known: foreground colours under
soft alpha, closed-form matting of the edge band, a background image fitted to cover, portrait blur."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bgremoval.serving.options import options_from
from bgremoval.serving.render import (EDGE_GROW, PYMATTING_MODULES, band_blocks, blurred, closed_form, cover_box,
                                      edge_band, estimate_foreground, fit_cover, matte, render, trimap)
from tests.helpers import PARAMS

DEFAULTS = dict(PARAMS["serve"]["defaults"])


def opts(**params):
    return options_from(params, DEFAULTS, 10**6)


def soft_disc(h: int, w: int, ramp: float) -> np.ndarray:
    """A disc whose alpha falls from 1 to 0 over `ramp` pixels at its edge."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip((min(h, w) * 0.3 - np.hypot(yy - h / 2, xx - w / 2)) / ramp + 0.5, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def scene():
    """A soft-edged subject whose colours (a warm gradient) are known, over a cool background of noise:
    photo = alpha * foreground + (1 - alpha) * background."""
    h, w = 48, 64
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    foreground = np.dstack([np.full((h, w), 220.0), 80 + 60 * xx / w, 40 + 40 * yy / h])
    background = np.clip(np.dstack([np.full((h, w), 30.0), np.full((h, w), 90.0), np.full((h, w), 200.0)])
                         + rng.normal(0, 12, (h, w, 3)), 0, 255)
    alpha = soft_disc(h, w, ramp=6)
    photo = np.round(alpha[..., None] * foreground + (1 - alpha[..., None]) * background).astype(np.uint8)
    return photo, alpha, foreground, background


# --- foreground colours -----------------------------------------------------------------------------------

def test_the_estimated_foreground_is_nearer_the_truth_than_the_photo_in_the_band(scene):
    photo, alpha, foreground, _ = scene
    estimated = estimate_foreground(photo, alpha)
    band = (alpha > 0.02) & (alpha < 0.98)
    assert band.sum() > 100
    err = lambda x: np.abs(x[band].astype(np.float64) - foreground[band]).mean()  # noqa: E731
    assert err(estimated) < 0.5 * err(photo), (err(estimated), err(photo))
    outside = ~edge_band(alpha, EDGE_GROW)
    assert (estimated[outside] == photo[outside]).all()  # only the band (and its fringe) is touched


def test_a_hard_mask_has_no_band_and_nothing_to_estimate(scene):
    photo, alpha, _, _ = scene
    hard = (alpha >= 0.5).astype(np.float32)
    assert not edge_band(hard, EDGE_GROW).any()
    assert (estimate_foreground(photo, hard) == photo).all()


def test_a_composite_with_estimated_colours_is_nearer_the_true_composite(scene):
    photo, alpha, foreground, _ = scene
    green = np.array([0, 255, 0], np.float64)
    truth = alpha[..., None] * foreground + (1 - alpha[..., None]) * green
    band = (alpha > 0.02) & (alpha < 0.98)
    errors = {}
    for estimate in (False, True):
        comp = np.asarray(render(photo, alpha, opts(output="composite", bg_color="0,255,0",
                                                     estimate_foreground=estimate)), np.float64)
        errors[estimate] = np.abs(comp[band] - truth[band]).mean()
    assert errors[True] < 0.6 * errors[False], errors
    cut = np.asarray(render(photo, alpha, opts(output="cutout")))  # the served default: estimated colours
    assert (cut[..., :3] == estimate_foreground(photo, np.round(alpha * 255) / 255)).all()


def test_band_blocks_cover_the_band_once_in_bounded_blocks():
    band = np.zeros((70, 90), bool)
    band[5:60, 10] = band[40, 10:85] = True
    cores = np.zeros(band.shape, int)
    for outer, inner, core in band_blocks(band, size=16, margin=3):
        assert core[0].stop - core[0].start <= 16 and core[1].stop - core[1].start <= 16
        assert band[core].any() and np.array_equal(band[outer][inner], band[core])  # inner: the core within outer
        assert outer[0].start >= core[0].start - 3 and outer[1].stop <= core[1].stop + 3
        cores[core] += 1
    assert (cores[band] == 1).all() and cores.max() == 1
    assert list(band_blocks(np.zeros((8, 8), bool), 4, 1)) == []


# --- matting -------------------------------------------------------------------------------------------------

def test_the_trimap_marks_the_soft_band_and_the_outline_unknown():
    alpha = np.zeros((30, 30), np.float32)
    alpha[:, 15:] = 1
    tri = trimap(alpha)  # a hard mask: its outline is unknown, grown a few pixels
    assert set(np.unique(tri)) == {0.0, 0.5, 1.0}
    assert (tri[:, 14:16] == 0.5).all() and (tri[:, :5] == 0).all() and (tri[:, 25:] == 1).all()
    assert (trimap(np.ones((9, 9), np.float32)) == 1).all()  # all foreground, touching the border: no outline


def test_closed_form_matting_solves_a_tiny_trimap():
    red, blue = np.array([1.0, 0.1, 0.1]), np.array([0.1, 0.1, 1.0])
    true_alpha = np.clip((np.arange(12) - 3.5) / 5, 0, 1)[::-1]  # 1 at the left, falling to 0 across 5 columns
    image = np.ascontiguousarray(np.tile(true_alpha[None, :, None] * red + (1 - true_alpha[None, :, None]) * blue,
                                         (8, 1, 1)))
    tri = np.full((8, 12), 0.5)
    tri[:, :2], tri[:, 10:] = 1.0, 0.0
    solved = closed_form(image, tri, np.full((8, 12), 0.5))  # a prior that knows nothing
    assert np.abs(solved - true_alpha[None]).max() < 0.05
    assert (solved[:, :2] == 1).all() and (solved[:, 10:] == 0).all()


def test_matting_moves_a_blurred_shifted_alpha_towards_the_photos_edge():
    h, w = 40, 60
    true_alpha = np.zeros((h, w), np.float32)
    true_alpha[:, :30] = 1
    true_alpha[:, 30] = 0.5
    image = np.round(true_alpha[..., None] * [200, 60, 40] + (1 - true_alpha[..., None]) * [40, 80, 200]).astype(np.uint8)
    predicted = np.clip((32 - np.arange(w)) / 6 + 0.5, 0, 1).astype(np.float32)[None].repeat(h, 0)  # late and soft
    refined = matte(image, predicted)
    band = trimap(predicted) == 0.5
    assert np.abs(refined - true_alpha)[band].mean() < 0.5 * np.abs(predicted - true_alpha)[band].mean()
    assert (refined[~band] == predicted[~band]).all()
    assert np.asarray(render(image, predicted, opts(output="mask", matting=True))).shape == (h, w)


# --- backgrounds -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("photo,background,box", [((50, 50), (200, 100), (50, 0, 150, 100)),   # wider: sides cropped
                                                 ((100, 50), (100, 100), (0, 25, 100, 75)),  # taller: top and bottom
                                                 ((40, 30), (80, 60), (0, 0, 80, 60)),       # same shape: all of it
                                                 ((300, 300), (20, 10), (5, 0, 15, 10))])    # smaller: scaled up
def test_a_background_is_scaled_to_cover_and_centre_cropped(photo, background, box):
    assert cover_box(*photo, *background) == pytest.approx(box)


def test_fitting_a_background_keeps_its_centre_at_the_photos_size():
    background = np.zeros((100, 200, 3), np.uint8)
    background[:, :100] = [255, 0, 0]
    background[:, 100:] = [0, 0, 255]
    background[:, :50] = background[:, 150:] = [0, 255, 0]  # the sides, cropped away for a square photo
    fitted = fit_cover(background, 50, 50)
    assert fitted.shape == (50, 50, 3)
    assert (fitted[:, 3:22] == [255, 0, 0]).all() and (fitted[:, 28:47] == [0, 0, 255]).all()
    assert fitted[..., 1].max() < 40  # the green sides are (all but a filter's reach) cropped away
    assert fit_cover(background, 7, 31).shape == (31, 7, 3)


def test_a_composite_on_a_background_image_shows_it_where_the_mask_is_empty():
    photo = np.full((30, 40, 3), 128, np.uint8)
    prob = np.zeros((30, 40), np.float32)
    prob[10:20, 10:20] = 1
    picture = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)  # the same aspect: scaled
    comp = np.asarray(render(photo, prob, opts(output="composite", background="image", bg_image=picture)))
    fitted = fit_cover(picture, 40, 30)
    assert (comp[prob == 0] == fitted[prob == 0]).all() and (comp[prob == 1] == 128).all()


def test_portrait_blur_softens_the_background_without_a_halo_of_the_subject():
    h, w = 60, 80
    photo = np.zeros((h, w, 3), np.uint8)
    photo[:, : w // 2] = [0, 0, 255]
    photo[:, w // 2:] = [0, 255, 0]  # a sharp edge in the background
    alpha = np.zeros((h, w), np.float32)
    alpha[20:40, 5:15] = 1
    photo[alpha == 1] = [255, 0, 0]  # a red subject
    back = blurred(photo, alpha, strength=5.0).astype(np.float64)
    assert back.shape == (h, w, 3)
    edge = np.abs(np.diff(back[30, 30:50, 1])).max()
    assert edge < 255 / 4  # the edge is spread over several pixels
    assert back[30, 20, 0] < 10 and back[10, 10, 0] < 10  # around the subject: blue, not the subject's red
    comp = np.asarray(render(photo, alpha, opts(output="composite", background="blur", bg_blur=5)))
    assert (comp[alpha == 1] == [255, 0, 0]).all() and (comp[alpha == 0] == np.round(back)[alpha == 0]).all()


EDGES_ONLY = """
import sys
from concurrent.futures import ThreadPoolExecutor
from bgremoval.serving.render import warm_up
with ThreadPoolExecutor(4) as pool:  # as the server's first requests would: all at once, in a fresh process
    for future in [pool.submit(warm_up) for _ in range(4)]:
        future.result()
print(sorted(m for m in sys.modules if m.split(".")[0] == "pymatting"))
"""


def test_the_edges_load_only_the_pymatting_modules_they_use_not_the_package():
    """`import pymatting` compiles every kernel of the package; foreground estimation and matting load their
    four modules alone, once, even when several threads need them at once."""
    run = subprocess.run([sys.executable, "-c", EDGES_ONLY], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(sorted(f"pymatting.{m}" for m in PYMATTING_MODULES))
