"""Which data an experiment trains on: the task families and how each is made.

- ``mathematics``: DeepMind mathematics modules (:mod:`ntl.lab.data.mathematics`), answers
  scored right or wrong;
- ``diamonds``: the price of a diamond from its columns (:mod:`ntl.lab.data.diamonds`), a
  text-regression task whose answers are estimates;
- ``synthetic``: a formula plus Gaussian noise (:mod:`ntl.lab.data.synthetic`), a
  text-regression task whose best possible error is known.

Every family writes the same split files (``{"module", "question", "answer", "split"}`` per
line) and a ``spec.json``; a regression task's ``spec.json`` also holds ``train_median``, the
prediction an invalid answer is scored as (:mod:`ntl.lab.regression_metrics`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["REGRESSION_TASKS", "TASKS", "generate_data", "is_regression_task", "train_median"]

#: Task families a profile's ``task`` may name.
TASKS: tuple[str, ...] = ("mathematics", "diamonds", "synthetic")
#: The families whose answers are estimates, scored by their error (MAE, RMSE, ...).
REGRESSION_TASKS: tuple[str, ...] = ("diamonds", "synthetic")


def is_regression_task(task: str) -> bool:
    """Whether ``task`` is a text-regression family.

    Raises:
        ValueError: ``task`` is not one of :data:`TASKS`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return task in REGRESSION_TASKS


def generate_data(
    spec: Any, data_root: str | os.PathLike[str] = "data", progress: bool = False
) -> dict[str, Path]:
    """Make (or reuse) the split files of ``spec`` under ``data_root``.

    Args:
        spec: a :class:`ntl.lab.data.mathematics.DataSpec`,
            :class:`ntl.lab.data.diamonds.DiamondsSpec` or
            :class:`ntl.lab.data.synthetic.SyntheticSpec`.
        data_root: the cache folder.
        progress: show the mathematics generator's progress bar.

    Returns:
        ``{split: path of its jsonl file}``.

    Raises:
        TypeError: ``spec`` is none of those.
    """
    from ntl.lab.data import diamonds, mathematics, synthetic

    if isinstance(spec, mathematics.DataSpec):
        return dict(mathematics.generate(spec, data_root, progress=progress))
    if isinstance(spec, diamonds.DiamondsSpec):
        return dict(diamonds.generate(spec, out_dir=data_root))
    if isinstance(spec, synthetic.SyntheticSpec):
        return dict(synthetic.generate(spec, out_dir=data_root))
    raise TypeError(f"no task makes data from a {type(spec).__name__}")


def train_median(split_path: str | os.PathLike[str]) -> float | None:
    """The training median of a regression task's target, read from the ``spec.json`` beside
    ``split_path``; ``None`` for a task without one (mathematics) or without a ``spec.json``."""
    try:
        manifest = json.loads((Path(split_path).parent / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = manifest.get("train_median") if isinstance(manifest, dict) else None
    return float(value) if value is not None else None
