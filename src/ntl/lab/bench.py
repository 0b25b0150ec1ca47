"""Time and peak memory of CE vs CE+NTL (plain, fused, logits-free, ntloss), as ratios to CE.

``ntl bench`` measures forward+backward of every loss path on the same logits in one run and
reports each as a ratio to plain cross-entropy measured in the same run:

- ``ce``: token cross-entropy alone (``ntl.losses.functional.cross_entropy``: float32 math, as
  Hugging Face's loss);
- ``plain-was`` / ``plain-mse``: CE + 0.3·NTL as two independent ops of
  `ntl.losses.functional` (``cross_entropy`` + ``wasserstein``/``expectation``), the unfused
  reference; ``CrossEntropyWithNTL`` itself runs the fused kernel;
- ``fused-was`` / ``fused-mse`` / ``fused-was-rw``: `ntl.losses.fused.cross_entropy_with_ntl`
  (``-rw``: with ``reweigh=True``, to compare with ntloss's default);
- ``ntloss-rw`` / ``ntloss``: CE + 0.3·``ntloss.NTLoss`` (the PyPI package; its default
  ``reweigh=True``, and ``reweigh=False``);
- logits-free group, from hidden states (N, d) and an output weight (V, d):
  ``lin-ce`` (``h @ W.T`` then CE), ``lin-plain-was`` (``h @ W.T`` then the plain CE+NTL),
  ``lin-fused-was`` (``h @ W.T`` then the fused path) and ``linear-was``
  (`ntl.losses.fused.linear_cross_entropy_with_ntl`, never (N, V)); its ratios are to ``lin-ce``.

Each (shape, dtype, number fraction) runs in a fresh worker process. Cases are interleaved
(A B C ... A B C ..., the order rotating every round) and the reported time ratio is the median
over rounds of the per-round ratio to CE, which cancels slow drifts of a shared machine.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the call;
on CPU the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the
resident set before the call, in a worker started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
freed tensors go back to the OS at once. Both count what one forward+backward adds on top of its
inputs (logits / hidden / weight): saved activations, temporaries and the gradient it returns.

A training-step benchmark times a full optimizer step of the quick profile's model (T5,
d_model 128, 3+3 layers, vocab 32100, batch 64, 32 tokens) with CE and with CE+NTL. A second
one runs a Llama-style model at Llama-3's vocabulary (128,256; 2 layers, hidden 256, batch
4 × 1024 tokens): Hugging Face's default CE step, CE+NTL on materialized logits and CE+NTL
logits-free (`ntl.integrations.logits_free`), step time and peak memory added as ratios to the
CE step, and the three losses at the same weights. ``--linear-memory`` adds the memory check
of `ntl.losses.fused.linear_cross_entropy_with_ntl` against the materialized fused path.

Writes ``bench.json`` and ``bench.md`` (a markdown table) into ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LAM = 0.3


@dataclass(frozen=True)
class Shape:
    """A benchmark shape: logits (batch, seq, vocab) and whose number tokens it uses."""

    name: str
    batch: int
    seq: int
    vocab: int
    tokenizer: str | None  # folder under ../shared/tokenizers, or None: synthetic vocabulary
    mode: str = "digits"

    @property
    def label(self) -> str:
        src = self.tokenizer or "synthetic"
        return f"({self.batch}, {self.seq}, {self.vocab}) {src} {self.mode}"


SHAPES: dict[str, Shape] = {
    "llama2": Shape("llama2", 8, 512, 32000, "llama2", "digits"),
    "llama3": Shape("llama3", 4, 1024, 128256, "llama3", "numbers"),
    "ntloss": Shape("ntloss", 16, 1000, 10000, None, "digits"),  # ntloss's own speed test
}
QUICK_SHAPES: dict[str, Shape] = {"tiny": Shape("tiny", 2, 64, 2000, None, "digits")}
DTYPES = ("fp32", "bf16")
FUSED_CASES = ("ce", "plain-was", "plain-mse", "fused-was", "fused-mse", "fused-was-rw",
               "ntloss-rw", "ntloss")
LINEAR_CASES = ("lin-ce", "lin-plain-was", "lin-fused-was", "linear-was")


def _plain_ce_ntl(table: Any, ntl: str) -> Callable[..., Any]:
    """CE + λ·NTL as two independent functional ops (the unfused reference path)."""
    from ntl.losses import functional
    from ntl.losses.modules import LossOutput

    loss_fn = functional.get_loss(ntl)

    def run(logits: Any, labels: Any) -> LossOutput:
        ce = functional.cross_entropy(logits, labels)
        ntl_value = loss_fn(logits, labels, table).float()
        return LossOutput(ce + LAM * ntl_value, ce, ntl_value)

    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntl bench``."""
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES),
                        help=f"shapes to run: names from {sorted(SHAPES)} or B,T,V (synthetic "
                        "vocabulary with 10 digit tokens); 'none' runs only the training step")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=DTYPES,
                        help="logits dtypes")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.3],
                        help="share of labels that are number tokens")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case first")
    parser.add_argument("--hidden-dim", type=int, default=256,
                        help="d of the logits-free group (hidden (N, d), weight (V, d)), run "
                        "at the largest number fraction only (it barely depends on it); 0 skips "
                        "that group")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads in the workers (default: torch's default)")
    parser.add_argument("--train-steps", type=int, default=20,
                        help="timed optimizer steps per arm of the training-step benchmark "
                        "(0 skips it)")
    parser.add_argument("--omp-wait", default="passive", choices=("passive", "active", "inherit"),
                        help="OMP_WAIT_POLICY of the workers. passive: idle OpenMP threads sleep "
                        "instead of spinning, which keeps timings sane when other processes "
                        "share the cores; active: spin (fastest on an idle machine); inherit: "
                        "leave the environment as it is")
    parser.add_argument("--logits-free-steps", type=int, default=2,
                        help="timed optimizer steps per arm of the large-vocabulary training "
                        "step (HF CE vs CE+NTL materialized vs logits-free; about 7 GB of RAM "
                        "at V = 128256); 0 skips it")
    parser.add_argument("--no-ntloss", action="store_true", help="skip the ntloss package cases")
    parser.add_argument("--linear-memory", action="store_true",
                        help="also run the logits-free memory check (materialized vs "
                        "linear_cross_entropy_with_ntl at (4, 1024, 128256), d = 256, about "
                        "7 GB of RAM for the materialized run)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny shapes, fp32, one fraction, 2 rounds, tiny model")
    parser.add_argument("--note", default="",
                        help="free text recorded with the results (e.g. machine load)")
    parser.add_argument("--out", default="runs/bench", help="output folder for bench.json/.md")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# ---------------------------------------------------------------------- helpers
def _parse_shape(text: str, quick: bool) -> Shape:
    table = QUICK_SHAPES if quick else SHAPES
    if text in SHAPES or text in QUICK_SHAPES:
        return {**SHAPES, **QUICK_SHAPES}[text] if text not in table else table[text]
    try:
        b, t, v = (int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        from ntl.errors import UsageError

        raise UsageError(f"--shapes entry {text!r} is neither a name in "
                         f"{sorted(SHAPES)} nor B,T,V") from None
    return Shape(text, b, t, v, None, "digits")


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def machine_info(device: str) -> dict[str, Any]:
    """CPU / GPU model and library versions, for the record."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import ntloss

        info["ntloss"] = ntloss.__version__
    except Exception:  # noqa: BLE001 - optional
        info["ntloss"] = None
    return info


class _Memory:
    """Peak memory added by a call: CUDA allocator stats, or the CPU resident set."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cpu_ok = False
        if device == "cpu":
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.cpu_ok = True
            except OSError:
                self.cpu_ok = False

    @staticmethod
    def _status() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
        return out

    def measure(self, fn: Callable[[], None]) -> int | None:
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - base)
        if not self.cpu_ok:
            return None
        Path("/proc/self/clear_refs").write_text("5")
        base = self._status()["VmRSS"]
        fn()
        return int(self._status()["VmHWM"] - base)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _time_interleaved(cases: dict[str, Callable[[], None]], repeats: int, warmup: int,
                      device: str) -> dict[str, list[float]]:
    """Run every case ``warmup`` times, then ``repeats`` rounds of all cases (rotating order)."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            gc.collect()
            _sync(device)
            t0 = time.perf_counter()
            cases[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def _ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of time(case) / time(base) in the same round."""
    return {name: statistics.median(t / b for t, b in zip(ts, times[base]))
            for name, ts in times.items()}


# ---------------------------------------------------------------------- vocab / labels / ntloss
def _synthetic_tokenizer(vocab_size: int):
    """A Hugging Face fast tokenizer: digits 0..9 at ids 0..9, then ``tok<i>`` words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {str(d): d for d in range(10)}
    words.update({f"tok{i}": i for i in range(10, vocab_size - 1)})
    words["[UNK]"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def _tokenizer_and_vocab(shape: Shape):
    from ntl import NumberVocab
    from ntl.lab.tokenization import load_named_tokenizer

    tok = _synthetic_tokenizer(shape.vocab) if shape.tokenizer is None else load_named_tokenizer(
        shape.tokenizer)
    vocab = NumberVocab.from_tokenizer(tok, mode=shape.mode, vocab_size=shape.vocab)
    return tok, vocab.require_numbers()


def _labels(vocab, n: int, fraction: float, generator) -> Any:
    """(n,) labels: each a random number token with probability ``fraction``, else a random
    non-number token."""
    import torch

    is_num = torch.rand(n, generator=generator) < fraction
    others = torch.nonzero(torch.isnan(vocab.values)).flatten()
    numbers = vocab.number_ids
    labels = others[torch.randint(0, others.numel(), (n,), generator=generator)]
    picks = numbers[torch.randint(0, numbers.numel(), (n,), generator=generator)]
    return torch.where(is_num, picks, labels)


def _ntloss(tok, shape: Shape, reweigh: bool):
    """ntloss.NTLoss on a copy of the tokenizer (digit_level adds digit tokens to it)."""
    import copy

    from ntloss import NTLoss

    return NTLoss(copy.deepcopy(tok), vocab_size=shape.vocab, digit_level=shape.mode == "digits",
                  reweigh=reweigh)


# ---------------------------------------------------------------------- worker: loss cases
def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """Benchmark every case at one (shape, dtype, fraction); runs inside a worker process."""
    import torch
    import torch.nn.functional as F

    from ntl.losses import fused
    from ntl.losses.functional import cross_entropy

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    shape = Shape(**config["shape"])
    device = config["device"]
    dtype = _torch_dtype(config["dtype"])
    g = torch.Generator().manual_seed(0)
    tok, vocab = _tokenizer_and_vocab(shape)
    n, v = shape.batch * shape.seq, shape.vocab
    labels = _labels(vocab, n, config["fraction"], g).reshape(shape.batch, shape.seq).to(device)
    logits = torch.randn(shape.batch, shape.seq, v, generator=g).to(device=device, dtype=dtype)
    logits.requires_grad_(True)
    table = vocab.table(device)  # built once, outside the timed calls

    modules = {name: _plain_ce_ntl(table, name) for name in ("was", "mse")}

    def fwd_bwd(loss_fn: Callable[[], torch.Tensor], *leaves: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            loss = loss_fn()
            loss.backward()
            for leaf in leaves:
                leaf.grad = None

        return run

    cases: dict[str, Callable[[], None]] = {
        "ce": fwd_bwd(lambda: cross_entropy(logits, labels), logits),
        "plain-was": fwd_bwd(lambda: modules["was"](logits, labels).total, logits),
        "plain-mse": fwd_bwd(lambda: modules["mse"](logits, labels).total, logits),
        "fused-was": fwd_bwd(lambda: fused.cross_entropy_with_ntl(
            logits, labels, table, ntl="was", lam=LAM).total, logits),
        "fused-mse": fwd_bwd(lambda: fused.cross_entropy_with_ntl(
            logits, labels, table, ntl="mse", lam=LAM).total, logits),
        "fused-was-rw": fwd_bwd(lambda: fused.cross_entropy_with_ntl(
            logits, labels, table, ntl="was", lam=LAM, reweigh=True).total, logits),
    }
    if config.get("ntloss", True):
        ntl_rw, ntl_plain = _ntloss(tok, shape, True), _ntloss(tok, shape, False)
        cases["ntloss-rw"] = fwd_bwd(
            lambda: cross_entropy(logits, labels) + LAM * ntl_rw(logits, labels), logits)
        cases["ntloss"] = fwd_bwd(
            lambda: cross_entropy(logits, labels) + LAM * ntl_plain(logits, labels), logits)
    groups = {"logits": cases}

    d = int(config.get("hidden_dim") or 0)
    if d > 0:
        hidden = (torch.randn(n, d, generator=g) / d**0.25).to(device=device, dtype=dtype)
        weight = (torch.randn(v, d, generator=g) / d**0.25).to(device=device, dtype=dtype)
        hidden.requires_grad_(True)
        weight.requires_grad_(True)
        flat = labels.reshape(-1)

        def lin(loss_fn):
            return fwd_bwd(loss_fn, hidden, weight)

        groups["linear"] = {
            "lin-ce": lin(lambda: F.cross_entropy((hidden @ weight.t()).float(), flat)),
            "lin-plain-was": lin(lambda: modules["was"](hidden @ weight.t(), flat).total),
            "lin-fused-was": lin(lambda: fused.cross_entropy_with_ntl(
                hidden @ weight.t(), flat, table, lam=LAM).total),
            "linear-was": lin(lambda: fused.linear_cross_entropy_with_ntl(
                hidden, weight, flat, table, lam=LAM).total),
        }

    memory = _Memory(device)
    result: dict[str, Any] = {"config": config, "cases": {}}
    for group, group_cases in groups.items():
        times = _time_interleaved(group_cases, config["repeats"], config["warmup"], device)
        base = "ce" if group == "logits" else "lin-ce"
        ratios = _ratios(times, base)
        peaks = {name: memory.measure(fn) for name, fn in group_cases.items()}
        for name in group_cases:
            result["cases"][name] = {
                "group": group,
                "time_s": statistics.median(times[name]),
                "times_s": times[name],
                "time_ratio": ratios[name],
                "peak_bytes": peaks[name],
                "mem_ratio": (peaks[name] / peaks[base]
                              if peaks[name] is not None and peaks[base] else None),
            }
    if "linear" in groups:  # the logits-free path against the materialized CE+NTL paths
        c = result["cases"]
        lin_times = {k: c[k]["times_s"] for k in groups["linear"]}
        for ref in ("lin-plain-was", "lin-fused-was"):
            r = _ratios(lin_times, ref)["linear-was"]
            mem = c[ref]["peak_bytes"]
            c["linear-was"][f"time_vs_{ref}"] = r
            c["linear-was"][f"mem_vs_{ref}"] = (c["linear-was"]["peak_bytes"] / mem
                                                if mem and c["linear-was"]["peak_bytes"]
                                                is not None else None)
    result["logits_bytes"] = logits.numel() * logits.element_size()
    return result


# ---------------------------------------------------------------------- worker: logits-free memory
LINEAR_MEMORY = {"batch": 4, "seq": 1024, "vocab": 128256, "hidden_dim": 256, "fraction": 0.3}
"""The logits-free memory check: (B, T, V) = (4, 1024, 128256), d = 256, 30% number labels."""


def _digit_vocab(vocab_size: int):
    """A `NumberVocab` with digits 0..9 at ids 0..9 and ``tok<i>`` words after them."""
    from ntl import NumberVocab

    words = {str(i): i for i in range(10)}
    words.update({f"tok{i}": i for i in range(10, vocab_size)})
    return NumberVocab.from_vocab(words)


def run_linear_memory(config: dict[str, Any]) -> dict[str, Any]:
    """Peak memory added by one forward+backward of CE + 0.3·NTL-WAS from hidden states.

    ``config["path"]``: ``"linear"`` (`fused.linear_cross_entropy_with_ntl` with
    ``chunk_size``) or ``"materialized"`` (``h @ W.T``, then `fused.cross_entropy_with_ntl`).
    Hidden (N, d) and weight (V, d) are ``randn`` (times ``scale``): large logits, so most
    rows have a CE above 69 nats and take the exact-CE fix-up.
    """
    import torch

    from ntl.losses import fused

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    n, v, d = config["batch"] * config["seq"], config["vocab"], config["hidden_dim"]
    vocab = _digit_vocab(v)
    table = vocab.table()
    g = torch.Generator().manual_seed(0)
    labels = _labels(vocab, n, config["fraction"], g)
    scale = float(config.get("scale", 1.0))
    hidden = (scale * torch.randn(n, d, generator=g)).requires_grad_(True)
    weight = torch.randn(v, d, generator=g).requires_grad_(True)
    result: dict[str, Any] = {"config": config, "logits_bytes": n * v * 4}

    def run(rows: int = n) -> None:
        h, y = hidden[:rows], labels[:rows]
        if config["path"] == "linear":
            out = fused.linear_cross_entropy_with_ntl(h, weight, y, table, lam=LAM,
                                                      chunk_size=config.get("chunk_size"))
        else:
            out = fused.cross_entropy_with_ntl(h @ weight.t(), y, table, lam=LAM)
        out.total.backward()
        result["loss"] = float(out.total)
        hidden.grad = weight.grad = None

    run(64)  # warm-up on a few rows: the kernels' code and thread pools are in memory
    started = time.perf_counter()
    result["peak_bytes"] = _Memory("cpu").measure(run)
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
    runs = {"materialized": _spawn("linear-memory", dict(base, path="materialized")),
            "linear": _spawn("linear-memory", dict(base, path="linear")),
            "linear chunk 64": _spawn("linear-memory", dict(base, path="linear", chunk_size=64))}
    ref = runs["materialized"]["peak_bytes"]
    for res in runs.values():
        res["mem_vs_materialized"] = res["peak_bytes"] / ref if ref else None
    return runs


def _linear_memory_table(runs: dict[str, Any]) -> list[str]:
    cfg = runs["materialized"]["config"]
    lines = [
        "",
        f"Logits-free memory check: (B, T, V) = ({cfg['batch']}, {cfg['seq']}, {cfg['vocab']}), "
        f"d = {cfg['hidden_dim']}, `randn` hidden and weight, {cfg['fraction']:.0%} number "
        f"labels ({runs['linear']['rows_ce_above_69']:.0%} of the rows have CE > 69 nats); "
        "forward+backward of CE + 0.3·NTL-WAS, each in a fresh process.",
        "",
        "| path | peak MiB added | × materialized | loss | time s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, res in runs.items():
        lines.append(f"| {name} | {_fmt_bytes(res['peak_bytes'])} | "
                     f"{_fmt_ratio(res['mem_vs_materialized'])} | {res['loss']:.6f} | "
                     f"{res['time_s']:.1f} |")
    return lines


# ---------------------------------------------------------------------- worker: training step
def run_train_step(config: dict[str, Any]) -> dict[str, Any]:
    """Time optimizer steps of the quick profile's T5 with CE, CE+NTL (plain) and CE+NTL (fused)."""
    import torch

    from ntl import NumberVocab
    from ntl.losses import fused
    from ntl.losses.functional import cross_entropy

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    device = config["device"]
    quick = config["quick"]
    if quick:
        tok = _synthetic_tokenizer(1000)
        vocab_size, batch, seq, spec = 1000, 4, 8, "t5-micro"
    else:
        from ntl.lab.tokenization import load_named_tokenizer
        from ntl.numbers import split_digits

        tok = split_digits(load_named_tokenizer("t5-small"))
        vocab_size, batch, seq, spec = 32100, 64, 32, "t5-tiny"
    vocab = NumberVocab.from_tokenizer(tok, mode="digits", vocab_size=vocab_size)
    model = _build_t5(spec, vocab_size).to(device)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, vocab_size, (batch, seq), generator=g).to(device)
    labels = _labels(vocab, batch * seq, 0.3, g).reshape(batch, seq).to(device)
    mask = torch.ones_like(input_ids)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    table = vocab.table(device)
    ce_ntl = _plain_ce_ntl(table, "was")

    def step(loss_fn) -> Callable[[], None]:
        def run() -> None:
            logits = model(input_ids=input_ids, attention_mask=mask, labels=None,
                           decoder_input_ids=model._shift_right(labels)).logits
            loss_fn(logits).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    arms = {
        "ce": step(lambda z: cross_entropy(z, labels)),
        "ce+ntl-was plain": step(lambda z: ce_ntl(z, labels).total),
        "ce+ntl-was fused": step(lambda z: fused.cross_entropy_with_ntl(z, labels, table,
                                                                        lam=LAM).total),
    }
    times = _time_interleaved(arms, config["steps"], max(config["warmup"], 2), device)
    ratios = _ratios(times, "ce")
    return {"config": config, "model": spec, "batch": batch, "seq": seq,
            "vocab": vocab_size,
            "params": sum(p.numel() for p in model.parameters()),
            "arms": {name: {"time_s": statistics.median(ts), "times_s": ts,
                            "time_ratio": ratios[name]} for name, ts in times.items()}}


