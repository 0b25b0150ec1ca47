"""The paper's reported numbers (Zausinger et al., ICML 2025, main mathematics table).

Kept as data so that a report can print our results beside them. Values marked ≈ in the paper
were read off a bar chart (±0.003). Splits use the paper's names: ``interpolate`` and
``extrapolate`` test sets of the DeepMind mathematics dataset; log-MAE is on
``sign(x)·log10(|x|+1)``, as in :mod:`ntl.lab.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PAPER_ROWS", "PAPER_SETUP", "paper_row"]

#: What the paper trained: read this before comparing numbers with ours.
PAPER_SETUP = "T5-Base (220M, pretrained), 13 modules, 1.05M steps of 32, lr 1e-4, beam 4"

#: Paper model name -> {split: {"acc": exact match, "log_mae": log-MAE}}.
PAPER_ROWS: Mapping[str, Mapping[str, Mapping[str, float]]] = {
    "T5 (CE)": {"interpolate": {"acc": 0.643, "log_mae": 0.130},
                "extrapolate": {"acc": 0.3686, "log_mae": 0.7847}},
    "T5 + NTL-MSE": {"interpolate": {"acc": 0.717, "log_mae": 0.109},
                     "extrapolate": {"acc": 0.4278, "log_mae": 0.7789}},
    "T5 + NTL-WAS": {"interpolate": {"acc": 0.746, "log_mae": 0.098},
                     "extrapolate": {"acc": 0.4324, "log_mae": 0.7438}},
    "Regression Transformer": {"interpolate": {"acc": 0.712, "log_mae": 0.113},
                               "extrapolate": {"acc": 0.4042, "log_mae": 0.9868}},
    "RT + NTL-MSE": {"interpolate": {"acc": 0.697, "log_mae": 0.129},
                     "extrapolate": {"acc": 0.4282, "log_mae": 1.0988}},
    "xVal": {"interpolate": {"acc": 0.0, "log_mae": 0.258},
             "extrapolate": {"acc": 0.0, "log_mae": 0.8259}},
}

# Our arm name -> the paper's row it reproduces. Arms with a λ suffix (`@0.1`), variants
# (`:multidigit`, `:decoder`) or other losses have no counterpart in the paper's table.
_ARM_TO_ROW = {
    "ce": "T5 (CE)",
    "ce+ntl-mse": "T5 + NTL-MSE",
    "ce+ntl-was": "T5 + NTL-WAS",
    "rt": "Regression Transformer",
    "rt+ntl": "RT + NTL-MSE",
    "rt+ntl-mse": "RT + NTL-MSE",
    "xval": "xVal",
}


def paper_row(arm: str) -> tuple[str, Mapping[str, Mapping[str, float]]] | None:
    """The paper's (row name, numbers) for our ``arm``, or None when the paper has no such row."""
    name = _ARM_TO_ROW.get(arm)
    return (name, PAPER_ROWS[name]) if name else None
