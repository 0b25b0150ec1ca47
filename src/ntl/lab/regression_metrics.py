"""Metrics of a text-regression task (a price, a measurement): MAE, RMSE, R², MAPE, Spearman and
the invalid rate, counted over **every** question, with bootstrap confidence intervals.

An answer that is not a number cannot be dropped: a model that answers only the easy questions
would look better. It is scored **as if it had predicted the training median** of the target
(``fallback``, e.g. ``spec.json``'s ``train_median``), the constant that minimises the absolute
error when nothing is known about the question; so every invalid answer costs as much as the
simplest baseline, and ``invalid_rate`` says how many there were.

Definitions (``p`` the predictions with the fallback filled in, ``t`` the targets, ``n`` rows):

- ``mae`` = mean |p − t|; ``rmse`` = sqrt(mean (p − t)²);
- ``r2`` = 1 − Σ(p − t)² / Σ(t − mean t)² (NaN for constant targets);
- ``mape`` = mean |p − t| / |t| over the rows with t ≠ 0, as a fraction (0.1 = 10%);
- ``spearman``: Pearson correlation of the ranks of p and t (ties get their mean rank; NaN when
  either is constant);
- ``invalid_rate``: the share of invalid answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ntl.lab.metrics import bootstrap_intervals

__all__ = [
    "REGRESSION_METRIC_NAMES",
    "absolute_errors",
    "paired_regression_difference",
    "regression_metrics",
    "regression_metrics_from_records",
]

#: Keys of a regression METRICS dict besides ``"n"`` and ``"fallback"``, in report order.
REGRESSION_METRIC_NAMES: tuple[str, ...] = ("mae", "rmse", "r2", "mape", "spearman", "invalid_rate")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (float64)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1).astype(np.float64)


def _stats(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics for each row of (R, n) arrays (``pred`` with the fallback filled in)."""
    n = target.shape[1]
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        err = pred - target
        out["mae"] = np.abs(err).mean(axis=1) if n else np.full(len(target), np.nan)
        out["rmse"] = np.sqrt((err**2).mean(axis=1)) if n else np.full(len(target), np.nan)
        ss_tot = ((target - target.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        scale = np.abs(target).max(axis=1, initial=0.0) ** 2 * max(n, 1)
        constant = (ss_tot <= 1e-24 * scale) | (ss_tot == 0)
        out["r2"] = np.where(constant, np.nan, 1.0 - (err**2).sum(axis=1) / ss_tot)
        nonzero = target != 0
        count = nonzero.sum(axis=1)
        rel = np.where(nonzero, np.abs(err) / np.where(nonzero, np.abs(target), 1.0), 0.0)
        out["mape"] = np.where(count > 0, rel.sum(axis=1) / np.maximum(count, 1), np.nan)
        rp, rt = _ranks(pred), _ranks(target)
        rp -= rp.mean(axis=1, keepdims=True)
        rt -= rt.mean(axis=1, keepdims=True)
        denom = np.sqrt((rp**2).sum(axis=1) * (rt**2).sum(axis=1))
        out["spearman"] = np.where(denom > 0, (rp * rt).sum(axis=1) / np.where(denom > 0, denom, 1.0),
                                   np.nan)
        out["invalid_rate"] = 1.0 - valid.mean(axis=1) if n else np.full(len(target), np.nan)
    return out


def _arrays(
    preds: Sequence[float | None], targets: Sequence[float], fallback: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred with ``fallback`` where invalid, target, valid) as (n,) arrays."""
    if len(preds) != len(targets):
        raise ValueError(f"preds and targets differ in length: {len(preds)} vs {len(targets)}")
    if not math.isfinite(float(fallback)):
        raise ValueError(f"fallback={fallback!r}; pass the training median of the target")
    target = np.asarray(targets, dtype=np.float64).reshape(-1)
    if not np.isfinite(target).all():
        raise ValueError(f"targets must be finite floats, got {target[~np.isfinite(target)][:3].tolist()}")
    pred = np.array([np.nan if p is None else float(p) for p in preds], dtype=np.float64)
    valid = np.isfinite(pred)
    return np.where(valid, pred, float(fallback)), target, valid


def regression_metrics(
    preds: Sequence[float | None],
    targets: Sequence[float],
    *,
    fallback: float,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """MAE, RMSE, R², MAPE, Spearman and invalid rate over all questions, with bootstrap CIs.

    Args:
        preds: parsed predictions, ``None`` (or NaN) for an invalid answer; length n.
        targets: target values, finite; length n.
        fallback: the prediction an invalid answer is scored as (the training median).
        n_boot: bootstrap replicates (questions resampled with replacement, one resample for all
            metrics); 0 gives ``lo == hi == value``.
        seed: seed of the resampling.
        confidence: coverage of the percentile interval.

    Returns:
        ``{"n": n, "fallback": fallback, name: {"value", "lo", "hi"} for name in
        REGRESSION_METRIC_NAMES}``; undefined values are NaN.

    Raises:
        ValueError: lengths differ, a target or the fallback is not finite, or n_boot /
            confidence out of range.
    """
    if n_boot < 0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"n_boot={n_boot} must be >= 0 and confidence={confidence} in (0, 1)")
    pred, target, valid = _arrays(preds, targets, fallback)
    result: dict[str, Any] = {"n": int(len(target)), "fallback": float(fallback)}
    result.update(bootstrap_intervals(
        lambda idx: _stats(pred[idx], target[idx], valid[idx]), len(target), REGRESSION_METRIC_NAMES,
        n_boot=n_boot, seed=seed, confidence=confidence))
    return result


def _read(records: Iterable[Mapping[str, Any]]) -> tuple[list[float | None], list[float]]:
    """(predictions, targets) of prediction records (``eval/<split>.jsonl`` rows)."""
    from ntl.parsing import parse_number

    preds: list[float | None] = []
    targets: list[float] = []
    for i, rec in enumerate(records):
        target = parse_number(str(rec["answer"]))
        if target is None:
            raise ValueError(f"record {i} has answer {rec['answer']!r}, which is not a single number")
        parsed = rec.get("parsed")
        ok = rec.get("valid", parsed is not None) and parsed is not None
        preds.append(float(parsed) if ok else None)
        targets.append(target)
    return preds, targets


def absolute_errors(records: Iterable[Mapping[str, Any]], *, fallback: float) -> np.ndarray:
    """Per-question ``|prediction − target|`` of prediction records (``eval/<split>.jsonl``
    rows), an invalid answer scored as ``fallback``; shape (n,), float64."""
    pred, target, _ = _arrays(*_read(records), fallback)
    return np.abs(pred - target)


def regression_metrics_from_records(
    records: Iterable[Mapping[str, Any]], *, fallback: float, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """:func:`regression_metrics` of prediction records ``{"answer", "parsed", "valid", ...}``
    (``eval/<split>.jsonl`` rows): the target is the parsed ``answer``, the prediction
    ``parsed`` when ``valid``."""
    preds, targets = _read(records)
    return regression_metrics(preds, targets, fallback=fallback, n_boot=n_boot, seed=seed)


def paired_regression_difference(
    records: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    *,
    fallback: float,
    metrics: Sequence[str] = ("mae", "rmse", "spearman"),
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """``metric(records) − metric(baseline)`` on the same questions, with a paired bootstrap CI
    (each replicate resamples the questions once and scores both on it).

    Raises:
        ValueError: the lists differ in length or in their questions.
    """
    if len(records) != len(baseline):
        raise ValueError(f"paired records differ in length: {len(records)} vs {len(baseline)}")
    for i, (a, b) in enumerate(zip(records, baseline)):
        if a.get("question") != b.get("question") or str(a["answer"]) != str(b["answer"]):
            raise ValueError(f"paired records differ at {i}: {a.get('question')!r} vs {b.get('question')!r}")
    unknown = [m for m in metrics if m not in REGRESSION_METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {REGRESSION_METRIC_NAMES}")
    pa, ta = _read(records)
    pb, _ = _read(baseline)
    arr_a, arr_b = _arrays(pa, ta, fallback), _arrays(pb, ta, fallback)

    def diff(idx: np.ndarray) -> dict[str, np.ndarray]:
        sa = _stats(*(x[idx] for x in arr_a))
        sb = _stats(*(x[idx] for x in arr_b))
        return {m: sa[m] - sb[m] for m in metrics}

    return bootstrap_intervals(diff, len(ta), list(metrics), n_boot=n_boot, seed=seed,
                               confidence=confidence)
