"""A truncated or corrupt file the lab reads back gives one clear error naming the file and the
fix, and nothing else in the run folder is touched."""

from __future__ import annotations

import argparse
import json
import random
import shutil
from pathlib import Path

import pytest

from ntl.lab.config import resolve
from ntl.lab.file_checks import CorruptFileError, check_safetensors
from ntl.lab.train import train_arm

TINY = {"model": "t5-micro", "batch_size": 8, "lr": 1e-2, "warmup_steps": 0, "logging_steps": 2,
        "threads": 1, "max_steps": 4, "save_steps": 2, "save_total_limit": None,
        "eval_batch_size": 8, "max_new_tokens": 4, "n_boot": 0}


def _write(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            f.write(json.dumps({"module": "add", "question": f"What is {a} + {b}?",
                                "answer": str(a + b), "split": path.stem}) + "\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    _write(d / "train.jsonl", 64, 0)
    _write(d / "valid.jsonl", 8, 1)
    return d


def _paths(d: Path) -> dict[str, Path]:
    return {p.stem: p for p in d.glob("*.jsonl")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir) -> Path:
    """A finished tiny run with checkpoint-2 and checkpoint-4."""
    out = tmp_path_factory.mktemp("run") / "ce" / "seed0"
    train_arm(resolve("quick", TINY), "ce", 0, out, data_paths=_paths(data_dir), progress=False)
    return out


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _killed_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the run as a kill after its last checkpoint leaves it (no final/)."""
    run = tmp_path / "ce" / "seed0"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "final")
    (run / "train_summary.json").unlink()
    return run


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------------- data files
def test_truncated_data_file(tmp_path, data_dir):
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    text = (d / "train.jsonl").read_text()
    (d / "train.jsonl").write_text(text[: len(text) // 2 + 7])  # cut inside a line
    out = tmp_path / "runs" / "ce" / "seed0"
    with pytest.raises(CorruptFileError, match="train.jsonl is truncated.*regenerate"):
        train_arm(resolve("quick", TINY), "ce", 0, out, data_paths=_paths(d), progress=False)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_corrupt_line_and_short_split_of_a_data_cache(tmp_path):
    from ntl.lab.data.mathematics import load_split

    path = tmp_path / "train.jsonl"
    _write(path, 6, 0)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + '{"module": "add", "quest\n' + "".join(lines[4:]))
    with pytest.raises(CorruptFileError, match=r"train.jsonl: line 4 is not valid JSON.*regenerate"):
        load_split(path)
    # cut at a line boundary: only the cache's spec.json can tell
    path.write_text("".join(lines[:4]))
    (tmp_path / "spec.json").write_text(json.dumps({"counts": {"train": {"add": 6}}}))
    with pytest.raises(CorruptFileError, match="holds 4 examples but its spec.json says 6"):
        load_split(path)


# ---------------------------------------------------------------------- weights and checkpoints
def test_truncated_checkpoint_weights(tmp_path, trained, data_dir):
    run = _killed_copy(trained, tmp_path)
    _truncate(run / "checkpoint-4" / "model.safetensors")
    before = _snapshot(run)
    with pytest.raises(CorruptFileError) as err:
        train_arm(resolve("quick", TINY), "ce", 0, run, data_paths=_paths(data_dir), resume=True,
                  progress=False)
    message = str(err.value)
    assert "checkpoint-4/model.safetensors is truncated" in message
    assert "--resume to continue from checkpoint-2" in message and "--overwrite" in message
    assert _snapshot(run) == before


def test_checkpoint_without_trainer_state(tmp_path, trained, data_dir):
    run = _killed_copy(trained, tmp_path)
    (run / "checkpoint-4" / "trainer_state.json").unlink()  # a save interrupted by a kill
    before = _snapshot(run)
    with pytest.raises(CorruptFileError,
                       match=r"checkpoint-4/trainer_state.json is missing.*continue from checkpoint-2"):
        train_arm(resolve("quick", TINY), "ce", 0, run, data_paths=_paths(data_dir), resume=True,
                  progress=False)
    assert _snapshot(run) == before
    # the fix works: without the interrupted checkpoint, --resume continues from checkpoint-2
    shutil.rmtree(run / "checkpoint-4")
    summary = train_arm(resolve("quick", TINY), "ce", 0, run, data_paths=_paths(data_dir),
                        resume=True, progress=False)
    assert summary["resumed_from"] == "checkpoint-2" and summary["global_step"] == 4


def test_truncated_final_weights(tmp_path, trained):
    from ntl.lab.evaluate import evaluate_run

    run = tmp_path / "ce" / "seed0"
    shutil.copytree(trained, run)
    _truncate(run / "final" / "model.safetensors", 0.9)
    before = _snapshot(run)
    with pytest.raises(CorruptFileError, match=r"final/model.safetensors is truncated.*--resume"):
        evaluate_run(run, progress=False)
    assert _snapshot(run) == before


def test_safetensors_check_reads_the_header_only(tmp_path, trained):
    good = trained / "final" / "model.safetensors"
    check_safetensors(good, "fix")
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 3)
    with pytest.raises(CorruptFileError, match="not a readable safetensors file"):
        check_safetensors(bad, "fix")
    bad.write_bytes(good.read_bytes() + b"extra")
    with pytest.raises(CorruptFileError, match="the file has"):
        check_safetensors(bad, "fix")


# ---------------------------------------------------------------------- experiment.json
def _experiment_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    from ntl.lab.experiment import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--name", "x", "--runs-root", str(tmp_path / "runs"),
                              "--data-root", str(tmp_path / "data"), *extra])


def test_experiment_json_from_another_profile(tmp_path, capsys):
    from ntl.lab.experiment import run

    run_dir = tmp_path / "runs" / "x"
    (run_dir / "ce" / "seed0").mkdir(parents=True)
    (run_dir / "ce" / "seed0" / "train_summary.json").write_text("{}\n")
    other = resolve("small", {}).to_dict()
    (run_dir / "experiment.json").write_text(json.dumps({"profile": other}) + "\n")
    before = _snapshot(run_dir)
    assert run(_experiment_args(tmp_path, "--profile", "quick")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "experiment.json is from an experiment with a different profile" in err
    assert "--overwrite" in err and "max_steps" in err
    assert _snapshot(run_dir) == before and not (tmp_path / "data").exists()

    (run_dir / "experiment.json").write_text('{"profile": {"name": "qu')  # truncated
    assert run(_experiment_args(tmp_path, "--profile", "quick")) == 2
    err = capsys.readouterr().err
    assert "experiment.json is not valid JSON" in err and "--overwrite" in err
