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
  (`ntl.losses.linear.linear_cross_entropy_with_ntl`, never (N, V)); its ratios are to ``lin-ce``.

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
of `ntl.losses.linear.linear_cross_entropy_with_ntl` against the materialized fused path.

Writes ``bench.json`` and ``bench.md`` (a markdown table) into ``--out``. The prepared GPU check
(``python -m ntl.lab.bench.gpu_check``, ``make gpu-check``) runs these workers on CUDA beside
Liger-Kernel and Cut Cross-Entropy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ntl.lab.bench.linear_memory import linear_memory_check
from ntl.lab.bench.shapes import DTYPES, QUICK_SHAPES, SHAPES, parse_shape
from ntl.lab.bench.tables import to_markdown
from ntl.lab.bench.worker import spawn
from ntl.lab.machine import machine_info


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
    shapes = [parse_shape(s, quick) for s in shape_names if s != "none"]
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
        results.append(spawn("loss", config, args.omp_wait))
        bar.update()
    train = None
    if train_steps:
        bar.set_postfix_str("training step")
        train = spawn("train", {"device": args.device, "steps": train_steps,
                                "warmup": args.warmup, "threads": args.threads, "quick": quick},
                      args.omp_wait)
        bar.update()
    logits_free_step = None
    if args.logits_free_steps:
        bar.set_postfix_str("logits-free training step")
        logits_free_step = spawn("logits-free-step", {
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
        "meta": {"machine": machine_info(args.device, packages=("ntloss",)),
                 "device": args.device,
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
