"""Tests for ntl.lab.metrics: answer parsing, exact match and metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ntl.lab.metrics import (
    INVALID_SCORED_AS,
    METRIC_NAMES,
    PER_QUESTION_METRICS,
    compute_metrics,
    dumps_json,
    is_exact_match,
    last_place_unit,
    metrics_by_module,
    parse_number,
    question_scores,
    signed_log,
    write_json,
)

# --------------------------------------------------------------------------------------------
# parse_number
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-12", -12.0),
        ("12", 12.0),
        ("+5", 5.0),
        ("3.50", 3.5),
        ("0.5", 0.5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("12.", 12.0),
        ("  7 \n", 7.0),
        ("The answer is -12.", -12.0),
        ("Answer: 0.25", 0.25),
        ("x = 5", 5.0),
        ("(\u221212)", -12.0),  # unicode minus
        ("1e-05", 1e-05),
        ("2E+3", 2000.0),
        ("-1.5e2", -150.0),
        ("1,000", 1000.0),
        ("12,345.5", 12345.5),
        ("0.30000000000000004", 0.30000000000000004),
    ],
)
def test_parse_valid(text: str, expected: float) -> None:
    got = parse_number(text)
    assert got == expected
    assert isinstance(got, float)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "abc",
        "3/4",  # fraction: two numbers
        "-3/4",
        "1 2",
        "5 - 3",
        "5-3",
        "1, 2",
        "3,5",  # decimal comma
        "1,00",  # malformed thousands grouping
        "- 12",  # detached sign
        "- 1 2",  # a tokenizer decoding with spaces between pieces
        "x-3",
        "--5",
        "12abc",
        "x2",
        "3.5.1",
        "1e",
        "1e400",  # overflows float
        "50%",
        "nan",
        "inf",
        None,
    ],
)
def test_parse_invalid(text: str | None) -> None:
    assert parse_number(text) is None


def test_scientific_notation_never_misread() -> None:
    for text in ("1e-05", "1e-5", "1E-05"):
        assert parse_number(text) == 1e-05
    # Python's own repr of small floats round-trips
    for x in (1e-05, -3.2e-07, 1.5e20):
        assert parse_number(repr(x)) == x


def test_parse_type_error() -> None:
    with pytest.raises(TypeError, match="expects a str"):
        parse_number(12)  # type: ignore[arg-type]


def test_is_exact_match() -> None:
    assert is_exact_match("3.50", "3.5")
    assert is_exact_match("The answer is -12.", "-12")
    assert is_exact_match("-0", "0")
    assert not is_exact_match("0.30000000000000004", "0.3")
    assert not is_exact_match("garbage", "3")
    assert not is_exact_match(None, "3")
    with pytest.raises(ValueError, match="not a single number"):
        is_exact_match("3", "3/4")


# --------------------------------------------------------------------------------------------
# compute_metrics
# --------------------------------------------------------------------------------------------


def test_metric_values_by_hand() -> None:
    preds = [1.0, 2.0, None, 9.0, -1.0]
    targets = [1.0, 4.0, 5.0, 10.0, 0.0]
    m = compute_metrics(preds, targets, n_boot=200, seed=0)
    assert m["n"] == 5
    assert set(m) == {"n", *METRIC_NAMES}
    # exact: only the first; invalid counts as wrong, denominator is all 5
    assert m["exact_match"]["value"] == pytest.approx(1 / 5)
    assert m["invalid_rate"]["value"] == pytest.approx(1 / 5)
    # valid pairs: (1,1) (2,4) (9,10) (-1,0); abs errors 0, 2, 1, 1
    assert m["mae"]["value"] == pytest.approx((0 + 2 + 1 + 1) / 4)
    assert m["median_ae"]["value"] == pytest.approx(1.0)  # sorted 0,1,1,2 -> (1+1)/2
    # R²: targets of valid ones 1,4,10,0 -> mean 3.75; ss_tot = 7.5625+0.0625+39.0625+14.0625
    ss_tot = 7.5625 + 0.0625 + 39.0625 + 14.0625
    ss_res = 0 + 4 + 1 + 1
    assert m["r2"]["value"] == pytest.approx(1 - ss_res / ss_tot)
    # log scale: f(x) = sign(x) log10(|x|+1)
    f = {x: math.copysign(math.log10(abs(x) + 1), x) if x else 0.0 for x in (1, 2, 4, 9, 10, -1, 0)}
    log_err = [0.0, abs(f[2] - f[4]), abs(f[9] - f[10]), abs(f[-1] - f[0])]
    assert m["log_mae"]["value"] == pytest.approx(sum(log_err) / 4)
    lt = [f[1], f[4], f[10], f[0]]
    lt_mean = sum(lt) / 4
    log_ss_tot = sum((t - lt_mean) ** 2 for t in lt)
    assert m["log_r2"]["value"] == pytest.approx(1 - sum(e * e for e in log_err) / log_ss_tot)


def test_median_odd_count() -> None:
    m = compute_metrics([0.0, 3.0, 10.0], [1.0, 1.0, 1.0], n_boot=0)
    assert m["median_ae"]["value"] == 2.0  # errors 1, 2, 9
    assert m["mae"]["value"] == pytest.approx(4.0)


def test_signed_log() -> None:
    np.testing.assert_allclose(signed_log([-9.0, 0.0, 99.0]), [-1.0, 0.0, 2.0])


def test_exact_match_is_float_equality() -> None:
    m = compute_metrics([0.30000000000000004, 3.5], [0.3, 3.5], n_boot=0)
    assert m["exact_match"]["value"] == 0.5


def test_ci_contains_point_and_is_deterministic() -> None:
    rng = np.random.default_rng(3)
    targets = rng.normal(0, 100, size=300).round()
    preds = [None if rng.random() < 0.1 else t + rng.integers(-3, 4) for t in targets]
    a = compute_metrics(preds, targets, n_boot=300, seed=7)
    b = compute_metrics(preds, targets, n_boot=300, seed=7)
    c = compute_metrics(preds, targets, n_boot=300, seed=8)
    assert a == b
    assert a != c
    for name in METRIC_NAMES:
        v = a[name]
        assert v["lo"] <= v["value"] <= v["hi"], name
    assert a["exact_match"]["lo"] < a["exact_match"]["hi"]


def test_all_invalid_gives_nan_and_null_json(tmp_path) -> None:
    m = compute_metrics([None, None, float("nan")], [1.0, 2.0, 3.0], n_boot=50)
    assert m["exact_match"]["value"] == 0.0
    assert m["invalid_rate"]["value"] == 1.0
    for name in ("mae", "median_ae", "r2", "log_mae", "log_r2"):
        assert math.isnan(m[name]["value"]), name
    text = dumps_json(m)
    assert "NaN" not in text
    assert json.loads(text)["mae"] == {"value": None, "lo": None, "hi": None}
    write_json(tmp_path / "sub" / "m.json", m)
    assert json.loads((tmp_path / "sub" / "m.json").read_text())["r2"]["value"] is None


def test_constant_targets_r2_nan() -> None:
    m = compute_metrics([3.0, 4.0, 3.0], [3.0, 3.0, 3.0], n_boot=50)
    assert math.isnan(m["r2"]["value"]) and math.isnan(m["log_r2"]["value"])
    assert m["mae"]["value"] == pytest.approx(1 / 3)


def test_empty_and_length_mismatch() -> None:
    m = compute_metrics([], [], n_boot=10)
    assert m["n"] == 0 and math.isnan(m["exact_match"]["value"])
    with pytest.raises(ValueError, match="differ in length"):
        compute_metrics([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        compute_metrics([1.0], [float("nan")])


def test_large_bootstrap_is_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    targets = rng.integers(-1000, 1000, size=10_000).astype(float)
    preds = np.where(rng.random(10_000) < 0.5, targets, targets + 1).tolist()
    start = time.perf_counter()
    m = compute_metrics(preds, targets, n_boot=1000, seed=0)
    assert time.perf_counter() - start < 10.0
    assert abs(m["exact_match"]["value"] - 0.5) < 0.03
    assert m["exact_match"]["hi"] - m["exact_match"]["lo"] < 0.05


# --------------------------------------------------------------------------------------------
# metrics_by_module
# --------------------------------------------------------------------------------------------


def test_metrics_by_module() -> None:
    records = [
        {"module": "arithmetic__mul", "answer": "6", "prediction": "6", "parsed": 6.0,
         "valid": True},
        {"module": "arithmetic__mul", "answer": "-12", "prediction": "x", "parsed": None,
         "valid": False},
        {"module": "numbers__place_value", "answer": "3", "prediction": "4", "parsed": 4.0,
         "valid": True},
        # valid=False wins over a stale parsed value
        {"module": "numbers__place_value", "answer": "0.5", "prediction": "?", "parsed": 0.5,
         "valid": False},
    ]
    out = metrics_by_module(records, n_boot=20)
    assert list(out["per_module"]) == ["arithmetic__mul", "numbers__place_value"]
    assert out["overall"]["n"] == 4
    assert out["overall"]["exact_match"]["value"] == 0.25
    assert out["overall"]["invalid_rate"]["value"] == 0.5
    assert out["overall"]["mae"]["value"] == pytest.approx(0.5)
    mul = out["per_module"]["arithmetic__mul"]
    assert mul["exact_match"]["value"] == 0.5 and mul["mae"]["value"] == 0.0
    with pytest.raises(ValueError, match="not a single number"):
        metrics_by_module([{"module": "m", "answer": "1/2", "parsed": 1.0, "valid": True}])


def test_paper_accuracy_differs_from_exact_match_where_it_should():
    from ntl.lab.metrics import is_paper_correct, paper_number

    # a last-digit error on a 10-digit answer: wrong for us, right under np.isclose(rtol=1e-5)
    assert not is_exact_match("1234567891", "1234567890")
    assert is_paper_correct("1234567891", "1234567890")
    # trailing zeros: the same number for both
    assert is_exact_match("3.5", "3.50") and is_paper_correct("3.5", "3.50")
    # the paper reads a detached sign and the last number; we refuse both
    assert paper_number("x = - 12") == -12.0 and parse_number("x = - 12") is None
    assert paper_number("3/4") == 4.0 and paper_number("no number") is None
    assert not is_paper_correct("12.01", "12")  # 1e-5 relative tolerance, not more
    m = compute_metrics([1234567891.0, 3.5], [1234567890.0, 3.5], n_boot=0,
                        paper_preds=[1234567891.0, 3.5])
    assert m["exact_match"]["value"] == 0.5 and m["paper_accuracy"]["value"] == 1.0


def test_metrics_by_module_reads_the_paper_number_from_the_text():
    rows = [
        {"module": "m", "answer": "-12", "prediction": "x = - 12", "parsed": None, "valid": False},
        {"module": "m", "answer": "1234567890", "prediction": "1234567891", "parsed": 1234567891.0,
         "valid": True},
    ]
    overall = metrics_by_module(rows, n_boot=0)["overall"]
    assert overall["exact_match"]["value"] == 0.0 and overall["paper_accuracy"]["value"] == 1.0


def test_paired_difference_is_paired():
    from ntl.lab.metrics import paired_difference

    def rec(q, pred):
        return {"module": "m", "question": q, "answer": "1", "prediction": pred,
                "parsed": float(pred), "valid": True}

    base = [rec(f"q{i}", "1" if i < 50 else "2") for i in range(100)]
    arm = [rec(f"q{i}", "1" if i < 60 else "2") for i in range(100)]  # right on 10 more
    d = paired_difference(arm, base, n_boot=500, seed=0)
    assert d["exact_match"]["value"] == pytest.approx(0.10)
    # paired: only the 10 changed examples vary, so the interval is far tighter than two
    # independent ±0.1 intervals, and excludes 0
    assert 0.0 < d["exact_match"]["lo"] <= 0.10 <= d["exact_match"]["hi"] < 0.17
    assert d["log_mae"]["value"] < 0
    with pytest.raises(ValueError, match="differ"):
        paired_difference(arm[:10], base[:11])


def test_metrics_over_every_question_count_invalid_answers() -> None:
    """mae_all / log_mae_all score an invalid answer as predicting 0; valid-only mae drops it."""
    preds = [1.0, None, 9.0, -4.0]  # exact, invalid, near miss (9 vs 10), sign error (-4 vs 4)
    targets = [1.0, 50.0, 10.0, 4.0]
    m = compute_metrics(preds, targets, n_boot=0)
    assert INVALID_SCORED_AS == 0.0
    assert m["mae"]["value"] == pytest.approx((0 + 1 + 8) / 3)  # valid only
    assert m["mae_all"]["value"] == pytest.approx((0 + 50 + 1 + 8) / 4)  # invalid costs |50 - 0|
    f = {x: math.copysign(math.log10(abs(x) + 1), x) if x else 0.0 for x in (1, 50, 9, 10, 4, -4, 0)}
    log_all = [0.0, abs(f[50] - f[0]), abs(f[9] - f[10]), abs(f[-4] - f[4])]
    assert m["log_mae_all"]["value"] == pytest.approx(sum(log_all) / 4)
    # only 9 vs 10 is off by one unit; the sign error (distance 8) and the invalid one are not
    assert m["near_miss_rate"]["value"] == pytest.approx(1 / 4)
    assert m["invalid_rate"]["value"] == pytest.approx(1 / 4)


def test_an_arm_cannot_look_better_by_writing_garbage() -> None:
    """Invalid answers on the hardest questions lower the valid-only MAE, never mae_all."""
    targets = [1.0, 2.0, 900.0]
    honest = compute_metrics([1.0, 2.0, 800.0], targets, n_boot=0)
    garbage = compute_metrics([1.0, 2.0, None], targets, n_boot=0)
    assert garbage["mae"]["value"] < honest["mae"]["value"]
    assert garbage["mae_all"]["value"] > honest["mae_all"]["value"]


def test_near_miss_is_one_unit_in_the_targets_last_place() -> None:
    assert last_place_unit(np.array([12.0, 2.5, -0.35, 1e-05, 0.0])).tolist() == pytest.approx(
        [1.0, 0.1, 0.01, 1e-05, 1.0])
    preds = [13.0, 2.6, -0.34, 2.4, 11.0, 0.34]
    targets = [12.0, 2.5, -0.35, 2.5, 12.5, -0.35]
    m = compute_metrics(preds, targets, n_boot=0)
    # hits: 13 vs 12, 2.6 vs 2.5, -0.34 vs -0.35, 2.4 vs 2.5; not 11 vs 12.5 (1.5) nor the sign error
    assert m["near_miss_rate"]["value"] == pytest.approx(4 / 6)


def test_question_scores_mean_is_the_metric() -> None:
    rows = [{"module": "m", "question": f"q{i}", "answer": a, "prediction": p,
             "parsed": parse_number(p), "valid": parse_number(p) is not None}
            for i, (a, p) in enumerate([("4", "4"), ("7", "8"), ("-3", "x"), ("10", "-10")])]
    scores = question_scores(rows)
    overall = metrics_by_module(rows, n_boot=0)["overall"]
    for name in PER_QUESTION_METRICS:
        assert scores[name].shape == (4,)
        assert scores[name].mean() == pytest.approx(overall[name]["value"]), name
