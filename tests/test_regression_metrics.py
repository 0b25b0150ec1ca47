"""Regression metrics against hand-computed values (invalid answers scored as the training median),
and the gradient-boosting yardstick on a small synthetic task."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntl.lab.regression_metrics import (
    REGRESSION_METRIC_NAMES,
    paired_regression_difference,
    regression_metrics,
    regression_metrics_from_records,
)


def _values(m):
    return {k: m[k]["value"] for k in REGRESSION_METRIC_NAMES}


def test_hand_computed_with_an_invalid_answer_scored_as_the_fallback():
    # filled predictions 110, 250 (fallback), 290, 500; errors 10, 50, -10, 100
    m = regression_metrics([110, None, 290, 500], [100, 200, 300, 400], fallback=250, n_boot=0)
    assert m["n"] == 4 and m["fallback"] == 250
    assert _values(m) == pytest.approx({
        "mae": 170 / 4,
        "rmse": math.sqrt((100 + 2500 + 100 + 10000) / 4),
        "r2": 1 - 12700 / 50000,  # targets' sum of squares around 250: 22500+2500+2500+22500
        "mape": (10 / 100 + 50 / 200 + 10 / 300 + 100 / 400) / 4,
        "spearman": 1.0,
        "invalid_rate": 0.25,
    })


def test_spearman_ties_mape_zeros_and_undefined_values():
    from scipy.stats import spearmanr

    m = regression_metrics([1, 1, 2], [1, 2, 3], fallback=0, n_boot=0)
    assert m["spearman"]["value"] == pytest.approx(1.5 / math.sqrt(3))  # ranks 1.5 1.5 3 vs 1 2 3
    assert m["spearman"]["value"] == pytest.approx(spearmanr([1, 1, 2], [1, 2, 3]).statistic)
    assert regression_metrics([1, 12], [0, 10], fallback=0, n_boot=0)["mape"]["value"] == pytest.approx(0.2)
    flat = regression_metrics([5, None], [3, 3], fallback=4, n_boot=0)
    assert math.isnan(flat["r2"]["value"]) and math.isnan(flat["spearman"]["value"])
    assert flat["mae"]["value"] == pytest.approx(1.5) and flat["invalid_rate"]["value"] == 0.5
    assert math.isnan(regression_metrics([1], [0], fallback=0, n_boot=0)["mape"]["value"])
    with pytest.raises(ValueError, match="training median"):
        regression_metrics([1], [1], fallback=math.nan)
    with pytest.raises(ValueError, match="differ in length"):
        regression_metrics([1, 2], [1], fallback=0)


def test_bootstrap_intervals_hold_the_estimate_and_are_seeded():
    rng = np.random.default_rng(0)
    t = rng.normal(100, 20, 300)
    p = [float(x) if i % 10 else None for i, x in enumerate(t + rng.normal(0, 5, 300))]
    a = regression_metrics(p, t, fallback=100.0, n_boot=200, seed=1)
    assert a == regression_metrics(p, t, fallback=100.0, n_boot=200, seed=1)
    for name in REGRESSION_METRIC_NAMES:
        assert a[name]["lo"] <= a[name]["value"] <= a[name]["hi"], name
    assert a["mae"]["hi"] > a["mae"]["lo"]


def test_records_and_paired_difference():
    records = [{"question": f"q{i}", "answer": str(t), "parsed": p, "valid": p is not None}
               for i, (t, p) in enumerate([(100, 110.0), (200, None), (300, 290.0), (400, 500.0)])]
    base = [{**r, "parsed": float(r["answer"]) + 20, "valid": True} for r in records]
    m = regression_metrics_from_records(records, fallback=250, n_boot=0)
    assert m["mae"]["value"] == pytest.approx(42.5) and m["invalid_rate"]["value"] == 0.25
    d = paired_regression_difference(records, base, fallback=250, metrics=("mae", "rmse"), n_boot=100)
    assert d["mae"]["value"] == pytest.approx(42.5 - 20.0)
    assert d["mae"]["lo"] <= d["mae"]["value"] <= d["mae"]["hi"]
    with pytest.raises(ValueError, match="differ at 1"):
        paired_regression_difference(records, [records[0], records[0], *records[2:]], fallback=0)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_regression_difference(records, base, fallback=0, metrics=("exact_match",))


def test_table_encoding_reads_numbers_and_categories():
    from ntl.lab.gbm_yardstick import encode_table

    enc, x_train, (x_test,) = encode_table(
        ["a 1.5, c red, cut Very Good", "a 2, c blue, cut Ideal"], ["a 3, c green, cut Ideal"])
    assert enc.columns == ("a", "c", "cut") and dict(enc.categories) == {
        "c": ("red", "blue"), "cut": ("Very Good", "Ideal")}
    assert enc.categorical_mask.tolist() == [False, True, True]
    assert x_train.tolist() == [[1.5, 0.0, 0.0], [2.0, 1.0, 1.0]]
    assert x_test[0, 0] == 3.0 and math.isnan(x_test[0, 1]) and x_test[0, 2] == 1.0  # green unseen


def test_gbm_yardstick_learns_a_small_synthetic_task(tmp_path):
    from ntl.lab.data.synthetic import SyntheticSpec, generate
    from ntl.lab.gbm_yardstick import gbm_yardstick

    paths = generate(SyntheticSpec(n_rows=1500, n_valid=100, n_test=200, seed=0), out_dir=tmp_path)
    result = gbm_yardstick(paths, splits=("test", "extrapolate"), max_iter=100, n_boot=0)
    assert set(result["metrics"]) == {"test", "extrapolate"}
    test = result["metrics"]["test"]
    targets = np.array([float(line.split('"answer": "')[1].split('"')[0])
                        for line in paths["test"].read_text().splitlines()])
    median_mae = np.abs(targets - test["fallback"]).mean()
    assert test["mae"]["value"] < 0.5 * median_mae  # far better than always answering the median
    assert test["invalid_rate"]["value"] == 0.0 and len(result["predictions"]["test"]) == 200
    again = gbm_yardstick(paths, splits=("test",), max_iter=100, n_boot=0)
    assert np.array_equal(again["predictions"]["test"], result["predictions"]["test"])
