"""Text-regression tasks from tables: each row is a short text of its columns (``"carat 0.23, cut
Ideal, ..."``) and a number to predict, split and cached like the mathematics data.

Splits (records ``{"module", "question", "answer", "split"}``, one JSON object per line, the task
name as ``module``):

- ``extrapolate``: every row whose target is above the training range: the largest
  ``extrapolate_fraction`` of the targets (fewer when targets tie at the boundary, so that no
  extrapolation target occurs in the other splits), optionally subsampled to ``n_extrapolate``;
- ``valid``, ``test``: ``n_valid`` and ``n_test`` rows of the rest, drawn by ``seed``;
- ``train``: the remaining rows (or ``n_train`` of them).

A question text that occurs more than once in the table is kept once (its first row), so no
question is in two splits. The cache folder ``<out>/<task>-<hash>`` holds the four jsonl files
and ``spec.json`` (written last), which records the counts per split (``{split: {task: n}}``, as
:func:`ntl.lab.data.mathematics.load_split` checks), the training median of the target (the
fallback prediction of :mod:`ntl.lab.regression_metrics`) and the extrapolation threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Split names, in file order.
SPLITS: tuple[str, ...] = ("train", "valid", "test", "extrapolate")

#: Version of the table-to-text procedure; part of the cache key, bump it when output changes.
DATA_FORMAT = 1


def row_text(columns: Sequence[tuple[str, str]]) -> str:
    """``"name value, name value, ..."`` of ``(name, value)`` pairs, values as written."""
    return ", ".join(f"{name} {value}" for name, value in columns)


def text_columns(text: str) -> dict[str, str]:
    """The ``{name: value}`` of a :func:`row_text` text (values may contain spaces: ``cut Very
    Good``).

    Raises:
        ValueError: a piece has no value.
    """
    out = {}
    for piece in text.split(", "):
        name, _, value = piece.partition(" ")
        if not value:
            raise ValueError(f"{piece!r} in {text!r} is not 'name value'")
        out[name] = value
    return out


def extrapolation_threshold(targets: Sequence[float], fraction: float) -> float | None:
    """The target value that ``extrapolate`` lies strictly above: the largest target outside
    the top ``ceil(fraction·n)``; ``None`` when ``fraction`` is 0 (no extrapolation split).

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"extrapolate_fraction={fraction!r}; expected 0 <= f < 1")
    y = np.asarray(targets, dtype=np.float64)
    n_top = math.ceil(fraction * len(y))
    return float(np.sort(y)[len(y) - n_top - 1]) if n_top else None


def split_indices(
    targets: Sequence[float],
    *,
    n_valid: int,
    n_test: int,
    n_train: int | None = None,
    n_extrapolate: int | None = None,
    extrapolate_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Row indices of each split (see the module docstring); deterministic in ``seed``.

    Returns:
        ``{split: int64 indices}`` for :data:`SPLITS`, disjoint; ``valid``, ``test`` and
        ``train`` in a seeded random order, ``extrapolate`` in table order.

    Raises:
        ValueError: a count or fraction out of range, or too few rows for the counts.
    """
    y = np.asarray(targets, dtype=np.float64)
    threshold = extrapolation_threshold(y, extrapolate_fraction)
    above = y > threshold if threshold is not None else np.zeros(len(y), dtype=bool)
    extrapolate = np.flatnonzero(above)
    if n_extrapolate is not None and n_extrapolate < len(extrapolate):
        keep = np.random.default_rng([seed, 1]).choice(len(extrapolate), n_extrapolate, replace=False)
        extrapolate = extrapolate[np.sort(keep)]
    rest = np.random.default_rng(seed).permutation(np.flatnonzero(~above))
    if n_valid + n_test >= len(rest):
        raise ValueError(
            f"{len(rest)} rows below the extrapolation threshold cannot give n_valid={n_valid} "
            f"and n_test={n_test} and leave rows to train on; lower them"
        )
    train = rest[n_valid + n_test :]
    if n_train is not None:
        if n_train > len(train):
            raise ValueError(f"n_train={n_train} but only {len(train)} rows are left for training")
        train = train[:n_train]
    return {"train": train, "valid": rest[:n_valid], "test": rest[n_valid : n_valid + n_test],
            "extrapolate": extrapolate}


def spec_hash(key: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-able cache key."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def split_paths(directory: Path) -> dict[str, Path]:
    """``{split: <directory>/<split>.jsonl}`` for :data:`SPLITS`."""
    return {split: directory / f"{split}.jsonl" for split in SPLITS}


def generate_task(
    task: str,
    key: Mapping[str, Any],
    texts: Sequence[str],
    answers: Sequence[str],
    *,
    split_options: Mapping[str, Any],
    out_dir: str | os.PathLike[str] = "data",
    extra: Callable[[Mapping[str, np.ndarray], np.ndarray], Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Split a table's ``texts`` / ``answers`` and cache them (or reuse the cache) under
    ``<out_dir>/<task>-<hash of key>/``.

    Args:
        task: the task name (``module`` of every record, prefix of the folder).
        key: what identifies the data (spec fields, source checksum); the cache key.
        texts, answers: one question text and answer (a number as text) per table row.
        split_options: keyword arguments of :func:`split_indices` (without targets), with
            ``extrapolate_fraction``.
        extra: ``(split indices, kept row indices) -> more spec.json fields``, e.g. the best
            possible error of a synthetic task; indices refer to the de-duplicated rows.

    Returns:
        ``{split: path of its jsonl file}`` for :data:`SPLITS`.
    """
    from ntl.lab.data.cache import publish

    if len(texts) != len(answers):
        raise ValueError(f"{len(texts)} texts but {len(answers)} answers")
    seen: set[str] = set()
    kept = []
    for i, text in enumerate(texts):
        if text not in seen:
            seen.add(text)
            kept.append(i)
    rows = np.asarray(kept, dtype=np.int64)
    full_key = {"format": DATA_FORMAT, "task": task, **key}
    final = Path(out_dir) / f"{task}-{spec_hash(full_key)}"

    def is_complete(directory: Path) -> bool:
        try:
            manifest = json.loads((directory / "spec.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return manifest.get("key") == full_key and all(p.is_file() for p in split_paths(directory).values())

    def write(directory: Path) -> None:
        targets = np.asarray([float(answers[i]) for i in rows])
        split = split_indices(targets, **split_options)
        for name, idx in split.items():
            with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as f:
                for j in idx:
                    record = {"module": task, "question": texts[rows[j]], "answer": answers[rows[j]],
                              "split": name}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        train_targets = targets[split["train"]]
        manifest = {
            "key": full_key,
            "hash": final.name,
            "counts": {name: {task: int(len(idx))} for name, idx in split.items()},
            "duplicates_dropped": len(texts) - len(rows),
            "train_median": float(np.median(train_targets)),
            "extrapolate_above": extrapolation_threshold(targets, split_options["extrapolate_fraction"]),
            **(extra(split, rows) if extra else {}),
        }
        # spec.json last: its presence (with the matching key) marks the folder complete.
        (directory / "spec.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    publish(final, is_complete, write)
    return split_paths(final)
