"""Profiles and `ntl experiment`: data -> train every arm -> eval -> report, skipping finished stages."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ntl.lab.config import (
    NTL_LATE,
    PAPER,
    PRETRAINED,
    PROFILES,
    QUICK,
    SMALL,
    Profile,
    override,
    parse_sets,
    resolve,
)
from ntl.lab.experiment import run_experiment

TINY = {
    "model": "t5-micro",
    "n_train": 96,
    "n_valid": 12,
    "n_interpolate": 12,
    "n_extrapolate": 12,
    "max_steps": 6,
    "batch_size": 8,
    "lr": 1e-2,
    "warmup_steps": 0,
    "save_steps": 3,
    "logging_steps": 3,
    "threads": 1,
    "eval_batch_size": 16,
    "max_new_tokens": 6,
    "n_boot": 20,
}


def test_profiles():
    assert set(PROFILES) == {"quick", "small", "pretrained", "ntl-late", "diamonds", "paper"}
    assert NTL_LATE.base_steps > 0 and NTL_LATE.lr == 1e-4 and NTL_LATE.lr_scheduler == "constant"
    assert len(NTL_LATE.seeds) == 3 and NTL_LATE.modules == SMALL.modules
    # the pretrained base learns other modules than the target; every arm trains the whole task
    assert PRETRAINED.base_steps > 0 and len(PRETRAINED.seeds) == 3
    assert not set(PRETRAINED.base_modules) & set(PRETRAINED.modules)
    assert PRETRAINED.max_steps > PRETRAINED.base_steps and PRETRAINED.warmup_steps > 0
    assert PRETRAINED.lr_scheduler == "linear" and PRETRAINED.curve_splits
    assert QUICK.arms == ("ce", "ce+ntl-was", "ce+ntl-mse") and len(QUICK.seeds) == 1
    assert len(SMALL.seeds) == 3
    assert (PAPER.model, PAPER.max_steps, PAPER.batch_size, PAPER.lr, PAPER.weight_decay,
            PAPER.lr_scheduler, PAPER.num_beams) == (
        "t5-base", 1_050_000, 32, 1e-4, 0.01, "reduce_lr_on_plateau", 4)
    assert len(PAPER.modules) == 13
    for p in PROFILES.values():
        p.data_spec()  # valid DataSpec
        assert Profile.from_dict(p.to_dict()) == p


def test_overrides_from_the_command_line():
    p = resolve("quick", ["max_steps=1_000", "modules=arithmetic__mul,arithmetic__add_or_sub",
                          "entropy=3,6", "seeds=0,1", "eval_max_examples=none", "lr=5e-4",
                          "restrict_vocab=false"])
    assert p.max_steps == 1000 and p.modules == ("arithmetic__mul", "arithmetic__add_or_sub")
    assert p.entropy == (3.0, 6.0) and p.seeds == (0, 1) and p.eval_max_examples is None
    assert p.lr == 5e-4 and p.restrict_vocab is False
    assert override(QUICK, {"arms": ["ce"]}).arms == ("ce",)
    with pytest.raises(KeyError, match="unknown profile field"):
        resolve("quick", ["max_stepz=3"])
    with pytest.raises(ValueError, match="max_steps"):
        resolve("quick", ["max_steps=1.5"])
    with pytest.raises(ValueError, match="key=value"):
        parse_sets(["max_steps"])


def test_experiment_end_to_end_and_skips_finished_stages(tmp_path, capsys):
    profile = resolve("quick", {**TINY, "arms": ["ce", "ce+ntl-was"], "jobs": 2})
    kw = dict(runs_root=tmp_path / "runs", data_root=tmp_path / "data", progress=False)
    record = run_experiment(profile, "t", command=["ntl", "experiment"], **kw)
    run = tmp_path / "runs" / "t"
    for name in ("experiment.json", "report.md", "results.json", "curves.png", "accuracy.png"):
        assert (run / name).is_file(), name
    for arm in ("ce", "ce+ntl-was"):
        seed = run / arm / "seed0"
        assert (seed / "final" / "model.safetensors").is_file()
        assert (seed / "eval" / "metrics.json").is_file()
        assert json.loads((seed / "train_config.json").read_text())["tokenizer"] == str(
            (run / "tokenizer").resolve())
    table = capsys.readouterr().out
    assert "ce+ntl-was" in table and "| ce |" in table
    info = json.loads((run / "experiment.json").read_text())
    assert info["profile"]["arms"] == ["ce", "ce+ntl-was"] and info["command"] == "ntl experiment"
    assert record["stages"]["data_s"] >= 0

    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("model.safetensors")}
    metrics = (run / "ce" / "seed0" / "eval" / "metrics.json").stat().st_mtime_ns
    run_experiment(override(profile, {"jobs": 1}), "t", command=["ntl", "experiment", "--again"],
                   **kw)  # nothing left to do: skipped
    assert {p: p.stat().st_mtime_ns for p in run.rglob("model.safetensors")} == mtimes
    assert (run / "ce" / "seed0" / "eval" / "metrics.json").stat().st_mtime_ns == metrics
    assert "done, skipped" in capsys.readouterr().out
    # every invocation on the folder is kept and named in the report
    info = json.loads((run / "experiment.json").read_text())
    assert info["commands"] == ["ntl experiment", "ntl experiment --again"]
    assert ("Experiment commands: `ntl experiment`; then `ntl experiment --again`"
            in (run / "report.md").read_text())

    with pytest.raises(ValueError, match="different profile"):
        run_experiment(override(profile, {"lr": 0.5}), "t", **kw)


def test_experiment_cli_help():
    out = subprocess.run([sys.executable, "-m", "ntl.cli", "experiment", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--profile", "--name", "--arms", "--seeds", "--set", "quick", "paper"):
        assert option in out


def test_arms_by_commas_or_spaces_and_clear_errors(tmp_path):
    from ntl.lab.experiment import add_arguments, profile_from_args

    def arms_of(*given: str) -> tuple[str, ...]:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return profile_from_args(parser.parse_args(["--arms", *given])).arms

    assert arms_of("ce,ce+ntl-was,ce+ntl-mse", "xval", "rt,rt+ntl,regression-head") == (
        "ce", "ce+ntl-was", "ce+ntl-mse", "xval", "rt", "rt+ntl", "regression-head")
    assert arms_of("ce:multidigit, ce:decoder,") == ("ce:multidigit", "ce:decoder")
    with pytest.raises(ValueError, match="ce more than once"):
        arms_of("ce,ce+ntl-was", "ce")
    with pytest.raises(ValueError, match="seeds names 1 more than once"):
        resolve("quick", ["seeds=0,1,1"])
    for bad, named in ((["--arms", "ce,ce+ntl-wass"], "ntl-wass"), (["--set", "max_stepz=3"], "max_stepz")):
        proc = subprocess.run([sys.executable, "-m", "ntl.cli", "experiment", *bad,
                               "--runs-root", str(tmp_path)], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("ntl experiment:") and named in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started


def test_experiment_runs_every_kind_of_arm(tmp_path, capsys):
    """The paper's comparison table: token arms, the tokenizer ablation, decoder-only and the
    encoding baselines run on the same data and budget and each get one report row."""
    arms = ["ce", "ce+ntl-was:multidigit", "ce:decoder", "xval", "rt+ntl", "regression-head"]
    profile = resolve("quick", {**TINY, "arms": arms, "jobs": 1})
    run_experiment(profile, "all", runs_root=tmp_path / "runs", data_root=tmp_path / "data",
                   progress=False)
    run = tmp_path / "runs" / "all"
    results = json.loads((run / "results.json").read_text())
    text = json.dumps(results)
    for arm in arms:
        assert (run / arm / "seed0" / "eval" / "metrics.json").is_file(), arm
        assert f'"{arm}"' in text, arm
    report = (run / "report.md").read_text()
    for arm in arms:
        assert f"| {arm} |" in report, arm


def test_finetune_trains_each_base_once_and_every_arm_from_it(tmp_path, capsys):
    from safetensors.torch import load_file

    sets = {**TINY, "base_steps": 6, "max_steps": 4, "lr": 1e-4, "arms": ["ce", "ce+ntl-was"],
            "seeds": [0], "jobs": 1}
    profile = resolve("ntl-late", sets)
    kw = dict(runs_root=tmp_path / "runs", data_root=tmp_path / "data", progress=False)
    record = run_experiment(profile, "ft", **kw)
    base = tmp_path / "runs" / "bases"
    (base_seed,) = list(base.glob("*/seed0"))
    assert record["bases"] == {"0": str(base_seed)}
    base_cfg = json.loads((base_seed / "train_config.json").read_text())
    assert base_cfg["lam"] == 0.0 and base_cfg["profile"]["max_steps"] == 6
    assert base_cfg["profile"]["train_slice"] == [0.0, 0.5] and base_cfg["n_train_records"] == 144
    base_weights = base_seed / "final" / "model.safetensors"
    for arm in ("ce", "ce+ntl-was"):
        cfg = json.loads((tmp_path / "runs" / "ft" / arm / "seed0" / "train_config.json").read_text())
        assert cfg["init_from"] == str((base_seed / "final").resolve())
        assert cfg["profile"]["train_slice"] == [0.5, 1.0] and cfg["profile"]["lr"] == 1e-4
    assert load_file(str(base_weights)).keys() == load_file(
        str(tmp_path / "runs" / "ft" / "ce" / "seed0" / "final" / "model.safetensors")).keys()
    out = capsys.readouterr().out
    assert "train base/seed0 (6 steps)" in out and "cannot decide between arms" in out

    # a second experiment sharing the base (another name, a new arm) does not retrain it
    mtime = base_weights.stat().st_mtime_ns
    run_experiment(override(profile, {"arms": ["ce+ntl-mse"]}), "ft2", **kw)
    assert base_weights.stat().st_mtime_ns == mtime and len(list(base.glob("*/seed0"))) == 1
    assert "train base/seed0: done, skipped" in capsys.readouterr().out
    assert (tmp_path / "runs" / "ft2" / "ce+ntl-mse" / "seed0" / "eval" / "metrics.json").is_file()


def test_finetune_refuses_arms_that_cannot_start_from_the_base():
    from ntl.lab.experiment import add_arguments, profile_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="xval.*own model"):
        profile_from_args(parser.parse_args(["--profile", "ntl-late", "--arms", "ce,xval"]))


def test_console_names_every_run_and_prints_no_raw_logs(tmp_path):
    """`ntl experiment` output: lines that name arm and seed, a summary table, no Trainer dicts or
    progress bars; each run's full log in its train.log."""
    sets = {**TINY, "arms": "ce,ce+ntl-was", "jobs": 1}
    cmd = [sys.executable, "-m", "ntl.cli", "experiment", "--name", "c", "--no-progress",
           "--runs-root", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")]
    cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for arm in ("ce", "ce+ntl-was"):
        assert f"{arm}/seed0" in out and f"train {arm}/seed0: done" in out
        log = (tmp_path / "runs" / "c" / arm / "seed0" / "train.log").read_text().splitlines()
        assert log[0].startswith(f"# {arm}/seed0") and json.loads(log[1])["step"] == 3
    assert "ntl experiment: runs" in out and "valid paper acc" in out  # the summary table
    assert "{'loss'" not in out and "{'train_runtime'" not in out
    assert "Writing model shards" not in proc.stdout + proc.stderr
    assert "cannot decide between arms" in out  # one seed: the warning


def test_pretrained_base_learns_other_modules_and_arms_train_the_whole_task(tmp_path):
    """The pretrained regime: the base trains on its own modules only, every arm trains the full
    budget on all of the target data (from the base, or from scratch with ``:scratch``), the
    tokenizer covers both data sets, and checkpoints before the end are evaluated too."""
    sets = {**TINY, "base_steps": 4, "max_steps": 6, "save_steps": 3, "save_total_limit": "none",
            "arms": ["ce", "ce+ntl-was", "ce:scratch"], "seeds": [0], "jobs": 1,
            "curve_splits": ["valid"], "eval_splits": ["valid"],
            "base_modules": ["numbers__place_value"], "modules": ["arithmetic__add_or_sub"]}
    profile = resolve("pretrained", sets)
    kw = dict(runs_root=tmp_path / "runs", data_root=tmp_path / "data", progress=False)
    record = run_experiment(profile, "pre", **kw)
    (base_seed,) = list((tmp_path / "runs" / "bases").glob("*/seed0"))
    base_cfg = json.loads((base_seed / "train_config.json").read_text())
    base_train = base_cfg["data"]["train"]
    assert base_train == str(Path(record["base_data"]["train"]).resolve())
    assert {r["module"] for r in map(json.loads, open(base_train))} == {"numbers__place_value"}
    assert base_cfg["profile"]["max_steps"] == 4 and base_cfg["n_train_records"] == 96
    run = tmp_path / "runs" / "pre"
    from ntl.lab.tokenization import load_prepared_tokenizer

    recipe = json.loads((run / "tokenizer" / "ntl_tokenizer.json").read_text())["recipe"]
    assert recipe["data"].split("+") == [Path(record["data"]["train"]).parent.name,
                                         Path(base_train).parent.name]  # built from both
    tok = load_prepared_tokenizer(run / "tokenizer")
    for path in (base_train, record["data"]["train"]):  # the base's questions and the target's
        questions = [json.loads(line)["question"] for line in open(path)]
        ids = tok(questions)["input_ids"]
        assert all(tok.unk_token_id not in row for row in ids), path
    for arm, from_base in (("ce", True), ("ce+ntl-was", True), ("ce:scratch", False)):
        seed_dir = run / arm / "seed0"
        cfg = json.loads((seed_dir / "train_config.json").read_text())
        assert (cfg["init_from"] is not None) == from_base, arm
        assert cfg["profile"]["max_steps"] == 6 and cfg["profile"]["train_slice"] == [0.0, 1.0], arm
        assert cfg["n_train_records"] == 96, arm  # all of the target's training examples
        assert (seed_dir / "eval-checkpoint-3" / "valid.jsonl").is_file(), arm  # along training
        assert not (seed_dir / "eval-checkpoint-6").exists(), arm  # the end is eval/
    report = (run / "report.md").read_text()
    assert "## Along training" in report and "EM @ 3" in report and "EM @ end" in report
    assert "| ce+ntl-was@0.3:scratch" not in report
    assert "| ce+ntl-was | ce | 1 |" in report  # paired with CE, every question counted
