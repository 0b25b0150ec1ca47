"""The paired interval over seeds and questions: it must hold both sources of variance."""

import numpy as np
import pytest

from ntl.lab.aggregate import aggregate_seeds, seeds_by_questions_bootstrap


def test_identical_seeds_still_get_the_test_sample_variance():
    """Three seeds that agree on every question: a t-interval across seeds has zero width, the
    two-way bootstrap keeps the spread over questions (a 0/1 difference on 400 questions)."""
    row = np.random.default_rng(0).choice([-1.0, 0.0, 1.0], size=400, p=[0.2, 0.6, 0.2])
    diffs = np.stack([row, row, row])
    t = aggregate_seeds([{"value": float(r.mean()), "lo": 0, "hi": 0} for r in diffs])
    assert t["hi"] - t["lo"] == pytest.approx(0.0)
    out = seeds_by_questions_bootstrap(diffs, n_boot=4000, seed=1)
    assert out["value"] == pytest.approx(row.mean())
    # the standard error of a mean of 400 draws with sd ~0.63 is ~0.032: half-width ~0.06
    assert 0.09 < out["hi"] - out["lo"] < 0.16
    assert out["lo"] <= out["value"] <= out["hi"]


def test_seed_variance_without_question_variance():
    """Every question gives the same difference within a seed, seeds differ: the interval comes
    from the seeds alone and covers the spread of their means."""
    diffs = np.array([[0.0] * 50, [0.1] * 50, [0.2] * 50])
    out = seeds_by_questions_bootstrap(diffs, n_boot=4000, seed=0)
    assert out["value"] == pytest.approx(0.1)
    assert out["lo"] < 0.1 < out["hi"] and out["lo"] >= 0.0 and out["hi"] <= 0.2
    assert (out["n_seeds"], out["n_questions"]) == (3, 50)


def test_constant_differences_and_edge_cases():
    out = seeds_by_questions_bootstrap(np.full((3, 20), 0.25), n_boot=500)
    assert out["value"] == out["lo"] == out["hi"] == pytest.approx(0.25)
    assert np.isnan(seeds_by_questions_bootstrap(np.zeros((0, 5)))["value"])
    assert seeds_by_questions_bootstrap(np.ones((2, 3)), n_boot=0)["lo"] == 1.0
    with pytest.raises(ValueError, match="seeds, questions"):
        seeds_by_questions_bootstrap(np.zeros(5))
    a = seeds_by_questions_bootstrap(np.eye(3), n_boot=300, seed=7)
    b = seeds_by_questions_bootstrap(np.eye(3), n_boot=300, seed=7)
    assert a == b  # deterministic for a seed
