"""The logits-free memory check: peak memory of CE + 0.3·NTL-WAS from hidden states, materialized
(``h @ W.T``, then the fused loss) against `ntl.losses.linear.linear_cross_entropy_with_ntl`, each
in a fresh process (the ``linear-memory`` worker)."""

from __future__ import annotations

import time
from typing import Any

from ntl.lab.bench.inputs import LAM, digit_vocab, random_labels
from ntl.lab.bench.measure import Memory
from ntl.lab.bench.worker import spawn

LINEAR_MEMORY = {"batch": 4, "seq": 1024, "vocab": 128256, "hidden_dim": 256, "fraction": 0.3}
"""The logits-free memory check: (B, T, V) = (4, 1024, 128256), d = 256, 30% number labels."""


def run_linear_memory(config: dict[str, Any]) -> dict[str, Any]:
    """Peak memory added by one forward+backward of CE + 0.3·NTL-WAS from hidden states.

    ``config["path"]``: ``"linear"`` (`linear.linear_cross_entropy_with_ntl` with
    ``chunk_size``) or ``"materialized"`` (``h @ W.T``, then `fused.cross_entropy_with_ntl`).
    Hidden (N, d) and weight (V, d) are ``randn`` (times ``scale``): large logits, so most
    rows have a CE above 69 nats and take the exact-CE fix-up.
    """
    import torch

    from ntl.losses import fused, linear

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    n, v, d = config["batch"] * config["seq"], config["vocab"], config["hidden_dim"]
    vocab = digit_vocab(v)
    table = vocab.table()
    g = torch.Generator().manual_seed(0)
    labels = random_labels(vocab, n, config["fraction"], g)
    scale = float(config.get("scale", 1.0))
    hidden = (scale * torch.randn(n, d, generator=g)).requires_grad_(True)
    weight = torch.randn(v, d, generator=g).requires_grad_(True)
    result: dict[str, Any] = {"config": config, "logits_bytes": n * v * 4}

    def run(rows: int = n) -> None:
        h, y = hidden[:rows], labels[:rows]
        if config["path"] == "linear":
            out = linear.linear_cross_entropy_with_ntl(h, weight, y, table, lam=LAM,
                                                      chunk_size=config.get("chunk_size"))
        else:
            out = fused.cross_entropy_with_ntl(h @ weight.t(), y, table, lam=LAM)
        out.total.backward()
        result["loss"] = float(out.total)
        hidden.grad = weight.grad = None

    run(64)  # warm-up on a few rows: the kernels' code and thread pools are in memory
    started = time.perf_counter()
    result["peak_bytes"] = Memory("cpu").measure(run)
    result["time_s"] = time.perf_counter() - started
    with torch.no_grad():  # how many rows take the exact-CE fix-up (CE > 69 nats)
        ce = torch.cat([torch.nn.functional.cross_entropy(
            hidden[i:i + 256] @ weight.t(), labels[i:i + 256], reduction="none")
            for i in range(0, n, 256)])
    result["rows_ce_above_69"] = float((ce > 69).float().mean())
    return result


def linear_memory_check(threads: int | None = None, **overrides: Any) -> dict[str, Any]:
    """`run_linear_memory` for the materialized path, the logits-free path with its default
    chunk size and with ``chunk_size=64``, each in a fresh process; ratios to materialized."""
    base = dict(LINEAR_MEMORY, threads=threads, **overrides)
    runs = {"materialized": spawn("linear-memory", dict(base, path="materialized")),
            "linear": spawn("linear-memory", dict(base, path="linear")),
            "linear chunk 64": spawn("linear-memory", dict(base, path="linear", chunk_size=64))}
    ref = runs["materialized"]["peak_bytes"]
    for res in runs.values():
        res["mem_vs_materialized"] = res["peak_bytes"] / ref if ref else None
    return runs
