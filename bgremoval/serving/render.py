"""The picture a user asked for, from an image and its predicted mask, at the image's own size.

Where the mask is soft, the photo's colours mix the subject's with the old background's: pasted as they are
onto a new background they leave a fringe of the old one. Foreground estimation recovers the subject's own
colours there (pymatting's multi-level estimator, Germer et al. 2020); matting re-estimates the soft band's
alpha from the photo itself (closed-form matting, Levin et al. 2008, held near the network's alpha where the
photo says little), for hair and fur finer than the network sees. Both work on the uncertain band only,
block by block, so time and memory follow the band, not the image.
"""

from __future__ import annotations

import importlib.util
import io
import math
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from bgremoval.serving.options import Options

EDGE = (0.02, 0.98)  # alpha strictly between these is the uncertain band
EDGE_GROW = 3        # px the band grows by for foreground estimation: the fringe just outside it is mixed too
MATTE_GROW = 3       # px matting's unknown band (the soft band and the mask's outline) grows by
# How strongly the matte is held to the network's alpha: 0 is pure closed-form matting, which on composites
# strays wherever the photo breaks its colour-line model (benchmarks/composition.py measured 0.01 best).
MATTE_PRIOR = 0.01
MATTE_EPSILON = 1e-7  # the closed-form Laplacian's regulariser (pymatting's default)
# Blocks: the band's bounding box is worked in blocks of at most this side, each with a margin of context,
# so memory stays bounded at any image size (closed-form matting's Laplacian grows fast with its block).
FG_BLOCK, FG_MARGIN = 512, 16
MATTE_BLOCK, MATTE_MARGIN = 128, 16
MATTE_CG_ITERATIONS = 1000
# numba's default threading layer aborts on parallel kernels launched from two threads at once (the scoring
# server runs requests in threads): one pymatting call at a time.
_PYMATTING = threading.Lock()
_LOADING = threading.Lock()
# scipy.ndimage (about 0.35 s to import on 2 AVX2 cores) is imported where an edge or a blur needs it: a mask
# never does, so `bgremoval predict --output mask` goes without it.
# The pymatting modules the edges use, each needing only numpy, scipy and numba. `import pymatting` would
# compile every kernel of the package (about 30, over a minute on 2 cores for each new install); loaded one
# by one, numba compiles (and caches, beside each module) only these.
PYMATTING_MODULES = ("foreground.estimate_foreground_ml", "laplacian.cf_laplacian", "preconditioner.ichol",
                     "solver.cg")


def pymatting_module(name: str) -> ModuleType:
    """pymatting's module `name` (one of PYMATTING_MODULES), loaded from its file without the package's
    __init__, under its own name (so numba's cache of it is the one `import pymatting` would use)."""
    with _LOADING:  # the server's threads: none may see a module another is still executing
        return sys.modules.get(f"pymatting.{name}") or _load_pymatting_module(name)


