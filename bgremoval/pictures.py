"""Pictures for people: masks overlaid on their images, in a grid."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bgremoval.images import load_rgb


def overlay(image: np.ndarray, mask: np.ndarray, color=(0, 255, 90), opacity: float = 0.45) -> np.ndarray:
    """The image with its mask tinted in and the mask's boundary drawn solid."""
    a = (mask.astype(np.float32) / 255.0)[..., None] * opacity
    out = image.astype(np.float32) * (1 - a) + np.asarray(color, np.float32) * a
    hard = mask >= 128
    edge = hard ^ np.roll(hard, 1, 0) | hard ^ np.roll(hard, 1, 1)
    out[edge] = color
    return np.clip(out, 0, 255).astype(np.uint8)


def grid(tiles: list[np.ndarray], labels: list[str], cols: int, tile: int = 160) -> Image.Image:
    """Tiles (H, W, 3) uint8 resized to tile x tile in a labelled grid."""
    rows = max(1, -(-len(tiles) // cols))
    label_h = 14
    canvas = Image.new("RGB", (cols * tile, rows * (tile + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (t, label) in enumerate(zip(tiles, labels)):
        x, y = (i % cols) * tile, (i // cols) * (tile + label_h)
        canvas.paste(Image.fromarray(t).resize((tile, tile), Image.Resampling.BILINEAR), (x, y + label_h))
        draw.text((x + 2, y + 1), label[: tile // 6], fill=(0, 0, 0))
    return canvas


def checkerboard_composite(image: np.ndarray, alpha: np.ndarray, square: int = 12) -> np.ndarray:
    """A cut-out (alpha in [0, 1]) over a grey checkerboard, as image editors show transparency."""
    h, w = alpha.shape
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // square + xx // square) % 2)[..., None] == 0, 200, 150).astype(np.float32)
    a = alpha[..., None].astype(np.float32)
    return (image.astype(np.float32) * a + board * (1 - a)).astype(np.uint8)


def thumbnail_png(path: Path, max_pixels: int, side: int = 64) -> bytes:
    """A small copy of an image file as PNG bytes (a logged model's input example)."""
    image = Image.fromarray(load_rgb(path, max_pixels))
    image.thumbnail((side, side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def square(tile: np.ndarray) -> np.ndarray:
    """A picture centred on a white square, so that the grid shows it undistorted."""
    h, w = tile.shape[:2]
    side = max(h, w)
    out = np.full((side, side, 3), 255, np.uint8)
    out[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = tile
    return out
