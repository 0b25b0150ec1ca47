"""Number-aware metrics: parse a model's answer into a number, score it against the target.

The metrics follow the paper (Zausinger et al., 2025): accuracy of the parsed final number
(exact float equality) and MAE / R² on ``sign(x)·log10(|x|+1)``; plain MAE, median absolute error
and R² come along. Every metric carries a bootstrap 95% confidence interval.

Parsing rules (:func:`parse_number`, the library's :func:`ntl.parsing.parse_number`), chosen for
DeepMind mathematics answers, which are always one plain number (``-12``, ``0.5``, ``3``):

* The text must hold **exactly one number token**; two or more (``3/4``, ``1 2``, ``5 - 3``,
  ``1, 2``) is invalid, and so is a digit that is not part of a well-formed number (``12abc``,
  ``x2``, ``3.5.1``).
* A number token is an optional sign (``-``, ``+``, or the unicode minus ``−``) **attached** to the
  digits, an integer part, an optional fraction (``3.50``, ``.5``, ``5.``) and an optional exponent
  (``1e-05``, ``2E+3``). Scientific notation is read as such: ``1e-05`` is 1e-05 (Python prints
  small floats that way), never -5 or 1.
* A sign separated from the digits by whitespace (``- 12``) is invalid: it is either an expression
  or a tokenizer that decodes with spaces between pieces, and both should show up as invalid
  rather than be silently repaired. (The digit-split T5 tokenizer decodes ``-12`` as ``-12``.)
* Thousands separators are accepted only in strict groups of three: ``1,000`` and ``12,345.5`` are
  1000 and 12345.5; ``1,00``, ``1, 000`` and the decimal comma ``3,5`` are invalid.
* Text around the number is allowed (``The answer is -12.`` is -12), except an arithmetic operator
  (``+ - * / ^ × ÷ %``) right next to it, ignoring spaces (``x-3``, ``- 12``, ``12/``, ``50%``).
* Values that overflow float (``1e400``) are invalid.

Exact match (:func:`is_exact_match`) is float equality of the parsed values: ``3.50`` matches
``3.5``, but ``0.30000000000000004`` does not match ``0.3``; no tolerance.

**Paper accuracy** (:func:`paper_number`, :func:`is_paper_correct`) is the metric the paper
reports as "accuracy", kept beside exact match because the two differ: the *last* number in the
text, read leniently (a sign may stand apart from its digits: ``x = - 12`` is -12; anything
around it is allowed), compared with ``numpy.isclose`` at numpy's defaults (``rtol=1e-5``,
``atol=1e-8``). On a 10-digit answer that tolerance forgives an error in the last digit
(``1234567891`` counts for ``1234567890``), so paper accuracy is >= exact match up to parsing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntl.parsing import parse_number

__all__ = [
    "METRIC_NAMES",
    "parse_number",
    "is_exact_match",
    "paper_number",
    "is_paper_correct",
    "signed_log",
    "last_place_unit",
    "INVALID_SCORED_AS",
    "compute_metrics",
    "paired_difference",
    "bootstrap_intervals",
    "question_scores",
    "PER_QUESTION_METRICS",
    "metrics_by_module",
    "nan_to_none",
    "none_to_nan",
    "dumps_json",
    "write_json",
]

#: Keys of a METRICS dict besides ``"n"``, in report order.
METRIC_NAMES: tuple[str, ...] = (
    "exact_match",
    "paper_accuracy",
    "mae",
    "median_ae",
    "r2",
    "log_mae",
    "log_r2",
    "mae_all",
    "log_mae_all",
    "near_miss_rate",
    "invalid_rate",
)

#: What an invalid answer is scored as in the metrics over every question (``mae_all``,
#: ``log_mae_all``): the prediction 0, so it costs ``|target|`` (a model cannot improve its MAE by
#: writing garbage on the questions it would get most wrong).
INVALID_SCORED_AS: float = 0.0


def _target_value(target_text: str) -> float:
    """The target's value; ``ValueError`` when the answer is not a single number."""
    target = parse_number(target_text)
    if target is None:
        raise ValueError(f"target answer {target_text!r} is not a single number")
    return target


def is_exact_match(pred_text: str | None, target_text: str) -> bool:
    """Whether the number parsed from ``pred_text`` equals the one parsed from ``target_text``.

    Float equality of the parsed values, no tolerance: ``"3.50"`` matches ``"3.5"``, ``"-0"``
    matches ``"0"``, ``"0.30000000000000004"`` does not match ``"0.3"``. An invalid prediction
    never matches.

    Raises:
        ValueError: the target is not a single number.
    """
    pred = parse_number(pred_text)
    return pred is not None and pred == _target_value(target_text)


