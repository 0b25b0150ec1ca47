"""CE + NTL under DDP (2 processes, gloo, CPU) equals one process on the same global batch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ddp_trainer_worker  # noqa: E402
import ddp_worker  # noqa: E402


def _torchrun(script: Path, out: Path, timeout: int, *extra: str) -> None:
    """``script --out OUT`` on 2 processes (gloo, CPU, static rendezvous on a free port)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    with socket.socket() as s:  # a free port; static rendezvous on 127.0.0.1
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port),
           str(script), "--out", str(out), *extra]
    # A session of its own, so that a hang kills torchrun *and* its workers (killing torchrun
    # alone leaves the workers waiting on each other forever).
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun {script.name} hung for {timeout} s:\n{stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]


def test_ddp_two_processes_match_single_process(tmp_path):
    _torchrun(HERE / "ddp_worker.py", tmp_path, timeout=240)

    ddp_worker.train(tmp_path)  # the single-process reference, plain loss path
    ddp = torch.load(tmp_path / "result_2.pt")
    single = torch.load(tmp_path / "result_1.pt")
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-5, atol=1e-6)
    assert single["losses"][0] != single["losses"][-1]  # the steps did train
    for name, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_ntl_trainer_ddp_matches_single_process(tmp_path):
    """NTLTrainer under torchrun (2 processes x micro-batches of 2 x 2 accumulated) equals one
    process (micro-batches of 2 x 4 accumulated) on the same global batches of 8."""
    w = ddp_trainer_worker
    # The processes' shares of number targets differ: a per-process NTL denominator would not do.
    from ntl import NumberVocab
    from ntl.lab.data.collate import encode

    tok = w.tokenizer()
    vocab = NumberVocab.from_tokenizer(tok, mode="digits", vocab_size=len(tok))
    feats = encode(w.records(), tok, causal=True)
    numbers = [int(torch.isin(torch.tensor(f["labels"]), vocab.number_ids).sum()) for f in feats]
    shares = [(sum(numbers[8 * k + j] for j in (0, 1, 4, 5)), sum(numbers[8 * k + j] for j in (2, 3, 6, 7)))
              for k in range(w.STEPS)]
    assert any(a != b for a, b in shares) and all(a + b > 0 for a, b in shares)

    _torchrun(HERE / "ddp_trainer_worker.py", tmp_path, timeout=300)
    ddp = torch.load(tmp_path / "trainer_result_2.pt")
    single = w.train(tmp_path)  # the single-process reference
    assert ddp["world"] == 2 and single["world"] == 1
    assert ddp["steps"] == single["steps"] == list(range(1, w.STEPS + 1))
    for key in ("loss", "ce", "ntl"):  # logged per step: global means, as one process logs them
        torch.testing.assert_close(torch.tensor(ddp[key]), torch.tensor(single[key]),
                                   rtol=1e-5, atol=1e-5, msg=key)
    assert single["loss"][0] != single["loss"][-1]  # the steps did train
    for name, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-5, atol=1e-5, msg=name)

    # average_tokens_across_devices=False: per-process denominators (a different objective), but
    # the logged ce and ntl are still the processes' mean and add up to the logged loss.
    local = torch.load(tmp_path / "trainer_result_2_local.pt")
    assert local["loss"] != ddp["loss"]
    for loss, ce, ntl in zip(local["loss"], local["ce"], local["ntl"]):
        assert loss == pytest.approx(ce + w.LAM * ntl, rel=1e-5)


@pytest.mark.slow  # 1-4 min on 2 cores: torchrun plus two single-process references
def test_ntl_trainer_ddp_logits_free_matches_single_process(tmp_path):
    """NTLTrainer(logits_free=True) under torchrun (2 processes, the loss computed inside the
    DDP-wrapped model's forward) equals one process on the same global batches, and equals
    training with materialized logits."""
    w = ddp_trainer_worker
    _torchrun(HERE / "ddp_trainer_worker.py", tmp_path, 300, "--logits-free")
    ddp = torch.load(tmp_path / "trainer_result_2_lf.pt")
    single = w.train(tmp_path, logits_free=True)
    materialized = w.train(tmp_path)
    assert ddp["world"] == 2 and single["world"] == 1
    assert ddp["lm_head_calls"] == single["lm_head_calls"] == 0 < materialized["lm_head_calls"]
    for ref in (single, materialized):
        for key in ("loss", "ce", "ntl"):
            torch.testing.assert_close(torch.tensor(ddp[key]), torch.tensor(ref[key]),
                                       rtol=1e-5, atol=1e-5, msg=key)
        for name, value in ref["state"].items():
            torch.testing.assert_close(ddp["state"][name], value, rtol=1e-5, atol=1e-5, msg=name)
    assert single["loss"][0] != single["loss"][-1]  # the steps did train
