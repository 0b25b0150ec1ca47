"""The text-regression data: diamonds rows as texts, fixed splits, the extrapolation split, the
synthetic task's best possible errors, and `ntl data --task`."""

from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ntl.lab.data import diamonds, synthetic
from ntl.lab.data.mathematics import load_split
from ntl.lab.data.tabular import SPLITS, split_indices, text_columns

FIRST_ROWS = [  # the first rows of diamonds.csv, as the task writes them
    ("carat 0.23, cut Ideal, color E, clarity SI2, depth 61.5, table 55, x 3.95, y 3.98, z 2.43", "326"),
    ("carat 0.21, cut Premium, color E, clarity SI1, depth 59.8, table 61, x 3.89, y 3.84, z 2.31", "326"),
    ("carat 0.23, cut Good, color E, clarity VS1, depth 56.9, table 65, x 4.05, y 4.07, z 2.31", "327"),
]


@pytest.fixture(scope="module")
def table() -> list[dict[str, str]]:
    return diamonds.read_rows(diamonds.csv_bytes())


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> dict[str, Path]:
    return diamonds.generate(diamonds.DiamondsSpec(), out_dir=tmp_path_factory.mktemp("data"))


def _read(paths: dict[str, Path]) -> dict[str, list[dict]]:
    return {split: load_split(path) for split, path in paths.items()}


def test_known_rows(table):
    assert len(table) == 53_940
    got = [(diamonds.question_text(r), r["price"]) for r in table[:3]]
    assert got == FIRST_ROWS
    assert text_columns(FIRST_ROWS[0][0])["clarity"] == "SI2"
    very_good = next(r for r in table if r["cut"] == "Very Good")
    assert text_columns(diamonds.question_text(very_good))["cut"] == "Very Good"


def test_splits_disjoint_complete_and_extrapolation_is_the_top_prices(table, full):
    data = _read(full)
    assert list(data) == list(SPLITS)
    questions = {s: {r["question"] for r in recs} for s, recs in data.items()}
    for a in SPLITS:
        assert len(questions[a]) == len(data[a])  # no question twice
        for b in SPLITS:
            assert a == b or not questions[a] & questions[b], (a, b)
    unique = {}
    for r in table:
        unique.setdefault(diamonds.question_text(r), int(r["price"]))
    assert sum(len(recs) for recs in data.values()) == len(unique) == 53_940 - 345
    assert (len(data["valid"]), len(data["test"])) == (2000, 2000)
    prices = {s: np.array([int(r["answer"]) for r in recs]) for s, recs in data.items()}
    below = np.concatenate([prices[s] for s in ("train", "valid", "test")])
    assert prices["extrapolate"].min() > below.max()  # strictly above every other split
    all_prices = np.array(sorted(unique.values()))
    assert (all_prices > below.max()).sum() == len(data["extrapolate"])
    assert 0.09 * len(unique) < len(data["extrapolate"]) <= math.ceil(0.1 * len(unique))
    manifest = json.loads((full["train"].parent / "spec.json").read_text())
    assert manifest["train_median"] == float(np.median(prices["train"]))
    assert manifest["extrapolate_above"] == float(below.max())


def test_splits_are_deterministic_and_seeded(full, tmp_path):
    again = diamonds.generate(diamonds.DiamondsSpec(), out_dir=tmp_path / "again")
    assert again["train"].parent.name == full["train"].parent.name
    for split in SPLITS:
        assert again[split].read_bytes() == full[split].read_bytes()
    other = diamonds.generate(diamonds.DiamondsSpec(seed=1), out_dir=tmp_path / "again")
    assert other["valid"].read_bytes() != full["valid"].read_bytes()
    assert other["extrapolate"].read_bytes() == full["extrapolate"].read_bytes()  # by price, not seed