_LENIENT_NUMBER_RE = re.compile(r"(?P<sign>[-+]\s*)?(?P<body>\d+(?:\.\d*)?|\.\d+)")


def paper_number(text: str | None) -> float | None:
    """The last number in ``text`` by the paper's lenient rule; ``None`` when there is none.

    A sign may be separated from the digits by spaces (``"x = - 12"`` -> -12.0), text around
    the number is ignored (``"3/4"`` -> 4.0, ``"12abc"`` -> 12.0), the unicode minus counts as
    ``-``. Thousands separators and exponents are not read (``1,000`` -> 0.0, as a plain
    last-number scan does).
    """
    if text is None:
        return None
    matches = list(_LENIENT_NUMBER_RE.finditer(str(text).replace("\u2212", "-")))
    if not matches:
        return None
    m = matches[-1]
    value = float(m.group("body"))
    value = -value if (m.group("sign") or "").startswith("-") else value
    return value if math.isfinite(value) else None


def is_paper_correct(pred_text: str | None, target_text: str) -> bool:
    """The paper's accuracy for one example: ``numpy.isclose(last number of pred_text, target)``
    with numpy's default tolerances (``rtol=1e-5``, ``atol=1e-8``).

    Raises:
        ValueError: the target is not a single number.
    """
    pred = paper_number(pred_text)
    return pred is not None and bool(np.isclose(pred, _target_value(target_text)))


