"""The loss benchmark: forward+backward of every loss path at one (shape, dtype, number fraction),
as ratios to cross-entropy measured in the same run (the ``loss`` worker)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from ntl.lab.bench import external
from ntl.lab.bench.inputs import LAM, ntloss_loss, plain_ce_ntl, random_labels, tokenizer_and_vocab
from ntl.lab.bench.measure import Memory, ratios, time_interleaved
from ntl.lab.bench.shapes import Shape, torch_dtype

FUSED_CASES = ("ce", "plain-was", "plain-mse", "fused-was", "fused-mse", "fused-was-rw",
               "ntloss-rw", "ntloss")
LINEAR_CASES = ("lin-ce", "lin-plain-was", "lin-fused-was", "linear-was")
BASES = {"logits": "ce", "linear": "lin-ce"}
"""Group -> the case its ratios are to."""


def run_loss_cases(config: dict[str, Any]) -> dict[str, Any]:
    """Benchmark every case at one (shape, dtype, fraction); runs inside a worker process.

    ``config``: ``shape`` (a `Shape` as a dict), ``dtype``, ``fraction``, ``device``,
    ``repeats``, ``warmup``, ``threads``, ``ntloss`` (add the ntloss cases), ``hidden_dim``
    (d of the logits-free group; 0 skips it) and ``external`` (add Liger's and Cut
    Cross-Entropy's CE cases where they can run; ``skipped`` lists the others with the reason).

    Returns:
        ``{"config", "cases": {name: {"group", "time_s", "times_s", "time_ratio",
        "peak_bytes", "mem_ratio", "loss"}}, "skipped", "logits_bytes"}``.
    """
    import torch
    import torch.nn.functional as F

    from ntl.losses import fused, linear
    from ntl.losses.functional import cross_entropy

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    shape = Shape(**config["shape"])
    device = config["device"]
    dtype = torch_dtype(config["dtype"])
    g = torch.Generator().manual_seed(0)
    tok, vocab = tokenizer_and_vocab(shape)
    n, v = shape.batch * shape.seq, shape.vocab
    labels = random_labels(vocab, n, config["fraction"], g).reshape(shape.batch, shape.seq)
    labels = labels.to(device)
    logits = torch.randn(shape.batch, shape.seq, v, generator=g).to(device=device, dtype=dtype)
    logits.requires_grad_(True)
    table = vocab.table(device)  # built once, outside the timed calls
    values: dict[str, Any] = {}  # each case's last loss (a detached scalar: no sync when timed)

    modules = {name: plain_ce_ntl(table, name) for name in ("was", "mse")}

    def fwd_bwd(name: str, loss_fn: Callable[[], torch.Tensor], *leaves: torch.Tensor
                ) -> Callable[[], None]:
        def run() -> None:
            loss = loss_fn()
            loss.backward()
            values.setdefault(name, loss.detach())
            for leaf in leaves:
                leaf.grad = None

        return run

    losses: dict[str, Callable[[], torch.Tensor]] = {
        "ce": lambda: cross_entropy(logits, labels),
        "plain-was": lambda: modules["was"](logits, labels).total,
        "plain-mse": lambda: modules["mse"](logits, labels).total,
        "fused-was": lambda: fused.cross_entropy_with_ntl(
            logits, labels, table, ntl="was", lam=LAM).total,
        "fused-mse": lambda: fused.cross_entropy_with_ntl(
            logits, labels, table, ntl="mse", lam=LAM).total,
        "fused-was-rw": lambda: fused.cross_entropy_with_ntl(
            logits, labels, table, ntl="was", lam=LAM, reweigh=True).total,
    }
    cases = {name: fwd_bwd(name, fn, logits) for name, fn in losses.items()}
    if config.get("ntloss", True):
        ntl_rw, ntl_plain = ntloss_loss(tok, shape, True), ntloss_loss(tok, shape, False)
        cases["ntloss-rw"] = fwd_bwd(
            "ntloss-rw", lambda: cross_entropy(logits, labels) + LAM * ntl_rw(logits, labels),
            logits)
        cases["ntloss"] = fwd_bwd(
            "ntloss", lambda: cross_entropy(logits, labels) + LAM * ntl_plain(logits, labels),
            logits)
    skipped: dict[str, str] = {}
    if config.get("external"):
        more, why = external.logits_cases(logits, labels, device)
        cases.update({name: fwd_bwd(name, fn, *leaves) for name, (fn, leaves) in more.items()})
        skipped.update(why)
    groups = {"logits": cases}

    d = int(config.get("hidden_dim") or 0)
    if d > 0:
        hidden = (torch.randn(n, d, generator=g) / d**0.25).to(device=device, dtype=dtype)
        weight = (torch.randn(v, d, generator=g) / d**0.25).to(device=device, dtype=dtype)
        hidden.requires_grad_(True)
        weight.requires_grad_(True)
        flat = labels.reshape(-1)
        from_hidden: dict[str, Callable[[], torch.Tensor]] = {
            "lin-ce": lambda: F.cross_entropy((hidden @ weight.t()).float(), flat),
            "lin-plain-was": lambda: modules["was"](hidden @ weight.t(), flat).total,
            "lin-fused-was": lambda: fused.cross_entropy_with_ntl(
                hidden @ weight.t(), flat, table, lam=LAM).total,
            "linear-was": lambda: linear.linear_cross_entropy_with_ntl(
                hidden, weight, flat, table, lam=LAM).total,
        }
        groups["linear"] = {name: fwd_bwd(name, fn, hidden, weight)
                            for name, fn in from_hidden.items()}
        if config.get("external"):
            more, why = external.linear_cases(hidden, weight, flat, device)
            groups["linear"].update({name: fwd_bwd(name, fn, *leaves)
                                     for name, (fn, leaves) in more.items()})
            skipped.update(why)

    memory = Memory(device)
    result: dict[str, Any] = {"config": config, "cases": {}, "skipped": skipped}
    for group, group_cases in groups.items():
        times = time_interleaved(group_cases, config["repeats"], config["warmup"], device)
        base = BASES[group]
        ratio = ratios(times, base)
        peaks = {name: memory.measure(fn) for name, fn in group_cases.items()}
        for name in group_cases:
            result["cases"][name] = {
                "group": group,
                "time_s": statistics.median(times[name]),
                "times_s": times[name],
                "time_ratio": ratio[name],
                "peak_bytes": peaks[name],
                "mem_ratio": (peaks[name] / peaks[base]
                              if peaks[name] is not None and peaks[base] else None),
                "loss": float(values[name]) if name in values else None,
            }
    if "linear" in groups:  # the logits-free path against the materialized CE+NTL paths
        c = result["cases"]
        lin_times = {k: c[k]["times_s"] for k in groups["linear"]}
        for ref in ("lin-plain-was", "lin-fused-was"):
            r = ratios(lin_times, ref)["linear-was"]
            mem = c[ref]["peak_bytes"]
            c["linear-was"][f"time_vs_{ref}"] = r
            c["linear-was"][f"mem_vs_{ref}"] = (c["linear-was"]["peak_bytes"] / mem
                                                if mem and c["linear-was"]["peak_bytes"]
                                                is not None else None)
    result["logits_bytes"] = logits.numel() * logits.element_size()
    return result
