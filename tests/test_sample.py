"""The synthetic sample: deterministic, soft-edged, and not trivial."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bgremoval.data.sample import SampleSpec, ensure_sample, generate_sample

SPEC = SampleSpec(n_scenes=6, frames_per_scene=3, min_size=48, max_size=72, fg_min=0.02, fg_max=0.7)


def _read_all(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    assert generate_sample(tmp_path / "a", SPEC, seed=3) == 18
    generate_sample(tmp_path / "b", SPEC, seed=3)
    generate_sample(tmp_path / "c", SPEC, seed=4)
    a, b, c = (_read_all(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_masks_are_soft_and_fractions_spread(tmp_path):
    spec = SampleSpec(n_scenes=12, frames_per_scene=2, min_size=64, max_size=96, fg_min=0.02, fg_max=0.7)
    generate_sample(tmp_path, spec, seed=0)
    masks = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "masks").glob("*.png"))]
    assert len(masks) == 24
    fractions = np.array([m.mean() / 255 for m in masks])
    assert fractions.min() < 0.08 and fractions.max() > 0.3  # small and large objects
    # Anti-aliased edges: values strictly between 0 and 255 exist in every mask.
    assert all(((m > 0) & (m < 255)).any() for m in masks)


def test_frames_of_a_scene_move(tmp_path):
    generate_sample(tmp_path, SPEC, seed=0)
    first, last = (np.asarray(Image.open(tmp_path / "masks" / f"scene00_{f:03d}.png")) for f in (0, 2))
    assert first.shape == last.shape and (first != last).any()


def test_ensure_sample_reuses_a_matching_sample(tmp_path):
    assert ensure_sample(tmp_path, SPEC, seed=1) is True
    assert ensure_sample(tmp_path, SPEC, seed=1) is False
    assert ensure_sample(tmp_path, SPEC, seed=2) is True  # new seed -> redrawn
    assert len(list((tmp_path / "images").iterdir())) == 18
