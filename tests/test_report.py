"""Tests for ntl.lab.report on a run directory written by the test (2 arms x 2 seeds, real files)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from ntl.lab.metrics import METRIC_NAMES, write_json
from ntl.lab.report import add_arguments, aggregate_seeds, build_report, order_arms, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# exact_match per (arm, seed, split); the other metrics are derived from it below
ACC = {
    ("ce", 0): {"interpolate": 0.40, "extrapolate": 0.20},
    ("ce", 1): {"interpolate": 0.44, "extrapolate": 0.22},
    ("ce+ntl-was", 0): {"interpolate": 0.50, "extrapolate": 0.30},
    ("ce+ntl-was", 1): {"interpolate": 0.56, "extrapolate": 0.26},
}
MODULES = ("arithmetic__mul", "numbers__place_value")


def _metrics(acc: float, n: int = 200) -> dict:
    values = {
        "exact_match": acc,
        "paper_accuracy": acc + 0.1,  # the tolerant metric sits above the strict one
        "mae": 10 * (1 - acc),
        "median_ae": 1.0,
        "r2": 0.9 + acc / 10,
        "log_mae": 0.5 * (1 - acc),
        "log_r2": 0.95,
        "mae_all": 11 * (1 - acc),
        "log_mae_all": 0.6 * (1 - acc),
        "near_miss_rate": 0.1,
        "invalid_rate": 0.01,
    }
    if acc == 0.2:
        values["r2"] = float("nan")  # undefined metric in one seed (written as null)
    out: dict = {"n": n}
    for name in METRIC_NAMES:
        v = values[name]
        out[name] = {"value": v, "lo": v - 0.03, "hi": v + 0.03}
    return out


def _log_history(arm: str, steps: int = 5) -> list[dict]:
    hist = []
    for i in range(1, steps + 1):
        ce = 3.0 / i
        ntl = None if arm == "ce" else 1.5 / i
        loss = ce if ntl is None else ce + 0.3 * ntl
        hist.append({"step": 10 * i, "loss": loss, "ce": ce, "ntl": ntl,
                     "learning_rate": 1e-4, "epoch": i / steps})
    hist.append({"step": 10 * steps, "train_runtime": 12.0, "train_loss": 1.0})  # HF summary row
    return hist


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs" / "quick"
    # written in reverse order so that discovery order does not decide the arm order
    for (arm, seed), accs in sorted(ACC.items(), reverse=True):
        seed_dir = root / arm / f"seed{seed}"
        metrics = {
            split: {
                "overall": _metrics(acc),
                "per_module": {mod: _metrics(acc + 0.02 * j, n=100) for j, mod in
                               enumerate(MODULES)},
            }
            for split, acc in accs.items()
        }
        write_json(seed_dir / "eval" / "metrics.json", metrics)
        # per-example predictions of one split, for the paired comparison: the first
        # round(acc * 100) questions answered right, the rest off by one
        right = round(accs["interpolate"] * 100)
        with (seed_dir / "eval" / "interpolate.jsonl").open("w") as f:
            for i in range(100):
                pred = str(i) if i < right else str(i + 1)
                f.write(json.dumps({"module": MODULES[i % 2], "question": f"q{i}", "answer": str(i),
                                    "prediction": pred, "parsed": float(pred), "valid": True}) + "\n")
        write_json(seed_dir / "log_history.json", _log_history(arm))
    (root / "ce+ntl-was" / "seed2").mkdir()  # a seed that never got evaluated
    write_json(root / "experiment.json",
               {"command": "ntl experiment --profile quick", "arms": ["ce+ntl-was", "ce"]})
    return root


def test_results_json_aggregates(run_dir: Path) -> None:
    table = build_report(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["arms"] == ["ce", "ce+ntl-was"]
    assert results["splits"] == ["interpolate", "extrapolate"]
    assert results["seeds"] == {"ce": [0, 1], "ce+ntl-was": [0, 1]}
    assert results["missing"] == ["ce+ntl-was/seed2"]
    assert results["produced_by"] == f"ntl report {run_dir}"
    assert results["experiment_command"] == "ntl experiment --profile quick"
    assert results["machine"]["cpu_count"] >= 1

    # per-seed metrics kept as evaluated
    assert results["per_seed"]["ce"]["seed1"]["interpolate"]["overall"]["exact_match"][
        "value"] == pytest.approx(0.44)

    agg = results["aggregate"]["ce+ntl-was"]["interpolate"]["overall"]["exact_match"]
    assert agg["value"] == pytest.approx((0.50 + 0.56) / 2)
    assert agg["ci"] == "t" and agg["n_seeds"] == 2
    # t-interval by hand: sd = 0.06/sqrt(2), half = t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.03
    assert agg["hi"] - agg["value"] == pytest.approx(12.7062047 * 0.03, rel=1e-6)
    assert agg["lo"] == pytest.approx(0.53 - 12.7062047 * 0.03, rel=1e-6)
    log_mae = results["aggregate"]["ce"]["extrapolate"]["overall"]["log_mae"]
    assert log_mae["value"] == pytest.approx((0.5 * 0.8 + 0.5 * 0.78) / 2)

    # a NaN (null) seed value is skipped: one finite seed left -> its bootstrap CI
    r2 = results["aggregate"]["ce"]["extrapolate"]["overall"]["r2"]
    assert r2["n_seeds"] == 1 and r2["ci"] == "bootstrap"
    assert r2["value"] == pytest.approx(0.9 + 0.022)
    assert r2["lo"] == pytest.approx(0.9 + 0.022 - 0.03)
    assert r2["values"][0] is None  # NaN written as null

    mod = results["aggregate"]["ce"]["interpolate"]["per_module"]["numbers__place_value"]
    assert mod["exact_match"]["value"] == pytest.approx((0.42 + 0.46) / 2)
    assert "| ce | 0 |" in table


def test_markdown_rows_and_order(run_dir: Path) -> None:
    table, _, _ = build_report(run_dir).partition("\n\nBeside the paper:")
    md = (run_dir / "report.md").read_text()
    assert table in md
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # no header
    seed_rows = [r for r in rows if not r.startswith("| **")]
    assert [r.split(" | ")[0:2] for r in seed_rows] == [
        ["| ce", "0"], ["| ce", "1"], ["| ce+ntl-was", "0"], ["| ce+ntl-was", "1"]]
    agg_rows = [r for r in rows if r.startswith("| **")]
    assert [r.split(" | ")[0] for r in agg_rows] == ["| **ce**", "| **ce+ntl-was**"]
    # ce rows (and its aggregate) come before the other arm
    assert rows.index(agg_rows[0]) < rows.index(seed_rows[2])
    header = table.splitlines()[0]
    assert "interpolate EM" in header and "interpolate paper acc" in header
    assert "extrapolate log-MAE" in header
    assert "0.500 [0.470, 0.530]" in table  # ce seed0 interpolate paper accuracy, beside EM
    assert "0.400 [0.370, 0.430]" in table  # ce seed0 interpolate accuracy with CI
    assert "0.420 [" in table  # ce aggregate interpolate accuracy
    assert "Produced by: `ntl report" in md
    assert "ntl experiment --profile quick" in md
    assert "torch" in md and "CPUs" in md
    assert "t-interval across seeds" in md
    assert "### interpolate" in md and "numbers__place_value" in md
    assert "ce+ntl-was/seed2" in md


def test_comparison_table_puts_the_papers_numbers_beside_ours(run_dir: Path) -> None:
    printed = build_report(run_dir)
    _, _, table = printed.partition("\n\nBeside the paper:\n\n")
    lines = table.splitlines()
    # like with like: our paper accuracy beside the paper's accuracy
    assert lines[0] == ("| arm | seeds | paper row | interpolate paper acc | paper | interpolate log-MAE | "
                        "paper | extrapolate paper acc | paper | extrapolate log-MAE | paper |")
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
    assert list(cells) == ["ce", "ce+ntl-was"]
    ce, was = cells["ce"], cells["ce+ntl-was"]
    assert ce[1:3] == ["2", "T5 (CE)"] and was[2] == "T5 + NTL-WAS"
    # ours (mean [t-CI] over the two seeds) then the paper's reported value
    assert ce[3].startswith("0.520 [") and ce[4] == "0.643"
    assert was[3].startswith("0.630 [") and was[4] == "0.746"
    assert was[7].startswith("0.380 [") and was[8] == "0.432"
    assert ce[10].strip(" |") == "0.785"  # paper extrapolate log-MAE of T5 (CE)
    assert "## Beside the paper" in (run_dir / "report.md").read_text()


def test_paired_differences_to_ce(run_dir: Path) -> None:
    build_report(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    paired = results["paired"]["ce+ntl-was"]
    assert paired["baseline"] == "ce" and list(paired["splits"]) == ["interpolate"]
    em = paired["splits"]["interpolate"]["exact_match"]
    # seed 0: 50 vs 40 right, seed 1: 56 vs 44, on the same questions
    assert em["per_seed"]["0"]["value"] == pytest.approx(0.10)
    assert em["per_seed"]["1"]["value"] == pytest.approx(0.12)
    assert em["value"] == pytest.approx(0.11) and em["n_seeds"] == 2
    assert em["ci"] == "seeds x questions bootstrap" and em["n_questions"] == 100
    # the arm's extra right answers are exactly the changed ones: every resample favours it
    assert em["per_seed"]["0"]["lo"] > 0 and em["lo"] > 0
    # the t-interval across the two seeds is kept beside the two-way interval
    assert em["t_lo"] < em["value"] < em["t_hi"]
    assert paired["splits"]["interpolate"]["log_mae_all"]["value"] < 0
    md = (run_dir / "report.md").read_text()
    assert "## Paired with CE" in md and "+0.110 [" in md and "![paired differences](paired.png)" in md
    assert (run_dir / "paired.png").read_bytes()[:8] == PNG_MAGIC


def test_paper_rows_for_our_arm_names() -> None:
    from ntl.lab.paper import paper_row

    assert paper_row("rt+ntl")[0] == "RT + NTL-MSE"
    assert paper_row("xval")[1]["extrapolate"]["acc"] == 0.0
    # no counterpart in the paper: other λ, tokenizer/decoder variants, the regression head
    for arm in ("ce+ntl-was@0.1", "ce:multidigit", "ce+ntl-was:decoder", "regression-head"):
        assert paper_row(arm) is None, arm


def test_every_arm_gets_its_own_colour() -> None:
    from ntl.lab.report import _arm_colors

    for n in (3, 10, 11, 20):
        colors = _arm_colors(n)
        assert len(colors) == n and len({str(c) for c in colors}) == n, n


def test_pngs_are_valid(run_dir: Path) -> None:
    build_report(run_dir)
    for name in ("curves.png", "accuracy.png"):
        data = (run_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 1000


def test_one_seed_uses_bootstrap_ci(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir / "ce" / "seed1")
    build_report(run_dir, plots=False)
    results = json.loads((run_dir / "results.json").read_text())
    agg = results["aggregate"]["ce"]["interpolate"]["overall"]["exact_match"]
    assert agg["ci"] == "bootstrap"
    assert (agg["value"], agg["lo"], agg["hi"]) == pytest.approx((0.40, 0.37, 0.43))
    assert results["ci_method"] == {"ce": "bootstrap (one seed)",
                                    "ce+ntl-was": "t-interval across seeds"}
    assert not (run_dir / "curves.png").exists()
    assert "**(1 seed)**" in (run_dir / "report.md").read_text()


def test_cli_run(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(run_dir), "--no-plots"])) == 0
    out = capsys.readouterr().out
    assert "| ce | 0 |" in out and "results.json" in out
    assert run(parser.parse_args([str(tmp_path / "nothing")])) == 1
    assert "no <arm>/seed<k>/eval/metrics.json" in capsys.readouterr().err


def test_order_arms_and_aggregate_helpers() -> None:
    assert order_arms(["ce+ntl-was", "xval", "ce", "ce+ntl-mse"]) == [
        "ce", "ce+ntl-mse", "ce+ntl-was", "xval"]
    assert order_arms(["ce+ntl-was", "ce", "ce+ntl-mse"], preferred=["ce+ntl-was"]) == [
        "ce", "ce+ntl-was", "ce+ntl-mse"]
    agg = aggregate_seeds([{"value": 1.0, "lo": 0.0, "hi": 2.0},
                           {"value": 2.0, "lo": 1.0, "hi": 3.0},
                           {"value": 3.0, "lo": 2.0, "hi": 4.0}])
    # mean 2, sd 1, t(0.975, 2) = 4.302653 -> half width 4.302653 / sqrt(3)
    assert agg["value"] == 2.0
    assert agg["hi"] - 2.0 == pytest.approx(4.3026527 / math.sqrt(3), rel=1e-6)
    empty = aggregate_seeds([{"value": None, "lo": None, "hi": None}])
    assert math.isnan(empty["value"]) and empty["ci"] is None


def test_t_interval_clipped_to_metric_range() -> None:
    from ntl.lab.report import METRIC_BOUNDS

    agg = aggregate_seeds([{"value": 0.0, "lo": 0.0, "hi": 0.01},
                           {"value": 0.1, "lo": 0.05, "hi": 0.15}],
                          METRIC_BOUNDS["exact_match"])
    assert agg["lo"] == 0.0 and 0.05 < agg["hi"] <= 1.0
