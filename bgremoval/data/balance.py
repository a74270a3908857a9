"""Balancing: bin images by foreground fraction (and category), oversample minority bins,
and measure the pixel-level class imbalance as a positive-class weight for the loss."""

from __future__ import annotations

import numpy as np
import pandas as pd


def bin_labels(fg_fraction: pd.Series, edges: list[float], category: pd.Series | None = None) -> pd.Series:
    """A bin label per image, e.g. '0.05-0.15' or 'shoes|0.05-0.15' when a category is given."""
    edges = sorted(edges)
    idx = np.clip(np.searchsorted(edges, fg_fraction.to_numpy(), side="right") - 1, 0, len(edges) - 2)
    labels = pd.Series([f"{edges[i]:g}-{edges[i + 1]:g}" for i in idx], index=fg_fraction.index)
    if category is not None:
        labels = category.astype(str) + "|" + labels
    return labels


def target_weights(bins: pd.Series, weights: str | dict[str, float]) -> dict[str, float]:
    """Requested share per non-empty bin: 'equal', or a mapping bin -> weight (normalised)."""
    present = sorted(bins.unique())
    if weights == "equal":
        raw = {b: 1.0 for b in present}
    elif isinstance(weights, dict):
        unknown = set(weights) - set(present)
        if unknown:
            raise ValueError(f"augment.balance.weights names bins not in the data: {sorted(unknown)}; bins are {present}")
        raw = {b: float(weights.get(b, 0.0)) for b in present}
    else:
        raise ValueError(f"augment.balance.weights must be 'equal' or a mapping bin -> weight; got {weights!r}")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("augment.balance.weights are all zero")
    return {b: w / total for b, w in raw.items() if w > 0}


def oversample_plan(bins: pd.Series, weights: dict[str, float], copies: int, max_repeat: int, seed: int) -> list:
    """Row labels to augment, one entry per output copy, so bins come out near `weights`.

    Every image keeps at least `copies` copies (nothing is dropped); minority bins are topped up
    until each bin reaches its share of the total, but no image is repeated more than
    `copies * max_repeat` times, which bounds how far a one-image bin can be blown up.
    """
    counts = bins.value_counts()
    # Smallest total that lets every bin keep all its copies at its requested share.
    total = max(counts[b] * copies / w for b, w in weights.items())
    rng = np.random.default_rng(seed)
    plan = []
    for b in sorted(weights):
        members = bins.index[bins == b].to_numpy()
        want = int(round(weights[b] * total))
        want = min(max(want, len(members) * copies), len(members) * copies * max_repeat)
        # Round-robin over a seeded permutation: repeats are spread evenly over the bin's images.
        order = rng.permutation(members)
        plan.extend(order[i % len(order)] for i in range(want))
    return plan


def positive_weight(masks: list[np.ndarray]) -> tuple[float, float]:
    """(foreground pixel share, weight for foreground pixels in BCE = background / foreground)."""
    fg = float(sum(m.astype(np.float64).sum() / 255 for m in masks))
    n = float(sum(m.size for m in masks))
    share = fg / n if n else 0.0
    return share, (1 - share) / max(share, 1e-6)
