"""Weight-space ensembling of a fine-tuned network with its pretrained weights (WiSE-FT, Wortsman et al. 2022)."""

from __future__ import annotations

import keras
import numpy as np

from bgremoval.training.fit import evaluate_val


def blend_weights(finetuned: list[np.ndarray], pretrained: list[np.ndarray], share: float) -> list[np.ndarray]:
    """share * fine-tuned + (1 - share) * pretrained, tensor by tensor (integer tensors: the fine-tuned ones)."""
    if len(finetuned) != len(pretrained):
        raise ValueError(f"cannot blend {len(finetuned)} weight tensors with {len(pretrained)}: not the same network")
    out = []
    for f, p in zip(finetuned, pretrained):
        if f.shape != p.shape:
            raise ValueError(f"cannot blend weights of shape {f.shape} with {p.shape}: not the same network")
        out.append(share * f + (1.0 - share) * p if np.issubdtype(f.dtype, np.floating) else f)
    return out


def choose_blend(network: keras.Model, pretrained: list[np.ndarray], val_ds,
                 shares: tuple[float, ...]) -> tuple[float, dict[float, dict[str, float]]]:
    """Weight-space ensembling of a fine-tuned network with its pretrained weights (WiSE-FT, Wortsman et al.
    2022): score each share of fine-tuned weights on val, leave the network at the best val IoU (ties: the
    larger share). Returns the share and the val metrics of every share tried."""
    if tuple(shares) == (1.0,):
        return 1.0, {}
    finetuned = [w.copy() for w in network.get_weights()]
    scores: dict[float, dict[str, float]] = {}
    for share in sorted(set(shares)):
        network.set_weights(blend_weights(finetuned, pretrained, share))
        scores[share] = evaluate_val(network, val_ds)
    best = max(scores, key=lambda s: (scores[s]["iou"], s))
    network.set_weights(blend_weights(finetuned, pretrained, best))
    return best, scores