def test_csv_from_a_wheel_or_a_file(tmp_path):
    lines = diamonds.csv_bytes().decode().splitlines(keepends=True)[:201]
    small = "".join(lines).encode()
    wheel = tmp_path / "plotnine-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(diamonds.CSV_IN_WHEEL, small)
    (tmp_path / "d.csv").write_bytes(small)
    spec = diamonds.DiamondsSpec(n_valid=20, n_test=20, n_extrapolate=5)
    from_wheel = diamonds.generate(spec, out_dir=tmp_path / "w", source=wheel)
    from_csv = diamonds.generate(spec, out_dir=tmp_path / "c", source=tmp_path / "d.csv")
    data = _read(from_wheel)
    above = json.loads((from_wheel["train"].parent / "spec.json").read_text())["extrapolate_above"]
    n_above = sum(int(r["price"]) > above for r in diamonds.read_rows(small))
    assert 10 < n_above <= 20  # the top 10% of 200 rows, fewer where prices tie
    assert [len(data[s]) for s in SPLITS] == [200 - 20 - 20 - n_above, 20, 20, 5]
    assert data["train"][0]["module"] == "diamonds"
    assert from_csv["train"].read_bytes() == from_wheel["train"].read_bytes()
    with pytest.raises(FileNotFoundError, match="holds no plotnine/data/diamonds.csv"):
        empty = tmp_path / "empty.whl"
        zipfile.ZipFile(empty, "w").close()
        diamonds.csv_bytes(empty)


def test_split_indices_counts_and_errors():
    y = np.arange(100, dtype=float)[::-1]  # 99 .. 0
    s = split_indices(y, n_valid=10, n_test=5, n_train=50, extrapolate_fraction=0.1, seed=3)
    assert sorted(y[s["extrapolate"]]) == list(range(90, 100))
    assert (len(s["valid"]), len(s["test"]), len(s["train"])) == (10, 5, 50)
    ties = split_indices([1, 2, 3, 3, 3, 3, 3, 3, 3, 3], n_valid=1, n_test=1, extrapolate_fraction=0.1)
    assert len(ties["extrapolate"]) == 0  # the top value ties with the rest: nothing strictly above
    with pytest.raises(ValueError, match="lower them"):
        split_indices(y, n_valid=60, n_test=30)
    with pytest.raises(ValueError, match="n_train=95"):
        split_indices(y, n_valid=1, n_test=1, n_train=95)
    with pytest.raises(ValueError, match="0 <= f < 1"):
        diamonds.DiamondsSpec(extrapolate_fraction=1.0)


def test_synthetic_best_errors_and_rows(tmp_path):
    # a wide noise: round-off adds 1/12 to the variance; MAE is σ·sqrt(2/π)
    wide = synthetic.bayes_errors(np.array([10.3, 500.0]), 50.0)
    assert wide["mae"] == pytest.approx(50 * math.sqrt(2 / math.pi), rel=1e-4)
    assert wide["rmse"] == pytest.approx(math.sqrt(50**2 + 1 / 12), rel=1e-6)
    # f = 0.5 with tiny noise: y is 0 or 1 with probability 1/2 each -> MAE 0.5, RMSE 0.5
    half = synthetic.bayes_errors(np.array([0.5]), 1e-3)
    assert half == pytest.approx({"mae": 0.5, "rmse": 0.5})
    assert synthetic.bayes_errors(np.array([3.0]), 0.01)["mae"] == pytest.approx(0.0, abs=1e-12)

    spec = synthetic.SyntheticSpec(n_rows=600, n_valid=50, n_test=50, seed=2)
    paths = synthetic.generate(spec, out_dir=tmp_path)
    data = _read(paths)
    row = data["test"][0]
    cols = text_columns(row["question"])
    assert set(cols) == {"a", "b", "c"} and cols["c"] in synthetic.COLOURS
    f = synthetic.mean_function(float(cols["a"]), float(cols["b"]), np.array(cols["c"]))
    assert abs(int(row["answer"]) - f) < 6 * spec.noise
    manifest = json.loads((paths["train"].parent / "spec.json").read_text())
    assert set(manifest["bayes"]) == {"valid", "test", "extrapolate"}
    assert manifest["bayes"]["test"]["mae"] == pytest.approx(50 * math.sqrt(2 / math.pi), rel=1e-3)
    assert synthetic.generate(spec, out_dir=tmp_path / "b")["test"].read_bytes() == paths["test"].read_bytes()


def test_ntl_data_task_command(tmp_path, capsys):
    from ntl.cli import main

    csv = tmp_path / "d.csv"
    csv.write_bytes("".join(diamonds.csv_bytes().decode().splitlines(keepends=True)[:101]).encode())
    assert main(["data", "--task", "diamonds", "--csv", str(csv), "--out", str(tmp_path / "out"),
                 "--n-valid", "10", "--n-test", "10", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"valid +10 examples", out) and "training median" in out
    folder = next((tmp_path / "out").glob("diamonds-*"))
    assert len(load_split(folder / "test.jsonl")) == 10
    assert main(["data", "--task", "diamonds", "--csv", str(tmp_path / "missing.csv")]) == 2
    assert "no file" in capsys.readouterr().err
