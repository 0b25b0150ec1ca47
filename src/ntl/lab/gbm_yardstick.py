"""A non-LM yardstick for the text-regression tasks: scikit-learn's gradient-boosted trees
(``HistGradientBoostingRegressor``) on the raw columns of the same splits.

The columns are read back from each question (``"carat 0.23, cut Ideal, ..."``,
:func:`ntl.lab.data.tabular.text_columns`): a column whose training values all parse as numbers
is numeric, any other is categorical (its categories coded in order of first appearance in
``train``; a category not seen in training is a missing value). The model is fitted on ``train``
and scored with :func:`ntl.lab.regression_metrics.regression_metrics` on the other splits, with
the training median as the fallback (it never answers invalidly). Example::

    result = gbm_yardstick(paths)           # paths = ntl.lab.data.diamonds.generate(...)
    result["metrics"]["test"]["mae"]         # {"value", "lo", "hi"}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TableEncoding", "encode_table", "gbm_yardstick"]


@dataclass(frozen=True)
class TableEncoding:
    """How questions become a feature matrix.

    Attributes:
        columns: column names, in the order of the first training question.
        categories: ``{column: its categories in code order}`` for the categorical columns.
    """

    columns: tuple[str, ...]
    categories: Mapping[str, tuple[str, ...]]

    @classmethod
    def fit(cls, questions: Sequence[str]) -> TableEncoding:
        """Columns and categories of the training questions."""
        from ntl.lab.data.tabular import text_columns

        rows = [text_columns(q) for q in questions]
        if not rows:
            raise ValueError("no training questions to read the columns from")
        columns = tuple(rows[0])
        categories: dict[str, tuple[str, ...]] = {}
        for c in columns:
            values = [r[c] for r in rows]
            if not all(_is_number(v) for v in values):
                categories[c] = tuple(dict.fromkeys(values))
        return cls(columns, categories)

    @property
    def categorical_mask(self) -> np.ndarray:
        """(d,) bool: which columns are categorical."""
        return np.array([c in self.categories for c in self.columns])

    def transform(self, questions: Sequence[str]) -> np.ndarray:
        """(n, d) float64 features; NaN for a missing column or an unseen category."""
        from ntl.lab.data.tabular import text_columns

        codes = {c: {v: float(i) for i, v in enumerate(cats)} for c, cats in self.categories.items()}
        out = np.full((len(questions), len(self.columns)), np.nan)
        for i, q in enumerate(questions):
            row = text_columns(q)
            for j, c in enumerate(self.columns):
                value = row.get(c)
                if value is None:
                    continue
                out[i, j] = codes[c].get(value, np.nan) if c in codes else float(value)
        return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def encode_table(
    train: Sequence[str], *others: Sequence[str]
) -> tuple[TableEncoding, np.ndarray, list[np.ndarray]]:
    """``(encoding fitted on train, X_train, [X of each of others])``."""
    enc = TableEncoding.fit(train)
    return enc, enc.transform(train), [enc.transform(o) for o in others]


def gbm_yardstick(
    paths: Mapping[str, str | os.PathLike[str]],
    *,
    splits: Sequence[str] = ("valid", "test", "extrapolate"),
    seed: int = 0,
    loss: str = "absolute_error",
    max_iter: int = 500,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Fit ``HistGradientBoostingRegressor`` on ``paths["train"]`` and score it on ``splits``.

    Args:
        paths: ``{split: jsonl path}`` of a text-regression task (``ntl data --task ...``).
        splits: the splits to score (those missing from ``paths`` are skipped).
        seed: ``random_state`` of the model (early stopping's validation split).
        loss: the model's loss: ``"absolute_error"`` (its prediction estimates the median, as
            MAE wants) or ``"squared_error"``.
        max_iter: boosting rounds (early stopping on 10% of train picks fewer).
        n_boot: bootstrap replicates of the metrics' CIs.

    Returns:
        ``{"metrics": {split: regression METRICS}, "predictions": {split: (n,) float64},
        "config": {...}}``.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    from ntl.lab.data.mathematics import load_split
    from ntl.lab.regression_metrics import regression_metrics

    train = load_split(Path(paths["train"]))
    wanted = [s for s in splits if s in paths and Path(paths[s]).is_file()]
    evals = {s: load_split(Path(paths[s])) for s in wanted}
    enc, x_train, xs = encode_table([r["question"] for r in train],
                                    *([r["question"] for r in evals[s]] for s in wanted))
    y_train = np.array([float(r["answer"]) for r in train])
    model = HistGradientBoostingRegressor(
        loss=loss, max_iter=max_iter, categorical_features=enc.categorical_mask,
        early_stopping=True, random_state=seed,
    )
    model.fit(x_train, y_train)
    fallback = float(np.median(y_train))
    metrics, predictions = {}, {}
    for s, x in zip(wanted, xs):
        pred = model.predict(x) if len(x) else np.zeros(0)
        targets = [float(r["answer"]) for r in evals[s]]
        predictions[s] = pred
        metrics[s] = regression_metrics(pred.tolist(), targets, fallback=fallback, n_boot=n_boot, seed=0)
    config = {"model": "HistGradientBoostingRegressor", "loss": loss, "max_iter": max_iter,
              "iterations": int(model.n_iter_), "seed": seed, "columns": list(enc.columns),
              "categorical": sorted(enc.categories), "n_train": len(train)}
    return {"metrics": metrics, "predictions": predictions, "config": config}
