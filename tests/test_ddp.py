"""CE + NTL under DDP (2 processes, gloo, CPU) equals one process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ddp_worker  # noqa: E402


def test_ddp_two_processes_match_single_process(tmp_path):
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
           str(HERE / "ddp_worker.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ddp_worker.train(tmp_path)  # the single-process reference, plain loss path
    ddp = torch.load(tmp_path / "result_2.pt")
    single = torch.load(tmp_path / "result_1.pt")
    torch.testing.assert_close(torch.tensor(ddp["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-5, atol=1e-6)
    assert single["losses"][0] != single["losses"][-1]  # the steps did train
    for name, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-5, atol=1e-6, msg=name)
