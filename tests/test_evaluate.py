"""`ntl eval`: generation -> parsed numbers -> metrics; deterministic for a saved checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import ntl.lab.evaluate as evaluate
from ntl.lab.config import resolve
from ntl.lab.evaluate import evaluate_run, is_evaluated, select_examples
from ntl.lab.train import train_arm

SPLITS = ("valid", "interpolate", "extrapolate")


def _write(path: Path, records: list[dict]) -> None:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    paths = {}
    for split, n in {"train": 128, "valid": 20, "interpolate": 20, "extrapolate": 12}.items():
        recs = []
        for i in range(n):
            a, b = rng.randint(0, 50), rng.randint(0, 50)
            module = "arithmetic__add_or_sub" if i % 2 else "arithmetic__mul"
            recs.append({"module": module, "question": f"What is {a} + {b}?",
                         "answer": str(a + b), "split": split})
        paths[split] = d / f"{split}.jsonl"
        _write(paths[split], recs)
    return paths


@pytest.fixture(scope="module", params=["t5-micro", "llama-micro"])
def trained(request, tmp_path_factory, data_paths) -> Path:
    profile = resolve(
        "quick",
        {"model": request.param, "max_steps": 20, "batch_size": 16, "lr": 1e-2, "warmup_steps": 0,
         "save_steps": 20, "logging_steps": 10, "threads": 1, "eval_batch_size": 8,
         "max_new_tokens": 8, "n_boot": 50},
    )
    out = tmp_path_factory.mktemp(request.param) / "ce" / "seed0"
    train_arm(profile, "ce", 0, out, data_paths=data_paths, progress=False)
    return out


def test_eval_writes_predictions_and_metrics_deterministically(trained):
    first = evaluate_run(trained, progress=False)
    assert set(first) == set(SPLITS)
    assert is_evaluated(trained, SPLITS)
    files = {s: (trained / "eval" / f"{s}.jsonl").read_text() for s in SPLITS}
    metrics_text = (trained / "eval" / "metrics.json").read_text()
    rows = [json.loads(line) for line in files["valid"].splitlines()]
    assert len(rows) == 20
    assert set(rows[0]) == {"module", "question", "answer", "prediction", "parsed", "valid"}
    for r in rows:
        assert r["valid"] == (r["parsed"] is not None)
    m = json.loads(metrics_text)["valid"]
    assert m["overall"]["n"] == 20
    assert set(m["per_module"]) == {"arithmetic__add_or_sub", "arithmetic__mul"}
    for key in ("exact_match", "mae", "log_mae", "log_r2", "invalid_rate"):
        assert set(m["overall"][key]) == {"value", "lo", "hi"}

    evaluate_run(trained, progress=False)  # again: identical files
    assert (trained / "eval" / "metrics.json").read_text() == metrics_text
    for s in SPLITS:
        assert (trained / "eval" / f"{s}.jsonl").read_text() == files[s]

    # the last checkpoint holds the final weights: its evaluation reproduces the metrics
    ckpt = evaluate_run(trained, checkpoint="checkpoint-20", progress=False)
    assert json.loads(json.dumps(ckpt)) == json.loads(json.dumps(first))
    assert (trained / "eval-checkpoint-20" / "metrics.json").read_text() == metrics_text


def test_eval_subset_and_beams(trained):
    out = trained.parent / "eval-beams"
    m = evaluate_run(trained, splits=["valid"], num_beams=2, max_examples=7, out_dir=out,
                     progress=False)
    assert list(m) == ["valid"] and m["valid"]["overall"]["n"] == 7
    assert select_examples(list(range(20)), 7) == select_examples(list(range(20)), 7)


def test_eval_with_a_number_aware_decoding(trained):
    """--decoding median-of-k: k samples per question, the prediction is their median; files go
    to eval-median-of-3 and are the same when evaluated again; explicit greedy = the default."""
    import statistics

    from ntl.decoding import Decoding
    from ntl.lab.metrics import parse_number

    kwargs = dict(splits=["valid"], max_examples=6, progress=False)
    evaluate_run(trained, decoding=Decoding("median-of-k", k=3), **kwargs)
    out = trained / "eval-median-of-3"
    text = (out / "valid.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 6
    for row in rows:
        assert len(row["samples"]) == 3
        values = [parse_number(s) for s in row["samples"]]
        valid = [v for v in values if v is not None]
        assert row["invalid_samples"] == 3 - len(valid)
        assert row["parsed"] == (statistics.median(valid) if valid else None)
    assert json.loads((out / "decoding.json").read_text())["name"] == "median-of-3"
    evaluate_run(trained, decoding=Decoding("median-of-k", k=3), **kwargs)
    assert (out / "valid.jsonl").read_text() == text

    evaluate_run(trained, decoding=Decoding("greedy"), **kwargs)
    evaluate_run(trained, out_dir=trained / "eval-default", **kwargs)
    assert (trained / "eval-greedy" / "valid.jsonl").read_text() == (
        trained / "eval-default" / "valid.jsonl").read_text()
    with pytest.raises(ValueError, match="not both"):
        evaluate_run(trained, decoding=Decoding("greedy"), num_beams=2, **kwargs)

    # expected digits keep greedy's validity: the same answers are numbers
    evaluate_run(trained, decoding=Decoding("expected-digits"), **kwargs)
    greedy = [json.loads(line) for line in (trained / "eval-greedy" / "valid.jsonl").read_text().splitlines()]
    expected = [json.loads(line)
                for line in (trained / "eval-expected-digits" / "valid.jsonl").read_text().splitlines()]
    assert [r["valid"] for r in expected] == [r["valid"] for r in greedy]


def test_decoding_options_of_ntl_eval():
    import argparse

    from ntl.errors import UsageError

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(["run", "--decoding", "mean-of-k", "--k", "5", "--k-source", "beams"])
    d = evaluate.decoding_from_args(args)
    assert (d.method, d.k, d.source, d.name) == ("mean-of-k", 5, "beams", "mean-of-5-beams")
    assert evaluate.decoding_from_args(parser.parse_args(["run"])) is None
    with pytest.raises(UsageError, match="--decoding beam --k 4"):
        evaluate.decoding_from_args(parser.parse_args(["run", "--decoding", "greedy", "--num-beams", "4"]))
    with pytest.raises(UsageError, match="k=0"):
        evaluate.decoding_from_args(parser.parse_args(["run", "--decoding", "median-of-k", "--k", "0"]))


def test_metrics_from_parsed_predictions():
    """Scoring: exact answers count as matches, unparseable ones as invalid."""
    from ntl.lab.metrics import metrics_by_module

    records = [{"module": "m", "question": f"q{i}", "answer": a}
               for i, a in enumerate(["42", "41", "7", "0.5"])]
    rows = evaluate.score_rows(records, ["42", "42", "1e-05", "garbage"])
    assert [r["valid"] for r in rows] == [True, True, True, False]
    assert rows[2]["parsed"] == pytest.approx(1e-05) and rows[3]["parsed"] is None
    assert set(rows[0]) == {"module", "question", "answer", "prediction", "parsed", "valid"}
    m = metrics_by_module(rows, n_boot=0, seed=0)["overall"]
    assert m["exact_match"]["value"] == pytest.approx(1 / 4)
    assert m["invalid_rate"]["value"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="4 records but 3 predictions"):
        evaluate.score_rows(records, ["1", "2", "3"])


def test_eval_missing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_config.json"):
        evaluate_run(tmp_path, progress=False)
