"""`ntl train`: arms, a tiny run per arm whose loss falls, and SIGKILL + --resume reproducing an
uninterrupted run's final weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ntl.lab.config import resolve
from ntl.lab.train import is_trained, last_checkpoint, parse_arm, train_arm

REPO = Path(__file__).resolve().parents[1]


def _records(n: int, seed: int, split: str) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        out.append({"module": "arithmetic__add_or_sub", "question": f"What is {a} + {b}?",
                    "answer": str(a + b), "split": split})
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    for i, (split, n) in enumerate({"train": 256, "valid": 24, "interpolate": 24,
                                     "extrapolate": 24}.items()):
        with (d / f"{split}.jsonl").open("w") as f:
            for r in _records(n, i, split):
                f.write(json.dumps(r) + "\n")
    return d


def _paths(data_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in data_dir.glob("*.jsonl")}


TINY = {
    "model": "t5-micro",
    "batch_size": 16,
    "lr": 1e-2,
    "warmup_steps": 0,
    "logging_steps": 5,
    "threads": 1,
}


def test_parse_arm():
    assert parse_arm("ce") == parse_arm("ce", 0.8)
    assert parse_arm("ce").lam == 0.0 and parse_arm("ce").ntl == "was"
    arm = parse_arm("ce+ntl-mse", 0.3)
    assert (arm.ntl, arm.lam) == ("mse", 0.3)
    assert parse_arm("ce+ntl-was@0.8").lam == 0.8
    assert parse_arm("ce+ntl-number-level").ntl == "number-level"
    for bad in ("ntl-was", "ce+ntl-nope", "ce@0.3", "ce+ntl-was@-1", "ce+ntl-was0.5", "ce+ntl-was-soft0"):
        with pytest.raises(ValueError):
            parse_arm(bad)
    soft = parse_arm("ce+ntl-was-soft@0.3")
    assert (soft.ntl, soft.lam, dict(soft.options)) == ("was-soft", 0.3, {"sigma": 0.5})
    assert dict(parse_arm("ce+ntl-was-soft1.5@0.1").options) == {"sigma": 1.5}
    assert parse_arm("ce+ntl-was:alltokens").variant == "alltokens"


@pytest.mark.parametrize("arm", ["ce", "ce+ntl-was", "ce+ntl-mse"])
def test_tiny_run_loss_falls(tmp_path, data_dir, arm):
    profile = resolve("quick", {**TINY, "max_steps": 40, "save_steps": 20})
    out = tmp_path / arm / "seed0"
    summary = train_arm(profile, arm, 0, out, data_paths=_paths(data_dir), progress=False)
    assert summary["global_step"] == 40 and is_trained(out)
    history = json.loads((out / "log_history.json").read_text())
    assert [h["step"] for h in history] == list(range(5, 41, 5))
    first, last = history[0], history[-1]
    assert last["loss"] < 0.8 * first["loss"]
    lam = parse_arm(arm).lam
    for h in history:
        assert h["loss"] == pytest.approx(h["ce"] + lam * h["ntl"], rel=1e-4)
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["arm"] == arm and cfg["lam"] == lam and cfg["causal"] is False
    assert cfg["number_tokens"] and cfg["model_vocab_size"] % 8 == 0
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoint-20" / "model.safetensors").is_file()
    # a finished run is not retrained
    again = train_arm(profile, arm, 0, out, data_paths=_paths(data_dir), progress=False)
    assert again == summary


def test_same_seed_same_order_and_init_across_arms(tmp_path, data_dir):
    """Arms differ only in the loss: with lam -> 0 an NTL arm reproduces the CE arm exactly."""
    profile = resolve("quick", {**TINY, "max_steps": 6, "save_steps": 100})
    a = train_arm(profile, "ce", 3, tmp_path / "a", data_paths=_paths(data_dir), progress=False)
    b = train_arm(profile, "ce+ntl-mse@0", 3, tmp_path / "b", data_paths=_paths(data_dir),
                  progress=False)
    assert a["final_log"]["ce"] == b["final_log"]["ce"]


def test_checkpoints_refuse_without_resume(tmp_path, data_dir):
    profile = resolve("quick", {**TINY, "max_steps": 4, "save_steps": 2})
    out = tmp_path / "run"
    train_arm(profile, "ce", 0, out, data_paths=_paths(data_dir), progress=False)
    (out / "train_summary.json").unlink()  # pretend it was killed after its checkpoints
    with pytest.raises(FileExistsError, match="--resume"):
        train_arm(profile, "ce", 0, out, data_paths=_paths(data_dir), progress=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _kill_after_first_checkpoint(cmd: list[str], cwd: Path, out: Path) -> None:
    """Run ``cmd`` and SIGKILL it as soon as ``out`` holds a complete checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if last_checkpoint(out) is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


