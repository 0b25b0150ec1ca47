"""Aggregating one metric across seeds: the mean with a Student-t interval (two or more seeds), or
the one seed's bootstrap interval; and paired per-question differences over seeds and questions
with a two-way bootstrap. Used by the report and by the paired differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ntl.lab.metrics import none_to_nan

#: Confidence level of every interval the report shows.
CONFIDENCE = 0.95


def _t_quantile(q: float, df: int) -> float:
    """Student-t quantile (scipy; a 0.975 table as fallback when scipy is missing)."""
    try:
        from scipy.stats import t as student_t
    except ImportError:  # pragma: no cover - scipy is part of the lab extra
        table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
        if q != 0.975:
            raise
        return table[df - 1] if df <= len(table) else 2.2 if df < 30 else 1.96
    return float(student_t.ppf(q, df))


def aggregate_seeds(
    per_seed: Sequence[Mapping[str, float]],
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> dict[str, Any]:
    """Aggregate one metric across seeds.

    Args:
        per_seed: one ``{"value", "lo", "hi"}`` per seed (NaN/None values are skipped).
        bounds: the metric's natural range (:data:`METRIC_BOUNDS`); the t-interval is clipped
            to it (an accuracy CI never goes below 0).

    Returns:
        ``{"value": mean, "lo", "hi", "ci": "t" | "bootstrap" | None, "n_seeds": k,
        "values": [...]}``. ``k >= 2`` finite values: t-interval across seeds; ``k == 1``: that
        seed's bootstrap CI; ``k == 0``: NaN.
    """
    entries = [none_to_nan(dict(e)) for e in per_seed]
    finite = [e for e in entries if isinstance(e["value"], (int, float))
              and math.isfinite(e["value"])]
    values = [float(e["value"]) for e in finite]
    k = len(values)
    out: dict[str, Any] = {"values": [float(e["value"]) for e in entries], "n_seeds": k}
    if k == 0:
        out.update(value=math.nan, lo=math.nan, hi=math.nan, ci=None)
    elif k == 1:
        out.update(value=values[0], lo=float(finite[0]["lo"]), hi=float(finite[0]["hi"]),
                   ci="bootstrap")
    else:
        mean = sum(values) / k
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
        half = _t_quantile(0.5 + CONFIDENCE / 2, k - 1) * sd / math.sqrt(k)
        lo, hi = max(mean - half, bounds[0]), min(mean + half, bounds[1])
        out.update(value=mean, lo=lo, hi=hi, ci="t")
    return out


def seeds_by_questions_bootstrap(
    diffs: np.ndarray, *, n_boot: int = 2000, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """Mean of a (seeds, questions) matrix of per-question paired differences, with a percentile
    interval from a two-way bootstrap that resamples seeds *and* questions in each replicate.

    Every seed is scored on the same questions, so a t-interval across seeds leaves out the
    test-sample variance and a bootstrap over questions leaves out the seed variance; resampling
    both (crossed: the same question resample for every drawn seed) keeps both. With few seeds
    the seed part is still underestimated by about a factor (k-1)/k in variance, so intervals of
    three seeds stay a little optimistic.

    Args:
        diffs: (k, n) float array, ``diffs[s, q]`` = arm's score − baseline's score on question
            ``q`` under seed ``s`` (a per-question score: exact match 0/1, absolute error, ...).
        n_boot: replicates; ``0`` gives ``lo == hi == value``.
        seed: seed of the resampling.
        confidence: coverage of the percentile interval.

    Returns:
        ``{"value": mean, "lo", "hi", "ci": "seeds x questions bootstrap", "n_seeds": k,
        "n_questions": n}``; NaN for an empty matrix.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"diffs must be a (seeds, questions) matrix, got shape {d.shape}")
    k, n = d.shape
    out: dict[str, Any] = {"ci": "seeds x questions bootstrap", "n_seeds": k, "n_questions": n}
    if k == 0 or n == 0:
        return {**out, "value": math.nan, "lo": math.nan, "hi": math.nan}
    value = float(d.mean())
    if n_boot == 0:
        return {**out, "value": value, "lo": value, "hi": value}
    rng = np.random.default_rng(seed)
    # multinomial weights: w_s (B, k) seed draws, w_q (B, n) question draws; replicate b is
    # sum_{s,q} w_s[b,s] d[s,q] w_q[b,q] / (k n)
    w_s = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    w_q = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    reps = np.einsum("bq,bq->b", w_s @ d, w_q) / (k * n)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = (float(q) for q in np.percentile(reps, [alpha, 100.0 - alpha]))
    return {**out, "value": value, "lo": min(lo, value), "hi": max(hi, value)}
