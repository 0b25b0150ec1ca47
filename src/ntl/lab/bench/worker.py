"""Run one benchmark job in a fresh interpreter: ``python -m ntl.lab.bench KIND`` with its config
as JSON on stdin and its result as JSON on the last line of stdout (a clean allocator per job,
so peak memory is exact, and a crash or a hang stays in that process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


class WorkerFailed(RuntimeError):
    """A worker exited with an error; the message holds the end of its stderr."""


def spawn(kind: str, config: dict[str, Any], omp_wait: str = "inherit",
          timeout: float | None = None) -> dict[str, Any]:
    """Run the ``kind`` worker (see ``ntl.lab.bench.__main__``) on ``config``; its result.

    Args:
        kind: ``loss``, ``train``, ``linear-memory`` or ``logits-free-step``.
        config: the job's settings (JSON-serializable).
        omp_wait: ``OMP_WAIT_POLICY`` of the worker (``passive``, ``active``), or ``inherit``.
        timeout: seconds before the worker is killed (`subprocess.TimeoutExpired`); None waits.

    Raises:
        WorkerFailed: the worker exited with an error (the message ends with its stderr).
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONUNBUFFERED="1")
    if omp_wait != "inherit":
        env["OMP_WAIT_POLICY"] = omp_wait.upper()
    src = str(Path(__file__).resolve().parents[3])  # the folder holding the ntl package
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "ntl.lab.bench", kind], input=json.dumps(config),
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise WorkerFailed(f"ntl bench worker ({kind}) failed on {config}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
