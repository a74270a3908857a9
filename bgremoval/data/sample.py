"""The built-in synthetic sample: short "video" scenes of textured objects on textured backgrounds.

Each scene is a group (like a video sequence): a background that pans slightly and one to three
objects that drift, turn and scale between frames. Masks are soft (anti-aliased by 4x
supersampling), and each scene draws a target foreground fraction log-uniformly, so fractions
spread from a few percent to most of the frame. Everything follows from the seed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the drawing code changes, so cached samples are rebuilt
_SUPERSAMPLE = 4  # edges are drawn at 4x and box-filtered down: soft, anti-aliased alpha
_SPEC_FILE = ".sample-spec.json"


@dataclass(frozen=True)
class SampleSpec:
    """How much sample data to draw and how big."""

    n_scenes: int
    frames_per_scene: int
    min_size: int
    max_size: int
    fg_min: float
    fg_max: float


@dataclass(frozen=True)
class _Object:
    """One foreground object: a polygon shape, a texture, and how it moves per frame."""

    radii: np.ndarray  # radius at each of the polygon's angles, unit-area scaled
    scale: float  # pixels per unit radius at frame 0
    center: tuple[float, float]
    velocity: tuple[float, float]
    angle: float
    spin: float
    growth: float
    texture: np.ndarray  # (H, W, 3) float in [0, 1], same size as the frame


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))))
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random colour texture (H, W, 3) in [0, 1]: noise, stripes, checks or gradient."""
    c1, c2 = rng.random(3), rng.random(3)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # cloudy noise at two scales
        t = 0.65 * _smooth_noise(rng, h, w, int(rng.integers(3, 9))) + 0.35 * _smooth_noise(
            rng, h, w, int(rng.integers(12, 40))
        )
    elif kind == 1:  # stripes at a random angle and period
        theta, period = rng.uniform(0, math.pi), rng.uniform(6, 40)
        t = 0.5 + 0.5 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    elif kind == 2:  # checks
        size = rng.uniform(8, 48)
        t = ((xx // size + yy // size) % 2).astype(np.float32)
        t = np.asarray(Image.fromarray((t * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1)))
        t = t.astype(np.float32) / 255.0
    else:  # linear gradient with a little noise
        theta = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(theta) + yy * math.sin(theta)
        t = (g - g.min()) / max(1e-6, float(np.ptp(g))) + 0.15 * _smooth_noise(rng, h, w, 16)
        t = np.clip(t, 0, 1)
    tex = c1[None, None, :] * t[..., None] + c2[None, None, :] * (1 - t[..., None])
    return tex.astype(np.float32)


def _shape(rng: np.random.Generator, n: int = 128) -> np.ndarray:
    """Radii of a random closed shape at n angles, scaled to unit area."""
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    kind = rng.integers(4)
    if kind == 0:  # ellipse
        a, b = 1.0, rng.uniform(0.4, 1.0)
        r = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    elif kind == 1:  # star
        points, depth = int(rng.integers(4, 9)), rng.uniform(0.3, 0.7)
        r = 1 - depth * (0.5 + 0.5 * np.cos(points * theta))
    elif kind == 2:  # rounded rectangle (superellipse)
        p, aspect = rng.uniform(3, 8), rng.uniform(0.4, 1.0)
        r = (np.abs(np.cos(theta)) ** p + np.abs(np.sin(theta) / aspect) ** p) ** (-1 / p)
    else:  # blob: a few low-frequency harmonics
        r = np.ones_like(theta)
        for k in range(2, 6):
            r += rng.uniform(0, 0.35 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    # Polygon area from radii (shoelace over the fan) -> rescale to unit area.
    area = 0.5 * np.sum(r * np.roll(r, -1) * math.sin(2 * math.pi / n))
    return r / math.sqrt(area)


def _polygon(obj: _Object, frame: int, n_frames: int) -> list[tuple[float, float]]:
    """The object's outline at a frame, in supersampled pixel coordinates."""
    t = frame / max(1, n_frames - 1)
    scale = obj.scale * (1 + obj.growth * t)
    angle = obj.angle + obj.spin * t
    cx = obj.center[0] + obj.velocity[0] * t
    cy = obj.center[1] + obj.velocity[1] * t
    theta = np.linspace(0, 2 * math.pi, len(obj.radii), endpoint=False) + angle
    xs = (cx + scale * obj.radii * np.cos(theta)) * _SUPERSAMPLE
    ys = (cy + scale * obj.radii * np.sin(theta)) * _SUPERSAMPLE
    return list(zip(xs.tolist(), ys.tolist()))


def _alpha(obj: _Object, frame: int, n_frames: int, h: int, w: int) -> np.ndarray:
    """Soft alpha (H, W) in [0, 1] of one object at one frame."""
    big = Image.new("L", (w * _SUPERSAMPLE, h * _SUPERSAMPLE), 0)
    ImageDraw.Draw(big).polygon(_polygon(obj, frame, n_frames), fill=255)
    small = big.resize((w, h), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _scene_objects(rng: np.random.Generator, spec: SampleSpec, h: int, w: int) -> list[_Object]:
    """Objects whose union covers a log-uniform target fraction of the frame."""
    target = math.exp(rng.uniform(math.log(spec.fg_min), math.log(spec.fg_max)))
    n_obj = int(rng.integers(1, 4))
    shares = rng.dirichlet(np.ones(n_obj) * 2)
    objects = []
    for share in shares:
        area = max(target * share, 0.004) * h * w
        scale = math.sqrt(area)
        # Keep centres far enough inside that the object stays mostly in frame.
        margin_x, margin_y = min(w / 2, 0.5 * scale), min(h / 2, 0.5 * scale)
        center = (rng.uniform(margin_x, w - margin_x), rng.uniform(margin_y, h - margin_y))
        drift = 0.15 * min(h, w)
        objects.append(
            _Object(
                radii=_shape(rng),
                scale=scale,
                center=center,
                velocity=(rng.uniform(-drift, drift), rng.uniform(-drift, drift)),
                angle=rng.uniform(0, 2 * math.pi),
                spin=rng.uniform(-0.6, 0.6),
                growth=rng.uniform(-0.15, 0.15),
                texture=_shade(rng, texture(rng, h, w)),
            )
        )
    return objects


def _shade(rng: np.random.Generator, tex: np.ndarray) -> np.ndarray:
    """Light an object texture from one side, so objects look solid rather than cut from paper."""
    h, w, _ = tex.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    g = xx * math.cos(theta) + yy * math.sin(theta)
    light = 0.7 + 0.5 * (g - g.min()) / max(1e-6, float(np.ptp(g)))
    return np.clip(tex * light[..., None], 0, 1)


def render_scene(
    rng: np.random.Generator, spec: SampleSpec
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames of one scene as (RGB uint8 (H, W, 3), mask uint8 (H, W)) pairs."""
    w = int(rng.integers(spec.min_size, spec.max_size + 1))
    h = int(rng.integers(spec.min_size, spec.max_size + 1))
    pan = int(0.1 * min(h, w))  # the camera pans across a slightly larger background
    background = texture(rng, h + pan, w + pan)
    if rng.random() < 0.5:  # half the scenes get a second, overlaid background layer
        background = 0.6 * background + 0.4 * texture(rng, h + pan, w + pan)
    objects = _scene_objects(rng, spec, h, w)
    pan_dir = rng.uniform(0, 1, size=2)
    frames = []
    for f in range(spec.frames_per_scene):
        t = f / max(1, spec.frames_per_scene - 1)
        oy, ox = int(pan_dir[0] * pan * t), int(pan_dir[1] * pan * t)
        img = background[oy : oy + h, ox : ox + w].copy()
        union = np.zeros((h, w), np.float32)
        for obj in objects:  # later objects are in front of earlier ones
            a = _alpha(obj, f, spec.frames_per_scene, h, w)
            img = obj.texture * a[..., None] + img * (1 - a[..., None])
            union = np.maximum(union, a)
        img = img + rng.normal(0, 0.015, img.shape)  # a little sensor noise
        rgb = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        frames.append((rgb, (union * 255).round().astype(np.uint8)))
    return frames


def generate_sample(out_dir: Path, spec: SampleSpec, seed: int) -> int:
    """Write the sample as images/ and masks/ under out_dir; return the number of pairs."""
    images, masks = Path(out_dir) / "images", Path(out_dir) / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    count = 0
    for scene in range(spec.n_scenes):
        rng = np.random.default_rng([seed, scene])
        # Mixed formats on purpose: the pipeline must read what users have.
        ext = ".jpg" if scene % 2 == 0 else ".png"
        for f, (rgb, mask) in enumerate(render_scene(rng, spec)):
            stem = f"scene{scene:02d}_{f:03d}"
            save_kwargs = {"quality": 92} if ext == ".jpg" else {}
            Image.fromarray(rgb).save(images / f"{stem}{ext}", **save_kwargs)
            Image.fromarray(mask, mode="L").save(masks / f"{stem}.png")
            count += 1
    return count


def ensure_sample(out_dir: Path, spec: SampleSpec, seed: int) -> bool:
    """Generate the sample unless out_dir already holds exactly this spec; True if generated."""
    out_dir = Path(out_dir)
    stamp = {"spec": asdict(spec), "seed": seed, "generator": GENERATOR_VERSION}
    stamp_path = out_dir / _SPEC_FILE
    expected = spec.n_scenes * spec.frames_per_scene
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        have = [len(list((out_dir / d).glob("*"))) for d in ("images", "masks")]
        if have == [expected, expected]:
            log.info("sample in %s is up to date (%d pairs)", out_dir, expected)
            return False
    for sub in ("images", "masks"):  # start clean: stale files would become orphans
        for p in (out_dir / sub).glob("*"):
            p.unlink()
    stamp_path.unlink(missing_ok=True)
    n = generate_sample(out_dir, spec, seed)
    stamp_path.write_text(json.dumps(stamp, indent=1))
    log.info("generated %d synthetic sample pairs in %s", n, out_dir)
    return True
