"""The ``diamonds`` table (53,940 diamonds, ggplot2's) as a text-regression task: predict the price.

Each row becomes ``"carat 0.23, cut Ideal, color E, clarity SI2, depth 61.5, table 55, x 3.95,
y 3.98, z 2.43"`` with the price in dollars (``"326"``) as the answer, values exactly as written
in the CSV. Splits, de-duplication and caching: :mod:`ntl.lab.data.tabular` (``train`` /
``valid`` / ``test`` by seed, ``extrapolate`` = the most expensive 10%, priced above every
training diamond). 345 rows repeat an earlier row's text and are dropped.

The CSV ships inside the ``plotnine`` wheel (``plotnine/data/diamonds.csv``), which the
``[lab]`` extra installs; it is read from the installed distribution without importing plotnine.
Without plotnine, pass the CSV itself or a downloaded plotnine wheel
(``pip download plotnine --no-deps``) as ``source``. The cache key holds the CSV's SHA-256, so
another copy of the table gives another cache folder. Example::

    paths = generate(DiamondsSpec(n_valid=2000, n_test=2000, seed=0), out_dir="data")
    records = load_split(paths["train"])   # [{"module": "diamonds", "question", "answer", ...}]
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ntl.lab.data.tabular import SPLITS, generate_task, row_text

__all__ = ["COLUMNS", "CSV_IN_WHEEL", "DiamondsSpec", "SPLITS", "TARGET", "csv_bytes", "generate",
           "read_rows", "question_text"]

#: The feature columns, in the order they are written.
COLUMNS: tuple[str, ...] = ("carat", "cut", "color", "clarity", "depth", "table", "x", "y", "z")
#: The column to predict.
TARGET = "price"
#: Categorical columns (the others are numbers).
CATEGORICAL: tuple[str, ...] = ("cut", "color", "clarity")
#: The CSV's path inside the plotnine wheel / installation.
CSV_IN_WHEEL = "plotnine/data/diamonds.csv"
TASK = "diamonds"


@dataclass(frozen=True)
class DiamondsSpec:
    """Which split of the diamonds table to make (see :func:`ntl.lab.data.tabular.split_indices`).

    Attributes:
        n_valid, n_test: rows in ``valid`` and ``test`` (drawn from below the threshold).
        n_train: rows in ``train``; ``None``: all the rest.
        n_extrapolate: rows kept in ``extrapolate``; ``None``: all above the threshold.
        extrapolate_fraction: the most expensive share held out as ``extrapolate``.
        seed: seed of the split.
    """

    n_valid: int = 2_000
    n_test: int = 2_000
    n_train: int | None = None
    n_extrapolate: int | None = None
    extrapolate_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_valid", "n_test", "n_train", "n_extrapolate"):
            value = getattr(self, name)
            if value is None and name in ("n_train", "n_extrapolate"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DiamondsSpec.{name}={value!r}; expected an integer >= 0")
        if not 0.0 <= float(self.extrapolate_fraction) < 1.0:
            raise ValueError(
                f"DiamondsSpec.extrapolate_fraction={self.extrapolate_fraction!r}; expected 0 <= f < 1"
            )


def csv_bytes(source: str | os.PathLike[str] | None = None) -> bytes:
    """The diamonds CSV: from the installed plotnine (``source=None``), a CSV file, or a plotnine
    wheel (a ``.whl`` path).

    Raises:
        MissingDependency: ``source=None`` and plotnine is not installed (the message says how to
            install it, or what to pass instead).
        FileNotFoundError: the file, or the CSV inside it, is missing.
    """
    if source is None:
        from importlib.metadata import PackageNotFoundError, distribution

        from ntl._optional import MissingDependency, missing_message

        try:
            dist = distribution("plotnine")
        except PackageNotFoundError:
            raise MissingDependency(
                missing_message("plotnine", "the diamonds data")
                + " -- or pass the CSV, or a wheel from `pip download plotnine --no-deps`"
            ) from None
        path = Path(dist.locate_file(CSV_IN_WHEEL))
        if not path.is_file():
            raise FileNotFoundError(f"plotnine {dist.version} has no {CSV_IN_WHEEL} (looked at {path})")
        return path.read_bytes()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}: pass the diamonds CSV or a plotnine wheel")
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            try:
                return wheel.read(CSV_IN_WHEEL)
            except KeyError:
                raise FileNotFoundError(f"{path} holds no {CSV_IN_WHEEL}") from None
    return path.read_bytes()


def read_rows(data: bytes) -> list[dict[str, str]]:
    """The CSV's rows as ``{column: value as written}``.

    Raises:
        ValueError: the header lacks a column of :data:`COLUMNS` or the price.
    """
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    missing = [c for c in (*COLUMNS, TARGET) if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"the diamonds CSV lacks the column(s) {missing}; header: {reader.fieldnames}")
    return list(reader)


def question_text(row: dict[str, str]) -> str:
    """``"carat 0.23, cut Ideal, ..., z 2.43"``: the feature columns of ``row`` in
    :data:`COLUMNS` order."""
    return row_text([(c, row[c]) for c in COLUMNS])


def generate(
    spec: DiamondsSpec | None = None,
    out_dir: str | os.PathLike[str] = "data",
    source: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Make (or reuse) the diamonds task of ``spec`` under ``<out_dir>/diamonds-<hash>/``.

    Args:
        spec: the split; default :class:`DiamondsSpec` ().
        out_dir: parent folder of the cache folders.
        source: where the CSV comes from (:func:`csv_bytes`).

    Returns:
        ``{split: path of its jsonl file}`` for ``train``, ``valid``, ``test``, ``extrapolate``.
    """
    spec = spec or DiamondsSpec()
    data = csv_bytes(source)
    rows = read_rows(data)
    key = {"spec": dataclasses.asdict(spec), "csv_sha256": hashlib.sha256(data).hexdigest()}
    options = dataclasses.asdict(spec)
    return generate_task(
        TASK, key, [question_text(r) for r in rows], [r[TARGET] for r in rows],
        split_options=options, out_dir=out_dir,
    )
