"""``python -m ntl.lab.bench KIND``: one benchmark worker (``loss``, ``train``,
``linear-memory``, ``logits-free-step``) with its config as JSON on stdin and its result as JSON
on stdout; `ntl.lab.bench.worker.spawn` starts it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from ntl.lab.bench.linear_memory import run_linear_memory
from ntl.lab.bench.logits_free_step import run_logits_free_step
from ntl.lab.bench.loss_cases import run_loss_cases
from ntl.lab.bench.train_step import run_train_step

WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "loss": run_loss_cases,
    "train": run_train_step,
    "linear-memory": run_linear_memory,
    "logits-free-step": run_logits_free_step,
}


def main(argv: list[str]) -> int:
    """Run the worker ``argv[0]`` on the JSON config read from stdin; print its JSON result."""
    kind = argv[0] if argv else ""
    if kind not in WORKERS:
        print(f"usage: python -m ntl.lab.bench {'|'.join(WORKERS)} < config.json (got {argv})",
              file=sys.stderr)
        return 2
    print(json.dumps(WORKERS[kind](json.loads(sys.stdin.read()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