KILL_CASES = {  # arm, steps, whether it fine-tunes a CE base
    "from-scratch": ("ce+ntl-was", 150, False),
    "fine-tune": ("ce+ntl-was", 150, True),
    "baseline-xval": ("xval", 40, False),
}


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_sigkill_then_resume_gives_same_final_weights(tmp_path, data_dir, case):
    """A run killed by SIGKILL and continued with --resume ends with the weights of an
    uninterrupted run, for a token arm, a fine-tune and a baseline alike (one training path)."""
    arm, max_steps, from_base = KILL_CASES[case]
    sets = {**TINY, "max_steps": max_steps, "save_steps": 10, "dropout": 0.1, "save_total_limit": 3}
    set_args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    init_from = None
    if from_base:  # a fine-tune of a CE base, as in the finetune profile
        base = tmp_path / "base"
        train_arm(resolve("quick", {**TINY, "max_steps": 10}), "ce", 1, base,
                  data_paths=_paths(data_dir), progress=False)
        init_from = base / "final"
        set_args += ["--init-from", str(init_from)]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ntl.cli", "train", "--out", str(killed), "--arm", arm,
           "--seed", "1", "--data-dir", str(data_dir), "--no-progress", *set_args]
    _kill_after_first_checkpoint(cmd, tmp_path, killed)
    ckpt = last_checkpoint(killed)
    assert ckpt is not None and not (killed / "final").exists()
    step = int(ckpt.name.split("-")[1])
    assert step < max_steps

    profile = resolve("quick", sets)
    paths = _paths(data_dir)
    resumed = train_arm(profile, arm, 1, killed, data_paths=paths, resume=True,
                        progress=False, init_from=init_from)
    assert resumed["resumed_from"] is not None and resumed["global_step"] == max_steps
    straight = tmp_path / "straight"
    train_arm(profile, arm, 1, straight, data_paths=paths, progress=False, init_from=init_from)
    if from_base:
        cfg = json.loads((straight / "train_config.json").read_text())
        assert cfg["init_from"] == str(init_from.resolve())
        start = _weights(init_from)
        assert not all(torch.equal(start[k], v) for k, v in _weights(straight / "final").items())
    a, b = _weights(killed / "final"), _weights(straight / "final")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the resumed run's log history continues the killed one's
    history = json.loads((killed / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(5, max_steps + 1, 5))
    assert history == json.loads((straight / "log_history.json").read_text())


def test_fine_tune_starts_from_the_base_weights(tmp_path, data_dir):
    """With init_from, step 0 is the base model (not the seed's random init), the NTL softmax
    holds only label tokens, and the soft-target arm trains."""
    paths = _paths(data_dir)
    base = tmp_path / "base"
    train_arm(resolve("quick", {**TINY, "max_steps": 5}), "ce", 0, base, data_paths=paths, progress=False)
    out = tmp_path / "ft"
    profile = resolve("quick", {**TINY, "max_steps": 3, "lr": 1e-12, "weight_decay": 0.0})
    train_arm(profile, "ce+ntl-was-soft0.25@0.3", 0, out, data_paths=paths, progress=False,
              init_from=base / "final")
    a, b = _weights(base / "final"), _weights(out / "final")
    for name in a:  # lr ~ 0: the fine-tuned weights are still the base's
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["ntl"] == "was-soft" and cfg["ntl_options"] == {"sigma": 0.25}
    assert sorted(cfg["number_tokens"]) == [str(d) for d in range(10)]  # no '▁7': labels hold bare digits
    alltokens = tmp_path / "all"
    train_arm(profile, "ce:alltokens", 0, alltokens, data_paths=paths, progress=False)
    assert len(json.loads((alltokens / "train_config.json").read_text())["number_tokens"]) > 10


def test_train_cli_help():
    out = subprocess.run([sys.executable, "-m", "ntl.cli", "train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for option in ("--arm", "--resume", "--set", "--profile", "--tokenizer", "--max-steps"):
        assert option in out


def test_parse_arm_variants():
    arm = parse_arm("ce+ntl-was@0.5:multidigit")
    assert (arm.ntl, arm.lam, arm.variant) == ("was", 0.5, "multidigit")
    assert parse_arm("ce:decoder").variant == "decoder"
    with pytest.raises(ValueError, match="'sideways'"):
        parse_arm("ce:sideways")


@pytest.mark.parametrize("arm", ["ce+ntl-was:multidigit", "ce+ntl-was:decoder"])
def test_variant_arms_train_and_evaluate(tmp_path, data_dir, arm):
    from ntl.lab.evaluate import evaluate_run

    profile = resolve("quick", {**TINY, "max_steps": 30, "save_steps": 30})
    out = tmp_path / arm / "seed0"
    summary = train_arm(profile, arm, 0, out, data_paths=_paths(data_dir), progress=False)
    history = json.loads((out / "log_history.json").read_text())
    assert summary["global_step"] == 30 and history[-1]["loss"] < history[0]["loss"]
    cfg = json.loads((out / "train_config.json").read_text())
    if arm.endswith("multidigit"):
        # the base T5 tokenizer's multi-digit pieces are number tokens (numbers mode)
        assert cfg["number_mode"] == "numbers" and cfg["profile"]["split_digits"] is False
        assert any(len(t.lstrip("▁")) > 1 for t in cfg["number_tokens"])
    else:
        assert cfg["causal"] is True and cfg["model"] == "llama-micro"
    metrics = evaluate_run(out, splits=["valid"], progress=False)
    assert 0.0 <= metrics["valid"]["overall"]["exact_match"]["value"] <= 1.0
