"""What a photo shows, in two numbers prepare records for validation: its contrast (a near-constant photo, black
or white or one flat colour, has nothing to cut out) and a perceptual hash, so that the same picture under two
names is found after it was resized, re-encoded, cropped a little or shifted in colour.

The hash is imagehash's pHash and dHash of the photo (8x8 each, 128 bits together); the distance of two photos
is the number of bits that differ. The pair separates distinct photos of one kind better than either alone;
docs/data.md gives the distances measured between distinct photos and between copies, on which
prepare.near_copy_distance rests.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from PIL import Image

HASH_BITS = 128
THUMBNAIL = 256  # the side contrast is measured at: a photo's spread of grey levels does not need every pixel
SPREAD = (1, 99)  # percentiles of the grey levels whose distance is the contrast: a few odd pixels do not count


def contrast(img: Image.Image) -> float:
    """How far apart the photo's darkest and brightest grey levels lie (the 1st to the 99th percentile, 0..255):
    near 0 for a photo of one flat tone, which has no subject to cut out."""
    grey = img.convert("L")
    grey.thumbnail((THUMBNAIL, THUMBNAIL))
    low, high = np.percentile(np.asarray(grey), SPREAD)
    return float(high - low)


def perceptual_hash(img: Image.Image) -> str:
    """The photo's pHash and dHash (imagehash) as 32 hex digits."""
    import imagehash

    rgb = img.convert("RGB")
    return str(imagehash.phash(rgb)) + str(imagehash.dhash(rgb))


def _bits(hashes: pd.Series) -> np.ndarray:
    """(N, 2) uint64: each hash's 128 bits."""
    text = hashes.to_numpy(dtype=str)
    return np.array([[int(h[:16], 16), int(h[16:], 16)] for h in text], dtype=np.uint64).reshape(-1, 2)


def hash_distance(a: str, b: str) -> int:
    """Bits that differ between two perceptual hashes (0..128)."""
    return int(np.bitwise_count(_bits(pd.Series([a])) ^ _bits(pd.Series([b]))).sum())


def near_copies(hashes: pd.Series, max_distance: int, chunk: int = 1024) -> Iterator[tuple[object, object, int]]:
    """(index, index, distance) for every pair of rows whose hashes differ by at most max_distance bits, each pair
    once. Rows without a hash (the photo did not decode) are left out. All pairs are compared, in chunks:
    about 10^8 pairs a few seconds."""
    hashes = hashes.dropna()
    if len(hashes) < 2:
        return
    bits, index = _bits(hashes), hashes.index.to_numpy()
    for start in range(0, len(bits), chunk):
        block = bits[start:start + chunk]
        dist = np.bitwise_count(block[:, None, :] ^ bits[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows + start  # each pair once, never a photo with itself
        for r, c in zip(rows[keep], cols[keep]):
            yield index[r + start], index[c], int(dist[r, c])


def merge_groups(groups: pd.Series, pairs: list[tuple[object, object, int]]) -> pd.Series:
    """The groups with every two rows of a pair in one group: groups linked by near-copies become one, named by
    the first of their names, so a split never separates a photo from its copy."""
    parent = {g: g for g in groups.unique()}

    def root(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for a, b, _ in pairs:
        ra, rb = root(groups[a]), root(groups[b])
        if ra != rb:
            first, second = sorted((ra, rb), key=str)
            parent[second] = first
    return groups.map(root)


def copies_in(manifest: pd.DataFrame, max_distance: int, min_contrast: float) -> list[tuple[object, object, int]]:
    """The manifest's near-copies: pairs of rows (by index) whose photos' hashes differ by at most max_distance
    bits. Blank photos (contrast below min_contrast) are left out: their hashes say nothing about a picture, and
    validate names them on their own."""
    if "image_hash" not in manifest:
        return []
    shown = manifest["image_contrast"] >= min_contrast
    return list(near_copies(manifest.loc[shown, "image_hash"], max_distance))