def signed_log(x: np.ndarray | float) -> np.ndarray:
    """``sign(x)·log10(|x|+1)``, the paper's scale for log-MAE and log-R² (float64 array)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log10(np.abs(x) + 1.0)


def last_place_unit(target: np.ndarray | float) -> np.ndarray:
    """One unit in the last place of each target: 1 for integers, 0.1 for ``2.5``, 0.01 for
    ``-0.35``, read from the shortest decimal form of the float (``3.50`` is ``3.5``: 0.1).

    A *near miss* (:func:`compute_metrics`' ``near_miss_rate``) is a valid answer that is off by
    exactly this much: for integer answers, ``|pred - target| == 1``. Returns a float64 array.
    """
    values = np.asarray(target, dtype=np.float64).reshape(-1)
    out = np.ones(values.shape, dtype=np.float64)
    for i, v in enumerate(values):
        if math.isfinite(v) and v != int(v):
            text = np.format_float_positional(v, unique=True, trim="-")
            out[i] = 10.0 ** -len(text.partition(".")[2])
    return out.reshape(np.shape(target))


# --------------------------------------------------------------------------------------------
# metrics with bootstrap confidence intervals
# --------------------------------------------------------------------------------------------

# Bootstrap replicates are processed in chunks of about this many resampled elements, so
# n=10k, n_boot=1000 needs tens of MB, not gigabytes.
_CHUNK_ELEMENTS = 1_000_000


def _stats(
    pred: np.ndarray, target: np.ndarray, valid: np.ndarray, paper_ok: np.ndarray, unit: np.ndarray
) -> dict[str, np.ndarray]:
    """All metrics for each row of (R, n) arrays; ``pred`` is :data:`INVALID_SCORED_AS` where
    invalid, ``paper_ok`` the per-example paper-accuracy hits, ``unit`` each target's
    :func:`last_place_unit`. Returns (R,) arrays.

    Rows with no valid prediction give NaN for the valid-only MAE-type metrics; rows whose valid
    targets are constant (or fewer than two) give NaN R².
    """
    n = target.shape[1]
    v = valid.astype(np.float64)
    n_valid = v.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        # means over every question (an invalid answer is the prediction INVALID_SCORED_AS)
        for key, per_q in _per_question(pred, target, valid, paper_ok, unit).items():
            out[key] = per_q.sum(axis=1) / n
        for prefix, p, t in (
            ("", pred, target),
            ("log_", signed_log(pred), signed_log(target)),
        ):
            err = np.abs(p - t)
            out[prefix + "mae"] = np.where(n_valid > 0, (err * v).sum(axis=1) / n_valid, np.nan)
            t_mean = (t * v).sum(axis=1, keepdims=True) / n_valid[:, None]
            ss_tot = (((t - t_mean) * v) ** 2).sum(axis=1)
            ss_res = ((err * v) ** 2).sum(axis=1)
            # relative threshold: constant targets give ss_tot of rounding-error size, not 0
            scale = (np.abs(t) * v).max(axis=1, initial=0.0) ** 2 * np.maximum(n_valid, 1)
            degenerate = (n_valid < 2) | (ss_tot <= 1e-24 * scale) | (ss_tot == 0)
            out[prefix + "r2"] = np.where(degenerate, np.nan, 1.0 - ss_res / ss_tot)
        # median over the valid entries of each row: invalid -> +inf, sort, pick the middle
        err = np.where(valid, np.abs(pred - target), np.inf)
        err.sort(axis=1)
        k = n_valid.astype(np.int64)
        rows = np.arange(err.shape[0])
        lo_i = np.maximum((k - 1) // 2, 0)
        hi_i = np.minimum(k // 2, n - 1) if n else k
        med = 0.5 * (err[rows, lo_i] + err[rows, hi_i]) if n else np.full(len(k), np.nan)
        out["median_ae"] = np.where(k > 0, med, np.nan)
    return out


def _per_question(
    pred: np.ndarray, target: np.ndarray, valid: np.ndarray, paper_ok: np.ndarray, unit: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-question scores (arrays shaped like ``pred``) whose mean over the questions is a
    metric: exact match, paper accuracy, ``mae_all``, ``log_mae_all``, ``near_miss_rate`` and
    ``invalid_rate``. ``pred`` holds :data:`INVALID_SCORED_AS` where ``valid`` is false."""
    err = np.abs(pred - target)
    return {
        "exact_match": (valid & (pred == target)).astype(np.float64),
        "paper_accuracy": paper_ok.astype(np.float64),
        "mae_all": err,
        "log_mae_all": np.abs(signed_log(pred) - signed_log(target)),
        "near_miss_rate": (valid & np.isclose(err, unit, rtol=1e-6, atol=0.0)).astype(np.float64),
        "invalid_rate": (~valid).astype(np.float64),
    }


#: Metrics that are a mean of per-question scores over every question (paired comparisons and
#: the two-way bootstrap over questions and seeds work on these).
PER_QUESTION_METRICS: tuple[str, ...] = (
    "exact_match", "paper_accuracy", "mae_all", "log_mae_all", "near_miss_rate", "invalid_rate",
)


def compute_metrics(
    preds: Sequence[float | None],
    targets: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    paper_preds: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """Exact match, paper accuracy, MAE, median AE, R², log-MAE, log-R² and invalid rate, with
    bootstrap CIs.

    Args:
        preds: parsed predictions, ``None`` (or NaN) for an invalid answer; length n.
        targets: target values, finite floats; length n.
        paper_preds: the predictions read by the paper's rule (:func:`paper_number`), for
            ``paper_accuracy`` (``numpy.isclose`` to the target); ``None``: ``preds``.
        n_boot: bootstrap replicates (examples resampled with replacement, the same resample for
            every metric). ``0`` gives ``lo == hi == value``.
        seed: seed of the resampling (``numpy.random.default_rng``); same inputs and seed give
            the same intervals.
        confidence: coverage of the percentile interval.

    Returns:
        ``{"n": n, name: {"value", "lo", "hi"} for name in METRIC_NAMES}``. ``exact_match``
        counts invalid predictions as wrong; ``mae``, ``median_ae``, ``r2`` and their ``log_``
        versions (on ``sign(x)·log10(|x|+1)``) use the valid predictions only; ``mae_all`` and
        ``log_mae_all`` count every question, an invalid answer scored as predicting
        :data:`INVALID_SCORED_AS` (0); ``near_miss_rate`` is the share of questions answered
        validly and wrong by exactly one unit in the target's last place
        (:func:`last_place_unit`; for integers ``|pred - target| == 1``); ``invalid_rate`` is
        the share of invalid answers. Undefined values are NaN (all predictions invalid, R² of constant
        targets, n = 0); write them with :func:`write_json`, which turns NaN into ``null``.
        The interval is the bootstrap percentile interval, widened to include the point
        estimate in the rare case resampling bias puts it outside (R², medians at small n).

    Raises:
        ValueError: lengths differ, a target is not finite, or n_boot/confidence out of range.
    """
    if len(preds) != len(targets):
        raise ValueError(f"preds and targets differ in length: {len(preds)} vs {len(targets)}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if paper_preds is None:
        paper_preds = preds
    elif len(paper_preds) != len(targets):
        raise ValueError(f"paper_preds and targets differ in length: {len(paper_preds)} vs {len(targets)}")
    pred, target, valid, paper_ok, unit = _stat_arrays(preds, paper_preds, targets)
    if not np.isfinite(target).all():
        bad = target[~np.isfinite(target)][:3].tolist()
        raise ValueError(f"targets must be finite floats, got {bad}")
    n = len(target)

    point = {
        k: float(v[0])
        for k, v in _stats(pred[None], target[None], valid[None], paper_ok[None], unit[None]).items()
    }
    result: dict[str, Any] = {"n": int(n)}
    if n == 0 or n_boot == 0:
        for name in METRIC_NAMES:
            result[name] = {"value": point[name], "lo": point[name], "hi": point[name]}
        return result

    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    reps: dict[str, list[np.ndarray]] = {name: [] for name in METRIC_NAMES}
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        for name, vals in _stats(pred[idx], target[idx], valid[idx], paper_ok[idx], unit[idx]).items():
            reps[name].append(vals)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    for name in METRIC_NAMES:
        value = point[name]
        boot = np.concatenate(reps[name])
        boot = boot[np.isfinite(boot)]
        if boot.size == 0 or not math.isfinite(value):
            lo = hi = value if boot.size == 0 else math.nan
        else:
            lo, hi = (float(q) for q in np.percentile(boot, [alpha, 100.0 - alpha]))
            lo, hi = min(lo, value), max(hi, value)
        result[name] = {"value": value, "lo": lo, "hi": hi}
    return result


def _read_records(
    records: Iterable[Mapping[str, Any]],
) -> tuple[list[float | None], list[float | None], list[float], list[str]]:
    """(strict predictions, paper-rule predictions, targets, modules) of prediction records."""
    preds: list[float | None] = []
    paper_preds: list[float | None] = []
    targets: list[float] = []
    modules: list[str] = []
    for i, rec in enumerate(records):
        target = parse_number(str(rec["answer"]))
        if target is None:
            raise ValueError(
                f"record {i} (module {rec.get('module')!r}) has answer {rec['answer']!r}, "
                "which is not a single number"
            )
        parsed = rec.get("parsed")
        ok = rec.get("valid", parsed is not None) and parsed is not None
        value = float(parsed) if ok else None
        preds.append(value if value is not None and math.isfinite(value) else None)
        # the paper's reading needs the generated text; records without it reuse ``parsed``
        paper_preds.append(paper_number(rec["prediction"]) if "prediction" in rec else preds[-1])
        targets.append(target)
        modules.append(str(rec.get("module", "")))
    return preds, paper_preds, targets, modules


def _stat_arrays(
    preds: Sequence[float | None], paper_preds: Sequence[float | None], targets: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pred with INVALID_SCORED_AS where invalid, target, valid, paper_ok, unit) arrays for
    `_stats`."""
    target = np.asarray(targets, dtype=np.float64).reshape(-1)
    pred = np.array([np.nan if p is None else float(p) for p in preds], dtype=np.float64)
    valid = np.isfinite(pred)
    paper = np.array([np.nan if p is None else float(p) for p in paper_preds], dtype=np.float64)
    return (np.where(valid, pred, INVALID_SCORED_AS), target, valid, np.isclose(paper, target),
            last_place_unit(target))


def question_scores(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per-question scores of prediction records (``eval/<split>.jsonl``): ``{metric: (n,)
    float64 array}`` for every metric in :data:`PER_QUESTION_METRICS`, whose mean is that
    metric over all n questions (invalid answers included, as :func:`compute_metrics` counts
    them)."""
    preds, paper_preds, targets, _ = _read_records(records)
    return _per_question(*_stat_arrays(preds, paper_preds, targets))


def paired_difference(
    records: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[str] = ("exact_match", "paper_accuracy", "log_mae"),
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """``metric(records) − metric(baseline)`` on the same examples, with a paired bootstrap CI.

    Both lists are prediction records (``eval/<split>.jsonl``) of the same questions in the same
    order (two arms evaluated on one split). Each bootstrap replicate resamples example indices
    once and scores both arms on that resample, so the interval reflects the difference, not the
    two arms' separate spreads.

    Returns:
        ``{metric: {"value", "lo", "hi"}}``; NaN where a metric is undefined.

    Raises:
        ValueError: the two lists differ in length or in their questions.
    """
    if len(records) != len(baseline):
        raise ValueError(f"paired records differ in length: {len(records)} vs {len(baseline)}")
    for i, (a, b) in enumerate(zip(records, baseline)):
        if a.get("question") != b.get("question") or str(a["answer"]) != str(b["answer"]):
            raise ValueError(f"paired records differ at {i}: {a.get('question')!r} vs {b.get('question')!r}")
    pa, qa, ta, _ = _read_records(records)
    pb, qb, tb, _ = _read_records(baseline)
    arr_a, arr_b = _stat_arrays(pa, qa, ta), _stat_arrays(pb, qb, tb)

    def diff(idx: np.ndarray) -> dict[str, np.ndarray]:
        sa = _stats(*(x[idx] for x in arr_a))
        sb = _stats(*(x[idx] for x in arr_b))
        return {m: sa[m] - sb[m] for m in metrics}

    return bootstrap_intervals(diff, len(ta), list(metrics), n_boot=n_boot, seed=seed,
                               confidence=confidence)


def bootstrap_intervals(
    fn: Any, n: int, names: Sequence[str], *, n_boot: int, seed: int, confidence: float
) -> dict[str, dict[str, float]]:
    """``{name: {"value", "lo", "hi"}}`` of ``fn(idx) -> {name: (R,) array}``, a statistic of
    R index rows over ``n`` examples: the value on the identity, the percentile interval over
    ``n_boot`` resamples (examples drawn with replacement, in chunks of about
    ``_CHUNK_ELEMENTS``), widened to include the value. Non-finite replicates are dropped; a
    non-finite value or no finite replicate gives NaN bounds; ``n == 0`` or ``n_boot == 0``
    gives ``lo == hi == value``."""
    point = {k: float(v[0]) for k, v in fn(np.arange(n)[None]).items() if k in names}
    if n == 0 or n_boot == 0:
        return {k: {"value": v, "lo": v, "hi": v} for k, v in point.items()}
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    reps: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        for k, vals in fn(idx).items():
            if k in reps:
                reps[k].append(vals)
    alpha = 100.0 * (1.0 - confidence) / 2.0
    out: dict[str, dict[str, float]] = {}
    for k in names:
        boot = np.concatenate(reps[k])
        boot = boot[np.isfinite(boot)]
        value = point[k]
        if boot.size == 0 or not math.isfinite(value):
            out[k] = {"value": value, "lo": math.nan, "hi": math.nan}
            continue
        lo, hi = (float(q) for q in np.percentile(boot, [alpha, 100.0 - alpha]))
        out[k] = {"value": value, "lo": min(lo, value), "hi": max(hi, value)}
    return out


def metrics_by_module(
    records: Iterable[Mapping[str, Any]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """METRICS over all prediction records and per module.

    Args:
        records: prediction records as in ``eval/<split>.jsonl``: ``{"module", "answer",
            "parsed", "valid", ...}``. The target is ``parse_number(answer)``; the prediction is
            ``parsed`` when ``valid`` is true (missing ``valid``: ``parsed is not None``), else
            invalid.
        n_boot, seed: passed to :func:`compute_metrics`.

    Returns:
        ``{"overall": METRICS, "per_module": {module: METRICS}}``, modules sorted by name.

    Raises:
        ValueError: a record's answer is not a single number.
    """
    preds, paper_preds, targets, modules = _read_records(records)
    per_module: dict[str, Any] = {}
    mod_arr = np.array(modules, dtype=object)
    for module in sorted(set(modules)):
        sel = np.flatnonzero(mod_arr == module)
        per_module[module] = compute_metrics(
            [preds[i] for i in sel], [targets[i] for i in sel], n_boot=n_boot, seed=seed,
            paper_preds=[paper_preds[i] for i in sel],
        )
    return {
        "overall": compute_metrics(preds, targets, n_boot=n_boot, seed=seed, paper_preds=paper_preds),
        "per_module": per_module,
    }


# --------------------------------------------------------------------------------------------
# JSON with NaN -> null
# --------------------------------------------------------------------------------------------


def nan_to_none(obj: Any) -> Any:
    """Copy of ``obj`` (dicts, lists, numpy scalars/arrays) with NaN and ±inf as ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return nan_to_none(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes NaN/inf as ``null`` (strict JSON); ``indent=2`` by default."""
    kwargs.setdefault("indent", 2)
    return json.dumps(nan_to_none(obj), allow_nan=False, **kwargs)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN/inf -> ``null``) to ``path``, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_json(obj) + "\n", encoding="utf-8")


def none_to_nan(obj: Any) -> Any:
    """Inverse of :func:`nan_to_none` for METRICS read back from JSON: ``None`` -> NaN."""
    if isinstance(obj, Mapping):
        return {k: none_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [none_to_nan(v) for v in obj]
    return math.nan if obj is None else obj
