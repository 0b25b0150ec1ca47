"""Text-regression tasks in `ntl experiment`: the diamonds profile, task dispatch, extra
decodings, the regression metrics in eval and the report's "Numbers as measurements" section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ntl.lab.config import DIAMONDS, decodings_of, resolve
from ntl.lab.data.diamonds import DiamondsSpec
from ntl.lab.data.synthetic import SyntheticSpec
from ntl.lab.data.tasks import generate_data, is_regression_task, train_median
from ntl.lab.experiment import run_experiment
from ntl.lab.regression_report import collect_regression, regression_markdown


def test_diamonds_profile_is_the_study_and_its_data_spec():
    assert DIAMONDS.task == "diamonds" and len(DIAMONDS.seeds) == 3
    assert set(DIAMONDS.arms) == {"ce", "ce+ntl-was", "ce+ntl-mse", "ce+ntl-number-level",
                                  "regression-head", "xval"}
    assert [d.name for d in decodings_of(DIAMONDS)] == ["median-of-8"]
    assert set(DIAMONDS.decoding_splits) == {"test", "extrapolate"}
    spec = DIAMONDS.data_spec()
    assert spec == DiamondsSpec(n_valid=1000, n_test=1000, n_train=45_000, n_extrapolate=1000, seed=0)
    synthetic = resolve(DIAMONDS, {"task": "synthetic", "n_train": 5000}).data_spec()
    assert isinstance(synthetic, SyntheticSpec) and synthetic.n_train == 5000
    assert synthetic.n_rows * 0.9 > 5000 + 1000 + 1000  # room below the extrapolation threshold
    with pytest.raises(ValueError, match="unknown task 'prices'.*mathematics, diamonds, synthetic"):
        resolve(DIAMONDS, {"task": "prices"}).data_spec()
    with pytest.raises(ValueError, match="base_modules=none"):
        resolve(DIAMONDS, {"base_modules": "numbers__place_value"}).data_spec()
    assert not is_regression_task("mathematics") and is_regression_task("synthetic")


def test_decodings_of_names_k_and_errors():
    profile = resolve(DIAMONDS, {"decodings": "greedy,median-of-k,mean-of-k,beam", "decoding_k": 4})
    assert [d.name for d in decodings_of(profile)] == ["greedy", "median-of-4", "mean-of-4", "beam-4"]
    with pytest.raises(ValueError, match="unknown decoding 'median'"):
        decodings_of(resolve(DIAMONDS, {"decodings": "median"}))
    with pytest.raises(ValueError):
        decodings_of(resolve(DIAMONDS, {"decoding_k": 0}))


def test_generate_data_dispatches_and_train_median_is_read_back(tmp_path):
    paths = generate_data(SyntheticSpec(n_rows=300, n_valid=20, n_test=20), tmp_path)
    assert set(paths) == {"train", "valid", "test", "extrapolate"}
    targets = [float(json.loads(line)["answer"]) for line in paths["train"].read_text().splitlines()]
    assert train_median(paths["test"]) == pytest.approx(float(np.median(targets)))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "train.jsonl").write_text("")
    assert train_median(tmp_path / "plain" / "train.jsonl") is None  # no spec.json: not regression
    with pytest.raises(TypeError, match="no task makes data from a dict"):
        generate_data({"task": "diamonds"}, tmp_path)


def _write(folder: Path, split: str, rows: list[tuple[str, str, float | None]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{split}.jsonl").open("w") as f:
        for question, answer, parsed in rows:
            f.write(json.dumps({"module": "t", "question": question, "answer": answer,
                                "prediction": "" if parsed is None else str(parsed),
                                "parsed": parsed, "valid": parsed is not None}) + "\n")


def test_collect_regression_hand_computed(tmp_path):
    questions = [("q1", "100"), ("q2", "200"), ("q3", "400")]
    preds = {  # (arm, folder, seed) -> predictions; None is an invalid answer
        ("ce", "eval", 0): [110, 180, 400],        # |err| 10, 20, 0
        ("ce", "eval", 1): [100, 260, None],       # 0, 60, |300 - 400| = 100 (fallback 300)
        ("ce+ntl-was", "eval", 0): [100, 200, 390],  # 0, 0, 10
        ("ce+ntl-was", "eval", 1): [90, 200, 400],   # 10, 0, 0
        ("ce+ntl-was", "eval-median-of-4", 0): [100, 200, 400],
        ("ce+ntl-was", "eval-median-of-4", 1): [100, 200, 400],
        ("regression-head", "eval", 0): [150, 150, 150],
        ("regression-head", "eval", 1): [150, 150, 150],
    }
    runs: dict[str, dict[int, Path]] = {}
    for (arm, folder, seed), p in preds.items():
        seed_dir = tmp_path / arm / f"seed{seed}"
        runs.setdefault(arm, {})[seed] = seed_dir
        _write(seed_dir / folder, "test", [(q, a, v) for (q, a), v in zip(questions, p)])
    result = collect_regression(runs, ["test"], ["median-of-4"], fallback=300.0, n_boot=200)
    cells = result["cells"]
    ce = cells["ce"]["greedy"]["test"]
    assert ce["mean"]["mae"] == pytest.approx((30 / 3 + 160 / 3) / 2)
    assert ce["mae"]["value"] == pytest.approx(190 / 6)
    assert [p["invalid_rate"]["value"] for p in ce["per_seed"]] == pytest.approx([0, 1 / 3])
    was = cells["ce+ntl-was"]
    assert was["greedy"]["test"]["vs_reference"]["value"] == pytest.approx((20 - 190) / 6)
    assert was["median-of-4"]["test"]["vs_greedy"]["value"] == pytest.approx(-20 / 6)
    assert was["median-of-4"]["test"]["vs_reference"]["value"] == pytest.approx(-190 / 6)
    lo, hi = was["greedy"]["test"]["vs_reference"]["lo"], was["greedy"]["test"]["vs_reference"]["hi"]
    assert lo <= (20 - 190) / 6 <= hi and lo < hi
    assert "median-of-4" not in cells["ce"]  # never decoded that way: no cell, not a stand-in
    head = cells["regression-head"]
    assert head["median-of-4"]["test"]["stand_in"] and not head["greedy"]["test"]["stand_in"]
    stand_in, greedy = head["median-of-4"]["test"], head["greedy"]["test"]
    assert stand_in["mae"]["value"] == pytest.approx(greedy["mae"]["value"])
    assert result["median_baseline"]["test"]["mae"]["value"] == pytest.approx((200 + 100 + 100) / 3)
    assert result["gbm"] is None
    text = regression_markdown(result)
    assert "| `regression-head` | median-of-4* |" in text and "always the training median" in text

    _write(tmp_path / "xval" / "seed0" / "eval", "test", [("other", "1", 1.0)] * 3)
    with pytest.raises(ValueError, match="other questions"):
        collect_regression({**runs, "xval": {0: tmp_path / "xval" / "seed0"}}, ["test"], [],
                           fallback=300.0, n_boot=0)


TINY_DIAMONDS = {
    "model": "t5-micro", "n_train": 200, "n_valid": 12, "n_test": 12, "n_extrapolate": 12,
    "max_steps": 4, "batch_size": 8, "lr": 1e-2, "warmup_steps": 0, "save_steps": 2,
    "logging_steps": 2, "jobs": 1, "eval_batch_size": 12, "max_new_tokens": 6, "n_boot": 20,
    "decoding_k": 2, "seeds": "0,1", "arms": "ce,ce+ntl-was,regression-head",
}


def test_diamonds_experiment_end_to_end(tmp_path, capsys):
    profile = resolve("diamonds", TINY_DIAMONDS)
    run_experiment(profile, "d", runs_root=tmp_path / "runs", data_root=tmp_path / "data",
                   progress=False)
    run = tmp_path / "runs" / "d"
    for arm in ("ce", "ce+ntl-was", "regression-head"):
        for seed in (0, 1):
            seed_dir = run / arm / f"seed{seed}"
            metrics = json.loads((seed_dir / "eval" / "metrics.json").read_text())
            assert set(metrics) == {"valid", "test", "extrapolate"}
            for split in metrics:
                regression = metrics[split]["regression"]
                assert regression["n"] == 12 and regression["fallback"] > 0
                assert {"mae", "rmse", "r2", "mape", "spearman", "invalid_rate"} <= set(regression)
            sampled = seed_dir / "eval-median-of-2" / "metrics.json"
            if arm == "regression-head":
                assert not sampled.exists()  # decodes only greedily: its greedy answers stand in
            else:
                assert set(json.loads(sampled.read_text())) == {"test", "extrapolate"}
                rows = [json.loads(x) for x in (sampled.parent / "test.jsonl").read_text().splitlines()]
                assert all(len(r["samples"]) == 2 for r in rows)
            assert (seed_dir / "eval-checkpoint-2" / "metrics.json").is_file()  # along training
    report = (run / "report.md").read_text()
    assert "## Numbers as measurements" in report and "Beside the paper" not in report
    assert "| `regression-head` | median-of-2* |" in report
    assert "gradient-boosted trees on the columns" in report and "always the training median" in report
    assert "**extrapolate**" in report and (run / "measurements.png").is_file()
    assert "**valid: MAE along training**" in report and "| step 2 | end |" in report
    out = capsys.readouterr().out
    assert "Δ MAE vs CE greedy" in out  # the experiment prints the regression table