def _load_pymatting_module(name: str) -> ModuleType:
    full = f"pymatting.{name}"
    package = importlib.util.find_spec("pymatting")
    if package is None or not package.submodule_search_locations:
        raise ImportError("pymatting is not installed (pip install pymatting): cut-outs estimate edge colours with it")
    path = Path(package.submodule_search_locations[0], *name.split(".")).with_suffix(".py")
    if not path.is_file():
        raise ImportError(f"this pymatting has no {path.name}: bgremoval needs pymatting>=1.1.12,<2")
    spec = importlib.util.spec_from_file_location(full, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[full]
        raise
    return module


def edge_band(alpha: np.ndarray, grow: int) -> np.ndarray:
    """Pixels whose alpha is strictly inside EDGE, and those within `grow` pixels of them."""
    from scipy import ndimage

    band = (alpha > EDGE[0]) & (alpha < EDGE[1])
    if grow and band.any():
        band = ndimage.binary_dilation(band, iterations=grow)
    return band


def band_blocks(band: np.ndarray, size: int, margin: int) -> Iterator[tuple[tuple[slice, slice], ...]]:
    """Blocks of at most size x size tiling the band's bounding box, those holding band pixels:
    (outer, inner, core): the block with `margin` pixels of context, the block within `outer`, the block."""
    rows, cols = np.flatnonzero(band.any(1)), np.flatnonzero(band.any(0))
    if not rows.size:
        return
    h, w = band.shape
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    step_y = math.ceil((y1 - y0) / math.ceil((y1 - y0) / size))  # even blocks, none a sliver
    step_x = math.ceil((x1 - x0) / math.ceil((x1 - x0) / size))
    for by in range(y0, y1, step_y):
        ey = min(by + step_y, y1)
        for bx in range(x0, x1, step_x):
            ex = min(bx + step_x, x1)
            if not band[by:ey, bx:ex].any():
                continue
            oy, ox = max(0, by - margin), max(0, bx - margin)
            outer = (slice(oy, min(h, ey + margin)), slice(ox, min(w, ex + margin)))
            yield outer, (slice(by - oy, ey - oy), slice(bx - ox, ex - ox)), (slice(by, ey), slice(bx, ex))


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 photo and its (H, W) alpha in [0, 1] -> the photo with the subject's own colours
    (those that `alpha` of them over some background make the photo) in the uncertain band."""
    band = edge_band(alpha, EDGE_GROW)
    out = image.copy()
    if not band.any():
        return out
    estimate_foreground_ml = pymatting_module("foreground.estimate_foreground_ml").estimate_foreground_ml
    for outer, inner, core in band_blocks(band, FG_BLOCK, FG_MARGIN):
        with _PYMATTING:
            fg = estimate_foreground_ml(image[outer].astype(np.float32) / 255, alpha[outer].astype(np.float32))
        keep = band[core]
        out[core][keep] = np.clip(np.round(fg[inner][keep] * 255), 0, 255).astype(np.uint8)
    return out


def trimap(alpha: np.ndarray) -> np.ndarray:
    """1 (sure foreground), 0 (sure background) or 0.5 (unknown): unknown is the soft band and the mask's
    outline (alpha >= 0.5: a hard mask has one too), grown by MATTE_GROW pixels."""
    from scipy import ndimage

    fg = alpha >= 0.5
    outline = ndimage.binary_dilation(fg) & ~ndimage.binary_erosion(fg, border_value=1)
    unknown = edge_band(alpha, 0) | outline
    if unknown.any():
        unknown = ndimage.binary_dilation(unknown, iterations=MATTE_GROW)
    return np.where(unknown, 0.5, fg.astype(np.float64))


def closed_form(image: np.ndarray, tri: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Closed-form matting of one block (image (h, w, 3) in [0, 1], trimap, the network's alpha): the
    unknown pixels' alpha minimising a' L a + MATTE_PRIOR |a - prior|^2 given the known ones."""
    from scipy import sparse

    cf_laplacian = pymatting_module("laplacian.cf_laplacian").cf_laplacian
    ichol = pymatting_module("preconditioner.ichol").ichol
    cg = pymatting_module("solver.cg").cg

    unknown = (tri == 0.5).ravel()
    laplacian = cf_laplacian(image, epsilon=MATTE_EPSILON, radius=1, is_known=tri != 0.5).tocsr()[unknown]
    system = (laplacian[:, unknown] + MATTE_PRIOR * sparse.identity(int(unknown.sum()), format="csr")).tocsr()
    rhs = -laplacian[:, ~unknown] @ tri.ravel()[~unknown] + MATTE_PRIOR * prior.ravel()[unknown]
    solved = tri.ravel().copy()
    solved[unknown] = np.clip(cg(system, rhs, M=ichol(system), maxiter=MATTE_CG_ITERATIONS), 0, 1)
    return solved.reshape(tri.shape)


def matte(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W) alpha with the trimap's unknown band re-estimated from the photo by closed-form matting."""
    tri = trimap(alpha)
    unknown = tri == 0.5
    out = alpha.astype(np.float32).copy()
    for outer, inner, core in band_blocks(unknown, MATTE_BLOCK, MATTE_MARGIN):
        with _PYMATTING:
            solved = closed_form(image[outer].astype(np.float64) / 255, tri[outer], alpha[outer].astype(np.float64))
        keep = unknown[core]
        out[core][keep] = solved[inner][keep]
    return out


def cover_box(width: int, height: int, bg_width: int, bg_height: int) -> tuple[float, float, float, float]:
    """The centred part of a bg_width x bg_height background with the photo's aspect ratio, as large as fits
    (left, top, right, bottom): scaled to width x height it covers the photo, the overflow cropped evenly."""
    scale = max(width / bg_width, height / bg_height)
    crop_w, crop_h = width / scale, height / scale
    left, top = max(0.0, (bg_width - crop_w) / 2), max(0.0, (bg_height - crop_h) / 2)  # 0, not -1e-15
    return left, top, min(float(bg_width), left + crop_w), min(float(bg_height), top + crop_h)


def fit_cover(background: np.ndarray, width: int, height: int) -> np.ndarray:
    """A background image (H', W', 3) uint8 -> (height, width, 3): scaled to cover, centre-cropped."""
    box = cover_box(width, height, background.shape[1], background.shape[0])
    fitted = Image.fromarray(background).resize((width, height), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.asarray(fitted, dtype=np.uint8)


def blurred(image: np.ndarray, alpha: np.ndarray, strength: float) -> np.ndarray:
    """Portrait mode's background: the photo blurred (Gaussian, sigma = `strength` % of its shorter side),
    the subject left out of the blur (weighted by 1 - alpha) so it leaves no halo around itself."""
    from scipy import ndimage

    h, w = alpha.shape
    sigma = strength / 100 * min(h, w)
    factor = max(1.0, sigma / 4)  # blur a downscaled copy, sigma 4 px there: the same picture, much cheaper
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    s = sigma * small[0] / w
    photo = np.asarray(Image.fromarray(image).resize(small, Image.Resampling.BOX), np.float32)
    weight = 1 - np.asarray(Image.fromarray(alpha.astype(np.float32), "F").resize(small, Image.Resampling.BOX))
    weight = np.clip(weight, 0, 1)
    eps = 1e-3  # where no background is near (inside a large subject), the plain blur shows through
    num = ndimage.gaussian_filter(photo * weight[..., None], (s, s, 0)) + eps * ndimage.gaussian_filter(photo, (s, s, 0))
    den = ndimage.gaussian_filter(weight, s)[..., None] + eps
    small_bg = np.clip(np.round(num / den), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small_bg).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def background_for(image: np.ndarray, alpha: np.ndarray, opts: Options) -> np.ndarray:
    """The composite's new background at the photo's size, (H, W, 3) float32 (or (3,) for a colour)."""
    if opts.background == "image":
        return fit_cover(opts.bg_image, image.shape[1], image.shape[0]).astype(np.float32)
    if opts.background == "blur":
        return blurred(image, alpha, opts.bg_blur).astype(np.float32)
    return np.array(opts.bg_color, np.float32)


def render(image: np.ndarray, prob: np.ndarray, opts: Options) -> Image.Image:
    """A mask (8-bit L), an RGBA cut-out, or a composite on a new background (RGB)."""
    alpha = matte(image, prob) if opts.matting else prob
    if opts.threshold is not None:
        alpha = (alpha >= opts.threshold).astype(np.float32)
    alpha8 = np.clip(np.round(alpha * 255), 0, 255).astype(np.uint8)
    if opts.output == "mask":
        return Image.fromarray(alpha8, mode="L")
    a = alpha8.astype(np.float32) / 255
    colours = estimate_foreground(image, a) if opts.estimate_foreground else image
    if opts.output == "cutout":
        return Image.fromarray(np.dstack([colours, alpha8]), mode="RGBA")
    background = background_for(image, a, opts)
    out = colours.astype(np.float32)  # background + a * (colours - background), in place: 40 MP stays bounded
    out -= background
    out *= a[..., None]
    out += background
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), mode="RGB")


def warm_up() -> None:
    """Load pymatting's compiled code now (seconds; compiled the first time), not in the first request that
    estimates edges."""
    image = np.zeros((24, 24, 3), np.uint8)
    image[:, 12:] = 255
    alpha = np.clip(np.linspace(-1, 2, 24, dtype=np.float32), 0, 1)[None].repeat(24, 0)
    estimate_foreground(image, alpha)
    matte(image, alpha)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
