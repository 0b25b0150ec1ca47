"""A synthetic text-regression task with known noise, so the best possible error is known.

Each row has two numbers and a colour, ``"a 3.71, b 8.20, c green"``, drawn uniformly
(``a``, ``b`` in [0, 10] with two decimals, ``c`` from red / green / blue), and the answer is the
integer ``y = round(f(a, b, c) + ε)`` with

    f(a, b, c) = 50·a + 10·b² + {red: 0, green: 100, blue: 250}[c],     ε ~ Normal(0, noise²).

Given the row, ``y`` has a known discrete distribution, ``P(y = j) = Φ((j + ½ − f)/σ) −
Φ((j − ½ − f)/σ)``; its median is the best prediction for absolute error and its mean for squared
error. ``spec.json`` records, per evaluation split, the MAE of that median and the RMSE of that mean (the
Bayes errors: no model can do better in expectation) next to the usual fields of
:mod:`ntl.lab.data.tabular`. The rows are drawn with ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ntl.lab.data.tabular import generate_task, row_text

__all__ = ["COLOURS", "SyntheticSpec", "bayes_errors", "draw_rows", "generate", "mean_function"]

#: The colour column's values and what each adds to ``f``.
COLOURS: dict[str, float] = {"red": 0.0, "green": 100.0, "blue": 250.0}
TASK = "synthetic"


@dataclass(frozen=True)
class SyntheticSpec:
    """The synthetic table and its split.

    Attributes:
        n_rows: rows drawn (before the split).
        noise: σ of the Gaussian noise added to ``f`` before rounding.
        n_valid, n_test, n_train, n_extrapolate, extrapolate_fraction: as in
            :class:`ntl.lab.data.diamonds.DiamondsSpec`.
        seed: seed of the rows and of the split.
    """

    n_rows: int = 20_000
    noise: float = 50.0
    n_valid: int = 1_000
    n_test: int = 1_000
    n_train: int | None = None
    n_extrapolate: int | None = None
    extrapolate_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.n_rows, bool) or not isinstance(self.n_rows, int) or self.n_rows < 1:
            raise ValueError(f"SyntheticSpec.n_rows={self.n_rows!r}; expected an integer >= 1")
        if not (math.isfinite(float(self.noise)) and self.noise > 0):
            raise ValueError(f"SyntheticSpec.noise={self.noise!r}; expected a finite σ > 0")

    def split_options(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        return {k: fields[k] for k in ("n_valid", "n_test", "n_train", "n_extrapolate",
                                       "extrapolate_fraction", "seed")}


def mean_function(a: np.ndarray, b: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """``f(a, b, c) = 50·a + 10·b² + COLOURS[c]`` (float64, elementwise)."""
    offset = np.array([COLOURS[str(c)] for c in np.asarray(colour).ravel()]).reshape(np.shape(colour))
    return 50.0 * np.asarray(a, np.float64) + 10.0 * np.asarray(b, np.float64) ** 2 + offset


def draw_rows(spec: SyntheticSpec) -> tuple[list[str], list[str], np.ndarray]:
    """``(texts, answers, f)`` of ``spec.n_rows`` rows (``f`` the noise-free mean of each)."""
    rng = np.random.default_rng(spec.seed)
    a = rng.integers(0, 1001, spec.n_rows) / 100.0
    b = rng.integers(0, 1001, spec.n_rows) / 100.0
    colour = np.array(list(COLOURS))[rng.integers(0, len(COLOURS), spec.n_rows)]
    f = mean_function(a, b, colour)
    y = np.rint(f + rng.normal(0.0, spec.noise, spec.n_rows)).astype(np.int64)
    texts = [row_text([("a", f"{x:.2f}"), ("b", f"{z:.2f}"), ("c", str(c))]) for x, z, c in zip(a, b, colour)]
    return texts, [str(int(v)) for v in y], f


def bayes_errors(f: np.ndarray, noise: float) -> dict[str, float]:
    """The best possible MAE (predicting each row's conditional median) and RMSE (its
    conditional mean) of ``y = round(f + ε)``, ``ε ~ Normal(0, noise²)``, averaged over the rows
    with means ``f``."""
    from scipy.special import ndtr

    f = np.asarray(f, dtype=np.float64)
    if f.size == 0:
        return {"mae": math.nan, "rmse": math.nan}
    width = math.ceil(9 * noise) + 2
    j = np.rint(f)[:, None] + np.arange(-width, width + 1)[None, :]  # (n, J) support
    p = ndtr((j + 0.5 - f[:, None]) / noise) - ndtr((j - 0.5 - f[:, None]) / noise)
    p /= p.sum(axis=1, keepdims=True)  # the ≤1e-18 tails beyond 9σ
    cdf = np.cumsum(p, axis=1)
    median = j[np.arange(len(f)), np.argmax(cdf >= 0.5, axis=1)]
    mean = (p * j).sum(axis=1)
    mae = (p * np.abs(j - median[:, None])).sum(axis=1)
    var = (p * (j - mean[:, None]) ** 2).sum(axis=1)
    return {"mae": float(mae.mean()), "rmse": float(math.sqrt(var.mean()))}


def generate(spec: SyntheticSpec | None = None, out_dir: str | os.PathLike[str] = "data") -> dict[str, Path]:
    """Make (or reuse) the synthetic task of ``spec`` under ``<out_dir>/synthetic-<hash>/``;
    ``spec.json`` has ``"bayes": {split: {"mae", "rmse"}}`` for the evaluation splits.

    Returns:
        ``{split: path of its jsonl file}`` for ``train``, ``valid``, ``test``, ``extrapolate``.
    """
    spec = spec or SyntheticSpec()
    texts, answers, f = draw_rows(spec)

    def extra(split: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, Any]:
        return {"noise": spec.noise,
                "bayes": {name: bayes_errors(f[rows[idx]], spec.noise) for name, idx in split.items()
                          if name != "train"}}

    return generate_task(TASK, {"spec": dataclasses.asdict(spec)}, texts, answers,
                         split_options=spec.split_options(), out_dir=out_dir, extra=extra)
