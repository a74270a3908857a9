"""Paired augmentation: one geometric warp for image and mask together, photometry on the image only,
and background swap (a training foreground composited onto a new background)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from bgremoval.data.sample import texture


@dataclass(frozen=True)
class Probabilities:
    """Chance that each transform is applied to one augmented copy."""

    flip: float
    crop: float
    rotate: float
    perspective: float
    bg_swap: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    blur: float
    noise: float
    jpeg: float


@dataclass(frozen=True)
class Magnitudes:
    """How far each transform may go at strength 1.0."""

    crop_scale_min: float  # smallest crop area, as a share of the image
    rotate_deg: float
    perspective: float  # corner jitter, as a share of the crop's side
    brightness: float  # +/- factor
    contrast: float
    saturation: float
    hue: float  # +/- share of the hue circle
    blur_radius: float
    noise_std: float  # in 0..255 units
    jpeg_quality_min: int


@dataclass(frozen=True)
class AugmentConfig:
    """Everything one augmented copy depends on, besides its seed and inputs."""

    size: int
    strength: float
    p: Probabilities
    m: Magnitudes
    texture_share: float  # of background swaps, the share onto a generated texture

    @classmethod
    def from_params(cls, section: dict) -> "AugmentConfig":
        """From params.yaml's augment: section."""
        return cls(size=section["size"], strength=section["strength"], texture_share=section["texture_share"],
                   p=Probabilities(**section["p"]), m=Magnitudes(**section["magnitude"]))


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 matrix H with H @ [src, 1] ~ [dst, 1], from four point pairs."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    h = np.linalg.solve(np.asarray(rows, float), np.asarray(rhs, float))
    return np.append(h, 1.0).reshape(3, 3)


def random_quad(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig) -> np.ndarray:
    """Where the output's four corners come from in the input: crop, rotation, perspective, flip."""
    s, p, m = cfg.strength, cfg.p, cfg.m
    # Random-resized crop: area share and aspect jitter; the full frame when not applied.
    cw, ch, cx, cy = float(width), float(height), width / 2, height / 2
    if rng.random() < p.crop:
        scale_min = 1 - s * (1 - m.crop_scale_min)
        area = rng.uniform(max(0.05, scale_min), 1.0)
        ratio = math.exp(rng.uniform(-0.2, 0.2) * s)
        cw = min(width, width * math.sqrt(area * ratio))
        ch = min(height, height * math.sqrt(area / ratio))
        cx = rng.uniform(cw / 2, width - cw / 2)
        cy = rng.uniform(ch / 2, height - ch / 2)
    corners = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    if rng.random() < p.rotate:
        a = math.radians(rng.uniform(-1, 1) * m.rotate_deg * s)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        corners = corners @ rot.T
    if rng.random() < p.perspective:
        corners = corners + rng.uniform(-1, 1, (4, 2)) * m.perspective * s * min(cw, ch)
    if rng.random() < p.flip:
        corners = corners[[1, 0, 3, 2]]  # mirror left-right: output's left corners come from the right
    return corners + [cx, cy]


def warp_pair(image: Image.Image, mask: Image.Image, quad: np.ndarray, size: int) -> tuple[Image.Image, Image.Image]:
    """Resample image and mask with the *same* projective map, so they stay aligned."""
    out = np.array([[0, 0], [size, 0], [size, size], [0, size]], float)
    h = homography(out, quad)  # PIL wants output -> input coefficients
    coeffs = tuple((h / h[2, 2]).flatten()[:8])
    img = image.transform((size, size), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    msk = mask.transform((size, size), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    return img, msk


def composite(fg: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Foreground over a new background with the mask as alpha (soft edges kept)."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = fg.astype(np.float32) * a + background.astype(np.float32) * (1 - a)
    # Where alpha is 255 the result is the foreground exactly, bit for bit.
    return np.where(a == 1.0, fg, np.clip(np.round(out), 0, 255)).astype(np.uint8)


def background_from(
    rng: np.random.Generator, donor_image: np.ndarray, donor_mask: np.ndarray, size: int, max_fg: float = 0.03
) -> np.ndarray | None:
    """A size x size patch of another image's background (its foreground would be a wrong label), or None."""
    h, w = donor_mask.shape
    best, best_fg = None, 1.0
    for _ in range(8):  # try a few crops and keep the one with the least of the donor's foreground
        side = int(rng.uniform(0.3, 0.8) * min(h, w))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        fg = donor_mask[y : y + side, x : x + side].mean() / 255
        if fg < best_fg:
            best, best_fg = (y, x, side), fg
    if best is None or best_fg > max_fg:
        return None
    y, x, side = best
    patch = Image.fromarray(donor_image[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(patch)


def texture_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A generated texture as a background."""
    return (texture(rng, size, size) * 255).round().astype(np.uint8)


def photometric(rng: np.random.Generator, image: Image.Image, cfg: AugmentConfig) -> Image.Image:
    """Colour, blur, noise and compression changes; the mask is never touched."""
    s, p, m = cfg.strength, cfg.p, cfg.m
    if rng.random() < p.brightness:
        image = ImageEnhance.Brightness(image).enhance(1 + rng.uniform(-1, 1) * m.brightness * s)
    if rng.random() < p.contrast:
        image = ImageEnhance.Contrast(image).enhance(1 + rng.uniform(-1, 1) * m.contrast * s)
    if rng.random() < p.saturation:
        image = ImageEnhance.Color(image).enhance(1 + rng.uniform(-1, 1) * m.saturation * s)
    if rng.random() < p.hue:
        hsv = np.asarray(image.convert("HSV")).copy()
        shift = int(round(rng.uniform(-1, 1) * m.hue * s * 255))
        hsv[..., 0] = (hsv[..., 0].astype(int) + shift) % 256
        image = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < p.blur:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * m.blur_radius * s))
    if rng.random() < p.noise:
        arr = np.asarray(image, np.float32) + rng.normal(0, m.noise_std * s, (image.height, image.width, 3))
        image = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if rng.random() < p.jpeg:
        quality = int(round(100 - rng.uniform(0, 1) * (100 - m.jpeg_quality_min) * min(1.0, s)))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=max(5, quality))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image


def augment_pair(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    cfg: AugmentConfig,
    donor: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy (size x size) of an image (H, W, 3) uint8 and its mask (H, W) uint8."""
    quad = random_quad(rng, mask.shape[1], mask.shape[0], cfg)
    img, msk = warp_pair(Image.fromarray(image), Image.fromarray(mask, "L"), quad, cfg.size)
    rgb, alpha = np.asarray(img), np.asarray(msk)
    if rng.random() < cfg.p.bg_swap:
        background = None
        if donor is not None and rng.random() >= cfg.texture_share:
            background = background_from(rng, donor[0], donor[1], cfg.size)
        if background is None:
            background = texture_background(rng, cfg.size)
        rgb = composite(rgb, alpha, background)
    rgb = np.asarray(photometric(rng, Image.fromarray(rgb), cfg))
    return rgb, alpha


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Val/test copies: the whole frame squashed to size x size, as inference sees it."""
    img = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    msk = Image.fromarray(mask, "L").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img), np.asarray(msk)
