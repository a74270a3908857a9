"""The champion/challenger gate: which alias a new version gets, and why.

A new version takes `champion` only if it beats the current champion on one metric by more than a
min-delta, measured on the same test images (and, if asked, beats stock U²-NetP too); otherwise it
gets `challenger`. The previous champion keeps the alias `previous`, so a roll-back is one alias move.
"""

from __future__ import annotations

from dataclasses import dataclass

from bgremoval.scoring.metrics import DIS, HEADLINE, HIGHER_IS_BETTER

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


@dataclass(frozen=True)
class Decision:
    """Which alias the new version gets, and why (a sentence for people and for the registry)."""

    alias: str
    reason: str

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


@dataclass(frozen=True)
class Reference:
    """The candidate's and stock U²-NetP's score on the reference photos of other kinds, and how much worse
    the candidate may be there (register.max_reference_loss)."""

    candidate: float
    stock: float
    max_loss: float


def decide(metric: str, new: float, champion: float | None, *, min_delta: float, baseline: float | None,
           require_beats_baseline: bool, reference: Reference | None = None) -> Decision:
    """The gate. `champion` is None when there is none yet; `baseline` is stock U²-NetP's score; `reference`,
    when there are reference photos, the scores on them."""
    if metric not in HEADLINE:
        raise ValueError(f"register.metric {metric!r} is not one of {', '.join(HEADLINE)}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    word = "higher" if sign > 0 else "lower"
    if reference is not None and sign * (reference.stock - reference.candidate) > reference.max_loss:
        return Decision(CHALLENGER, f"on the reference photos of other kinds {metric} {reference.candidate:.4f} is "
                                    f"{abs(reference.stock - reference.candidate):.4f} worse than stock U²-NetP's "
                                    f"{reference.stock:.4f}, over register.max_reference_loss {reference.max_loss}: "
                                    "the fine-tune forgot what U²-NetP knew")
    if require_beats_baseline and baseline is not None and sign * (new - baseline) <= 0:
        return Decision(CHALLENGER, f"{metric} {new:.4f} does not beat stock U²-NetP's {baseline:.4f} "
                                    f"({word} is better) and register.require_beats_baseline is on")
    if champion is None:
        return Decision(CHAMPION, f"first model: no champion yet ({metric} {new:.4f})")
    gain = sign * (new - champion)
    if gain - min_delta > 1e-9:  # scores are floats: 0.802 - 0.800 is not more than 0.002
        return Decision(CHAMPION, f"{metric} {new:.4f} beats the champion's {champion:.4f} by {gain:.4f} "
                                  f"> min_delta {min_delta} ({word} is better)")
    return Decision(CHALLENGER, f"{metric} {new:.4f} vs the champion's {champion:.4f}: gain {gain:+.4f} is "
                                f"not more than min_delta {min_delta} ({word} is better); champion kept")


def side_by_side(metrics: dict, baseline: dict) -> dict[str, dict[str, float | bool]]:
    """The gate's report of every score both metrics files hold (headline, then DIS): the model's, stock
    U²-NetP's, and whether the model is ahead, each in its metric's own direction."""
    table = {}
    for k in (*HEADLINE, *DIS):
        if k in metrics and k in baseline:
            sign = 1 if HIGHER_IS_BETTER[k] else -1
            table[k] = {"model": float(metrics[k]), "stock_u2netp": float(baseline[k]),
                        "ahead": bool(sign * (metrics[k] - baseline[k]) > 0)}
    return table
