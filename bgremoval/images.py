"""Reading images safely (files or request bytes): clear errors naming the file, a pixel cap checked before
decoding, EXIF orientation applied. Shared by the data stages and the served model."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")



class ImageReadError(ValueError):
    """A file that cannot be used as an image; the message names the file and the reason."""


def sha256_file(path: Path) -> str:
    """Content hash of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_image(source: Path | bytes, max_pixels: int, label: str | None = None,
               limit_name: str = "prepare.max_pixels") -> Image.Image:
    """Open and fully decode an image file (or its bytes), refusing more than `max_pixels`
    before decoding. Errors name `label` (default: the path) and the setting that sets the cap."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = label or "image"
        if len(source) == 0:
            raise ImageReadError(f"{label}: is empty (0 bytes)")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        label = label or str(path)
        try:
            if path.stat().st_size == 0:
                raise ImageReadError(f"{label}: file is empty (0 bytes)")
        except OSError as exc:
            raise ImageReadError(f"{label}: cannot be read ({exc.strerror or exc})") from exc
        stream = path
    try:
        # PIL warns (and past 2x its own limit raises) on large images; our own cap is the
        # one that counts, so check the header first and silence PIL's global heuristic.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"{label}: {width}x{height} = {width * height} pixels is over the limit of "
                    f"{max_pixels} ({limit_name}); refusing to decode a possible "
                    "decompression bomb. Downscale the image or raise the limit."
                )
            if width == 0 or height == 0:
                raise ImageReadError(f"{label}: the image is empty ({width}x{height} pixels)")
            img.load()  # decodes everything: truncated files fail here, not later
            # Photos from phones carry their orientation in EXIF; masks are drawn on what
            # a viewer shows, so every reader in the project applies it the same way.
            return ImageOps.exif_transpose(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{label}: refused as a decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{label}: cannot be decoded as an image ({exc})") from exc


def load_rgb(source: Path | bytes, max_pixels: int, **labels: str) -> np.ndarray:
    """Decode an image file (or its bytes) into (H, W, 3) uint8 RGB; `labels` as open_image takes them."""
    return np.asarray(open_image(source, max_pixels, **labels).convert("RGB"), dtype=np.uint8)