# ---------------------------------------------------------------------- worker: logits-free step
LLAMA_STEP = {"batch": 4, "seq": 1024, "vocab": 128256, "hidden": 256, "layers": 2, "heads": 4,
              "intermediate": 1024}
"""The large-vocabulary training step: a 2-layer Llama with Llama-3's vocabulary size."""
LLAMA_STEP_QUICK = {"batch": 2, "seq": 32, "vocab": 2000, "hidden": 32, "layers": 1, "heads": 2,
                    "intermediate": 64}
LOGITS_FREE_ARMS = ("ce (HF default)", "ce+ntl materialized", "ce+ntl logits-free")


def run_logits_free_step(config: dict[str, Any]) -> dict[str, Any]:
    """Optimizer steps of a Llama-style model at a large vocabulary, three ways.

    ``ce (HF default)``: ``model(input_ids, labels=labels).loss`` (Hugging Face's own causal-LM
    loss on materialized logits); ``ce+ntl materialized``: the model's logits, then
    `ntl.CrossEntropyWithNTL` (fused); ``ce+ntl logits-free``: the same loss computed inside the
    model's forward by `ntl.integrations.logits_free` (no logits). One model and one AdamW
    optimizer; the losses of the three arms are read at the same (initial) weights. Peak memory
    is measured per arm on a full step (forward, backward, ``optimizer.step``) after the
    optimizer state exists, so it counts what the step adds on top of the parameters and the
    optimizer state: the parameter gradients, activations, and the loss path's logits, their
    gradient or its chunk buffers. ``config["steps"]`` timed steps per arm (the first one is
    the memory step), interleaved across arms.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ntl import CrossEntropyWithNTL
    from ntl.integrations.logits_free import apply_logits_free
    from ntl.losses import fused

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    spec = LLAMA_STEP_QUICK if config["quick"] else LLAMA_STEP
    b, t, v = spec["batch"], spec["seq"], spec["vocab"]
    vocab = _digit_vocab(v)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=v, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"], max_position_embeddings=t,
        tie_word_embeddings=False))
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = _labels(vocab, b * t, 0.3, g).reshape(b, t)  # 30% of the targets are numbers
    labels = ids.clone()
    shifted = fused.shift_labels(labels)
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=LAM)
    apply_logits_free(model, loss)
    hf_forward = type(model).forward  # the unpatched forward: Hugging Face's own loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def hf_ce() -> tuple[Any, ...]:
        out = hf_forward(model, input_ids=ids, labels=labels)
        return out.loss, out.loss, None

    def materialized() -> tuple[Any, ...]:
        out = loss(model(input_ids=ids).logits, shifted)
        return out.total, out.ce, out.ntl

    def logits_free() -> tuple[Any, ...]:
        out = model(input_ids=ids, labels=labels)
        return out.loss, out.ce, out.ntl

    losses = dict(zip(LOGITS_FREE_ARMS, (hf_ce, materialized, logits_free)))
    values: dict[str, dict[str, float | None]] = {}
    for name, fn in losses.items():  # the three losses at the same weights (forward only)
        total, ce, ntl = fn()
        values[name] = {"total": float(total), "ce": float(ce),
                        "ntl": None if ntl is None else float(ntl)}
    total.backward()  # the logits-free arm's: one optimizer step creates the AdamW state
    opt.step()
    opt.zero_grad(set_to_none=True)
    del total, ce, ntl

    def step(fn) -> Callable[[], None]:
        def run() -> None:
            fn()[0].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    arms = {name: step(fn) for name, fn in losses.items()}
    memory = _Memory(config["device"])
    peaks: dict[str, int | None] = {}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for name, fn in arms.items():  # first round: peak memory, each step timed as well
        started = time.perf_counter()
        peaks[name] = memory.measure(fn)
        times[name].append(time.perf_counter() - started)
    if config["steps"] > 1:
        more = _time_interleaved(arms, config["steps"] - 1, 0, config["device"])
        for name in arms:
            times[name] += more[name]
    ratios = _ratios(times, LOGITS_FREE_ARMS[0])
    base_peak = peaks[LOGITS_FREE_ARMS[0]]
    return {"config": config, "model": spec,
            "params": sum(p.numel() for p in model.parameters()),
            "logits_bytes": b * t * v * 4,
            "arms": {name: {"time_s": statistics.median(times[name]), "times_s": times[name],
                            "time_ratio": ratios[name], "peak_bytes": peaks[name],
                            "mem_ratio": (peaks[name] / base_peak
                                          if peaks[name] is not None and base_peak else None),
                            "loss": values[name]} for name in arms}}


def _logits_free_table(res: dict[str, Any]) -> list[str]:
    m = res["model"]
    lines = [
        "",
        f"Training step at a large vocabulary (Llama-style, {m['layers']} layers, hidden "
        f"{m['hidden']}, vocab {m['vocab']:,}, {res['params']:,} parameters; batch {m['batch']} "
        f"× {m['seq']} tokens, 30% number targets; AdamW; fp32 logits would take "
        f"{_fmt_bytes(res['logits_bytes'])} MiB). **peak MiB added** = peak memory of one step "
        "(forward, backward, optimizer step) above the model, its optimizer state and the "
        "batch; ratios to Hugging Face's default CE step; losses at the same weights.",
        "",
        "| arm | step s | time ×CE | peak MiB added | mem ×CE | CE | CE + 0.3·NTL |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in res["arms"].items():
        total = "" if a["loss"]["ntl"] is None else f"{a['loss']['total']:.6f}"
        lines.append(f"| {name} | {a['time_s']:,.2f} | {_fmt_ratio(a['time_ratio'])} | "
                     f"{_fmt_bytes(a['peak_bytes'])} | {_fmt_ratio(a['mem_ratio'])} | "
                     f"{a['loss']['ce']:.6f} | {total} |")
    return lines


def _build_t5(spec: str, vocab_size: int):
    try:
        from ntl.lab.models import build_model

        return build_model(spec, vocab_size, seed=0)
    except ImportError:  # models.py absent: the same configuration by hand
        import torch
        from transformers import T5Config, T5ForConditionalGeneration

        d, layers, heads, ff, kv = (128, 3, 4, 512, 32) if spec == "t5-tiny" else (32, 1, 2, 64, 16)
        torch.manual_seed(0)
        return T5ForConditionalGeneration(T5Config(
            vocab_size=vocab_size, d_model=d, d_kv=kv, d_ff=ff, num_layers=layers,
            num_decoder_layers=layers, num_heads=heads, dropout_rate=0.0,
            decoder_start_token_id=0))


# ---------------------------------------------------------------------- driver
def _spawn(kind: str, config: dict[str, Any], omp_wait: str = "inherit") -> dict[str, Any]:
    """Run one worker in a fresh interpreter (clean allocator, exact peak memory)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONUNBUFFERED="1")
    if omp_wait != "inherit":
        env["OMP_WAIT_POLICY"] = omp_wait.upper()
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the ntl package
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "ntl.lab.bench", kind], input=json.dumps(config),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"ntl bench worker ({kind}) failed on {config}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f}"


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def to_markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables (loss paths, logits-free path, training step)."""
    meta = report["meta"]
    lines = [
        "# ntl bench",
        "",
        f"Machine: {meta['machine']['cpu']} ({meta['machine']['cpu_count']} cores visible, "
        f"{meta['threads']} torch threads), device `{meta['device']}`"
        + (f" ({meta['machine']['gpu']})" if meta["machine"].get("gpu") else "")
        + f"; torch {meta['machine']['torch']}, ntloss {meta['machine'].get('ntloss')}.",
        f"Command: `{meta['command']}`; {meta['repeats']} interleaved rounds after "
        f"{meta['warmup']} warm-up; OMP_WAIT_POLICY {meta.get('omp_wait_policy')}; peak "
        f"memory: {meta['memory_method']}; {meta['elapsed_s'] / 60:.1f} min in all.",
    ]
    if meta.get("note"):
        lines.append(f"Note: {meta['note']}")
    if report["results"]:
        lines += _loss_table(report)
    train = report.get("train_step")
    if train:
        lines += _train_table(train)
    if report.get("logits_free_step"):
        lines += _logits_free_table(report["logits_free_step"])
    if report.get("linear_memory"):
        lines += _linear_memory_table(report["linear_memory"])
    return "\n".join(lines) + "\n"


def _loss_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Forward+backward of the loss on the same logits. **time ×CE** = median over rounds of "
        "time / CE time in the same round; **mem ×CE** = peak memory added by the call (incl. "
        "the gradient it returns) / CE's. CE = token cross-entropy alone (float32 math); "
        "`plain` = functional CE + functional NTL (unfused); `fused` = "
        "`fused.cross_entropy_with_ntl`; `-rw` = reweigh on; `ntloss-rw` = CE + ntloss "
        "NTLoss default (reweigh=True); λ = 0.3.",
        "",
        "| shape | dtype | numbers | case | time ms | time ×CE | peak MiB | mem ×CE |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for res in report["results"]:
        cfg = res["config"]
        for name, c in res["cases"].items():
            if c["group"] != "logits":
                continue
            lines.append(f"| {Shape(**cfg['shape']).label} | {cfg['dtype']} | "
                         f"{cfg['fraction']:.0%} | {name} | {c['time_s'] * 1e3:,.0f} | "
                         f"{_fmt_ratio(c['time_ratio'])} | {_fmt_bytes(c['peak_bytes'])} | "
                         f"{_fmt_ratio(c['mem_ratio'])} |")
    if any("linear-was" in r["cases"] for r in report["results"]):
        lines += [
            "",
            f"Logits-free path (hidden (N, {report['meta']['hidden_dim']}), weight (V, "
            f"{report['meta']['hidden_dim']}); all cases include the output projection and "
            "its gradients). Ratios of `linear-was` to the materialized CE+NTL paths "
            "(`lin-plain-was`: h @ W.T then plain CE + NTL; `lin-fused-was`: h @ W.T then "
            "the fused loss), and of each case to `lin-ce` (h @ W.T then CE).",
            "",
            "| shape | dtype | numbers | case | time ms | time ×lin-ce | peak MiB | mem ×lin-ce "
            "| linear time × plain / fused | linear mem × plain / fused |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for res in report["results"]:
            cfg = res["config"]
            for name, c in res["cases"].items():
                if c["group"] != "linear":
                    continue
                extra = "| |"
                if name == "linear-was":
                    extra = (f"| {_fmt_ratio(c.get('time_vs_lin-plain-was'))} / "
                             f"{_fmt_ratio(c.get('time_vs_lin-fused-was'))} | "
                             f"{_fmt_ratio(c.get('mem_vs_lin-plain-was'))} / "
                             f"{_fmt_ratio(c.get('mem_vs_lin-fused-was'))} |")
                lines.append(f"| {Shape(**cfg['shape']).label} | {cfg['dtype']} | "
                             f"{cfg['fraction']:.0%} | {name} | {c['time_s'] * 1e3:,.0f} | "
                             f"{_fmt_ratio(c['time_ratio'])} | {_fmt_bytes(c['peak_bytes'])} | "
                             f"{_fmt_ratio(c['mem_ratio'])} {extra}")
    return lines


def _train_table(train: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Training step (model `{train['model']}`, {train['params']:,} parameters, vocab "
        f"{train['vocab']}, batch {train['batch']} × {train['seq']} tokens, 30% number "
        f"labels, AdamW; {train['config']['steps']} interleaved steps per arm):",
        "",
        "| arm | step ms | time ×CE |",
        "|---|---:|---:|",
    ]
    for name, a in train["arms"].items():
        lines.append(f"| {name} | {a['time_s'] * 1e3:,.1f} | {_fmt_ratio(a['time_ratio'])} |")
    return lines


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ntl bench``."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("ntl bench: --device cuda but torch sees no CUDA device.", file=sys.stderr)
            return 2
    quick = args.quick
    shape_names = list(QUICK_SHAPES) if quick and args.shapes == list(SHAPES) else args.shapes
    shapes = [_parse_shape(s, quick) for s in shape_names if s != "none"]
    dtypes = ["fp32"] if quick and args.dtype == list(DTYPES) else args.dtype
    fractions = [0.3] if quick and args.fractions == [0.01, 0.3] else args.fractions
    repeats = min(args.repeats, 2) if quick else args.repeats
    hidden_dim = min(args.hidden_dim, 16) if quick else args.hidden_dim
    use_ntloss = not args.no_ntloss and importlib.util.find_spec("ntloss") is not None
    if not args.no_ntloss and not use_ntloss:
        print("ntl bench: the ntloss package is not installed; its cases are skipped "
              "(pip install ntloss to compare, or pass --no-ntloss)", file=sys.stderr)
    common = {"device": args.device, "repeats": repeats, "warmup": args.warmup,
              "threads": args.threads, "ntloss": use_ntloss, "hidden_dim": hidden_dim}
    configs = [dict(common, shape=asdict(s), dtype=dt, fraction=f,
                    hidden_dim=hidden_dim if f == max(fractions) else 0)
               for s in shapes for dt in dtypes for f in fractions]
    results = []
    train_steps = min(args.train_steps, 3) if quick else args.train_steps
    bar = tqdm(total=len(configs) + (1 if train_steps else 0), desc="ntl bench",
               disable=args.no_progress)
    for config in configs:
        bar.set_postfix_str(f"{config['shape']['name']} {config['dtype']} {config['fraction']}")
        results.append(_spawn("loss", config, args.omp_wait))
        bar.update()
    train = None
    if train_steps:
        bar.set_postfix_str("training step")
        train = _spawn("train", {"device": args.device, "steps": train_steps,
                                 "warmup": args.warmup, "threads": args.threads, "quick": quick},
                       args.omp_wait)
        bar.update()
    logits_free_step = None
    if args.logits_free_steps:
        bar.set_postfix_str("logits-free training step")
        logits_free_step = _spawn("logits-free-step", {
            "device": args.device, "steps": min(args.logits_free_steps, 2) if quick
            else args.logits_free_steps, "threads": args.threads, "quick": quick},
            args.omp_wait)
    linear_memory = None
    if args.linear_memory:
        bar.set_postfix_str("logits-free memory")
        linear_memory = linear_memory_check(args.threads)
    bar.close()
    import torch

    threads = args.threads or torch.get_num_threads()
    report = {
        "meta": {"machine": machine_info(args.device), "device": args.device,
                 "threads": threads, "repeats": repeats, "warmup": args.warmup,
                 "hidden_dim": hidden_dim, "quick": quick, "note": args.note,
                 "omp_wait_policy": args.omp_wait,
                 "command": "ntl bench " + shlex.join(sys.argv[2:]) if len(sys.argv) > 1 else "",
                 "elapsed_s": time.perf_counter() - started,
                 "memory_method": ("torch.cuda.max_memory_allocated delta" if args.device ==
                                   "cuda" else "peak RSS (VmHWM via /proc/self/clear_refs) "
                                   "delta, MALLOC_MMAP_THRESHOLD_=65536, fresh process per "
                                   "config")},
        "results": results,
        "train_step": train,
        "logits_free_step": logits_free_step,
        "linear_memory": linear_memory,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    markdown = to_markdown(report)
    (out / "bench.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


def _worker_main(argv: list[str]) -> int:
    """``python -m ntl.lab.bench KIND`` (``loss``, ``train``, ``linear-memory``,
    ``logits-free-step``) with the config as JSON on stdin; JSON on stdout."""
    kind = argv[0] if argv else ""
    config = json.loads(sys.stdin.read())
    if kind == "loss":
        result = run_config(config)
    elif kind == "train":
        result = run_train_step(config)
    elif kind == "linear-memory":
        result = run_linear_memory(config)
    elif kind == "logits-free-step":
        result = run_logits_free_step(config)
    else:
        print("usage: python -m ntl.lab.bench loss|train|linear-memory|logits-free-step "
              f"< config.json (got {argv})", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
