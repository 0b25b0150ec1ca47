"""The prepared GPU check: one command on a CUDA machine, one markdown table, at most 8 minutes.

``python -m ntl.lab.bench.gpu_check`` (``make gpu-check``) runs, each stage in its own process
with its own time limit inside an overall budget:

1. **tests**: pytest on the loss and logits-free test files, selecting the CUDA cases of their
   ``device`` parameter (``-k cuda``); the row gives the pass / fail / skip counts.
2. **loss**: forward+backward in bf16 at Llama-3's vocabulary, interleaved in one process (the
   ``loss`` worker of ``ntl bench``): on logits (4, 1024, 128256), torch CE (float32 math, as
   Hugging Face's loss), CE + NTL plain and fused, and Liger-Kernel's CE; from hidden states
   (4096, 4096) and an output weight (128256, 4096), ``h @ W.T`` then torch CE, the
   materialized CE + NTL paths, ntl's logits-free path, Liger's fused linear CE and Cut
   Cross-Entropy (those two CE only: they have no number loss). Time and peak memory are ratios
   to torch CE of the same group, measured side by side; each loss value is compared with the
   path that must give the same number.
3. **step**: one training step of a 2-layer Llama at vocabulary 128256 in bf16 (the
   ``logits-free-step`` worker): Hugging Face's CE, CE + NTL on materialized logits and CE + NTL
   logits-free; the peak memory each step adds, and its ratio to the CE step.

A stage that cannot run (no pytest, a package not installed, over its time limit, a worker
that crashed) becomes a row that says ``skipped: reason`` or ``failed: reason``; the check
itself does not crash. Liger-Kernel and Cut Cross-Entropy are optional (``not installed`` when
absent) and never dependencies of ntl.

``--dry-run`` runs the same stages on CPU with tiny shapes in seconds (the test stage only
collects); the default tests run it, so the check cannot rot. Output: ``gpu_check.md`` (the
table) and ``gpu_check.json`` (every measurement) in ``--out``, else ``$OUT``, else
``runs/gpu_check``. Exit status 0 when nothing failed, 1 when a row failed, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ntl.lab.bench import external
from ntl.lab.bench.logits_free_step import LOGITS_FREE_ARMS
from ntl.lab.bench.loss_cases import BASES, FUSED_CASES, LINEAR_CASES
from ntl.lab.bench.shapes import QUICK_SHAPES, Shape
from ntl.lab.bench.tables import fmt_bytes, fmt_ratio
from ntl.lab.bench.worker import WorkerFailed, spawn
from ntl.lab.machine import machine_info

DEVICE_TEST_FILES = ("test_losses.py", "test_fused.py", "test_edge_cases.py",
                     "test_logits_free.py")
"""The loss and logits-free test files (found anywhere under ``tests/``)."""
PACKAGES = ("transformers", "triton", "peft", "accelerate", "liger-kernel", "cut-cross-entropy",
            "ntloss", "pytest")
"""Distributions whose versions the table's header records."""
SAME_VALUE = {"fused-was": "plain-was", "fused-mse": "plain-mse", "liger-ce": "ce",
              "lin-fused-was": "lin-plain-was", "linear-was": "lin-fused-was",
              "liger-flce": "lin-ce", "cce": "lin-ce"}
"""case -> the case that computes the same loss value (checked within `TOLERANCE`)."""
TOLERANCE = {"bf16": 2e-2, "fp32": 1e-4}
"""Relative tolerance of `SAME_VALUE` per dtype (bf16 logits round at about 4e-3)."""


@dataclass(frozen=True)
class Plan:
    """Sizes and time limits of one run of the check."""

    device: str
    dtype: str
    shape: Shape  # logits (B, T, V) of the loss stage; its linear group has N = B·T rows
    hidden_dim: int  # d of the loss stage's linear group
    repeats: int
    warmup: int
    step_quick: bool  # the step stage's model: LLAMA_STEP_QUICK instead of LLAMA_STEP
    step_steps: int
    limits: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    budget_s: float = 480.0


GPU_PLAN = Plan("cuda", "bf16", Shape("llama3-vocab", 4, 1024, 128256, None, "digits"), 4096,
                repeats=10, warmup=2, step_quick=False, step_steps=3,
                limits={"tests": 210.0, "loss": 150.0, "step": 90.0}, budget_s=480.0)
DRY_PLAN = Plan("cpu", "bf16", QUICK_SHAPES["tiny"], 16, repeats=2, warmup=1, step_quick=True,
                step_steps=2, limits={"tests": 60.0, "loss": 120.0, "step": 120.0},
                budget_s=300.0)
STAGES = ("tests", "loss", "step")


@dataclass
class Row:
    """One row of the table: a case of a stage, its status and what was measured."""

    stage: str
    case: str
    status: str  # "ok", "ok: ...", "skipped: reason" or "failed: reason"
    time_ms: float | None = None
    time_ratio: float | None = None
    peak_bytes: int | None = None
    mem_ratio: float | None = None
    loss: float | None = None


# ---------------------------------------------------------------------- stage: tests
def find_test_files(root: Path, names: Sequence[str] = DEVICE_TEST_FILES) -> list[Path]:
    """The files called ``names`` anywhere under ``root/tests``, sorted."""
    tests = root / "tests"
    if not tests.is_dir():
        return []
    return sorted(p for name in names for p in tests.rglob(name))


def _junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / errors / skipped from a pytest junit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites)
             for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def run_tests(root: Path, files: Sequence[Path], selection: str, limit: float, *,
              collect_only: bool, slow: bool) -> Row:
    """pytest on ``files`` (``-k selection``) in a fresh process; one row with the counts."""
    names = ", ".join(str(f.relative_to(root)) if f.is_relative_to(root) else str(f)
                      for f in files)
    case = f"pytest -k {selection or '(all)'}: {names or 'no files'}"
    if importlib.util.find_spec("pytest") is None:
        return Row("tests", case, "skipped: pytest not installed (pip install pytest)")
    if not files:
        return Row("tests", case, f"skipped: none of {', '.join(DEVICE_TEST_FILES)} under "
                   f"{root / 'tests'} (pass --tests FILE ...)")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), str(root),
                                                      env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, files)]
    if selection:
        cmd += ["-k", selection]
    if slow:
        cmd += ["-m", "slow or not slow"]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd += ["--collect-only"] if collect_only else [f"--junitxml={xml}"]
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                                  timeout=limit)
        except subprocess.TimeoutExpired:
            return Row("tests", case, f"skipped: over its {limit:.0f} s limit")
        if proc.returncode == 5:
            return Row("tests", case, f"skipped: no test selected by -k {selection!r} (is the "
                       "device parameter there?)")
        if collect_only:
            if proc.returncode != 0:
                return Row("tests", case, "failed: collection: " + _last_line(proc))
            n = sum("::" in line for line in proc.stdout.splitlines())
            return Row("tests", case, f"ok: {n} collected (dry run: not run)")
        if not xml.is_file():
            return Row("tests", case, f"failed: pytest exited {proc.returncode}: "
                       + _last_line(proc))
        c = _junit_counts(xml)
    counts = (f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
              f"{c['skipped']} skipped")
    return Row("tests", case, ("failed: " if c["failed"] or c["errors"] else "ok: ") + counts)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit status {proc.returncode}"


# ---------------------------------------------------------------------- stage: loss
def loss_config(plan: Plan) -> dict[str, Any]:
    """The ``loss`` worker's config: the plan's shape and dtype, 30% number labels, the
    logits-free group at ``hidden_dim``, Liger and Cut Cross-Entropy beside ours."""
    return {"shape": asdict(plan.shape), "dtype": plan.dtype, "fraction": 0.3,
            "device": plan.device, "repeats": plan.repeats, "warmup": plan.warmup,
            "threads": None, "hidden_dim": plan.hidden_dim, "external": True,
            "ntloss": importlib.util.find_spec("ntloss") is not None}


def loss_rows(result: dict[str, Any], dtype: str) -> list[Row]:
    """The ``loss`` worker's result as rows, in group order, with skipped cases in place."""
    cfg = result["config"]
    shape = Shape(**cfg["shape"])
    n = shape.batch * shape.seq
    stages = {"logits": f"loss {dtype}, logits ({shape.batch}, {shape.seq}, {shape.vocab})",
              "linear": f"loss {dtype}, hidden ({n}, {cfg['hidden_dim']}) → V {shape.vocab}"}
    order = {"logits": [*FUSED_CASES, *external.LOGITS_CASES],
             "linear": [*LINEAR_CASES, *external.LINEAR_CASES]}
    cases, skipped = result["cases"], dict(result.get("skipped", {}))
    if not cfg.get("ntloss"):
        skipped.update({k: "not installed (pip install ntloss)" for k in ("ntloss-rw", "ntloss")})
    rows = []
    for group, names in order.items():
        if group == "linear" and not cfg.get("hidden_dim"):
            continue
        for name in names:
            label = name + (" (ref)" if name == BASES[group] else "")
            if name not in cases:
                rows.append(Row(stages[group], label,
                                "skipped: " + skipped.get(name, "not run")))
                continue
            c = cases[name]
            rows.append(Row(stages[group], label, _value_status(name, cases, dtype),
                            c["time_s"] * 1e3, c["time_ratio"], c["peak_bytes"],
                            c["mem_ratio"], c.get("loss")))
    return rows


def _value_status(name: str, cases: dict[str, Any], dtype: str) -> str:
    """``ok``, or ``failed`` when the loss differs from the case that must give the same value."""
    ref = SAME_VALUE.get(name)
    if ref is None or ref not in cases or cases[name].get("loss") is None:
        return "ok"
    value, expected = cases[name]["loss"], cases[ref]["loss"]
    rel = abs(value - expected) / max(abs(expected), 1e-12)
    if rel > TOLERANCE[dtype]:
        return f"failed: loss {value:.6g} differs from {ref}'s {expected:.6g} by {rel:.1e}"
    return f"ok (= {ref}: {rel:.0e})"


# ---------------------------------------------------------------------- stage: step
def step_config(plan: Plan) -> dict[str, Any]:
    """The ``logits-free-step`` worker's config."""
    return {"device": plan.device, "dtype": plan.dtype, "steps": plan.step_steps,
            "threads": None, "quick": plan.step_quick}


def step_rows(result: dict[str, Any], dtype: str) -> list[Row]:
    """The ``logits-free-step`` worker's result as rows (loss: CE + 0.3·NTL, or CE for HF)."""
    m = result["model"]
    stage = (f"train step {dtype}, Llama {m['layers']} layers, hidden {m['hidden']}, "
             f"V {m['vocab']}, {m['batch']} × {m['seq']} tokens")
    arms = result["arms"]
    materialized, free = arms[LOGITS_FREE_ARMS[1]]["loss"], arms[LOGITS_FREE_ARMS[2]]["loss"]
    rows = []
    for name, a in arms.items():
        status = "ok"
        if name == LOGITS_FREE_ARMS[2]:
            rel = abs(free["total"] - materialized["total"]) / max(abs(materialized["total"]),
                                                                   1e-12)
            status = (f"ok (= materialized: {rel:.0e})" if rel <= TOLERANCE[dtype] else
                      f"failed: loss {free['total']:.6g} differs from materialized "
                      f"{materialized['total']:.6g} by {rel:.1e}")
        label = name + (" (ref)" if name == LOGITS_FREE_ARMS[0] else "")
        loss = a["loss"]["ce"] if a["loss"]["ntl"] is None else a["loss"]["total"]
        rows.append(Row(stage, label, status, a["time_s"] * 1e3, a["time_ratio"],
                        a["peak_bytes"], a["mem_ratio"], loss))
    return rows


# ---------------------------------------------------------------------- driver
def _worker_stage(stage: str, kind: str, config: dict[str, Any], limit: float,
                  to_rows: Callable[[dict[str, Any]], list[Row]]) -> tuple[list[Row], Any]:
    """Run one worker with a time limit; its rows and raw result, or one row saying why not."""
    try:
        result = spawn(kind, config, timeout=limit)
    except subprocess.TimeoutExpired:
        return [Row(stage, "(all)", f"skipped: over its {limit:.0f} s limit")], None
    except WorkerFailed as err:
        last = str(err).strip().splitlines()[-1]
        return [Row(stage, "(all)", f"failed: worker: {last}")], None
    return to_rows(result), result


def run_check(plan: Plan, *, root: Path, test_files: Sequence[Path] | None = None,
              selection: str = "cuda", slow: bool = False, dry_run: bool = False,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every stage of the check within ``plan.budget_s``; the rows and the raw results."""
    started = time.perf_counter()
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    files = list(test_files) if test_files is not None else find_test_files(root)
    for stage in STAGES:
        left = plan.budget_s - (time.perf_counter() - started)
        limit = min(plan.limits[stage], left)
        if limit < 5:
            rows.append(Row(stage, "(all)", f"skipped: the {plan.budget_s:.0f} s budget is spent"))
            continue
        log(f"gpu-check: {stage} (limit {limit:.0f} s)")
        t0 = time.perf_counter()
        try:
            if stage == "tests":
                rows.append(run_tests(root, files, selection, limit, collect_only=dry_run,
                                      slow=slow))
            elif stage == "loss":
                new, raw["loss"] = _worker_stage(
                    "loss", "loss", loss_config(plan), limit,
                    lambda r: loss_rows(r, plan.dtype))
                rows += new
            else:
                new, raw["step"] = _worker_stage(
                    "train step", "logits-free-step", step_config(plan), limit,
                    lambda r: step_rows(r, plan.dtype))
                rows += new
        except Exception as err:  # noqa: BLE001 - a stage's bug is a row, not a crash
            rows.append(Row(stage, "(all)", f"failed: {type(err).__name__}: {err}"))
        raw.setdefault("stage_s", {})[stage] = time.perf_counter() - t0
    return {"rows": rows, "raw": raw, "elapsed_s": time.perf_counter() - started}


def to_markdown(check: dict[str, Any]) -> str:
    """The check as one markdown table, under a header that says where and how it ran."""
    meta = check["meta"]
    mach = meta["machine"]
    versions = ", ".join(f"{k} {mach.get(k) or 'not installed'}" for k in PACKAGES)
    plan = meta["plan"]
    lines = [
        "# ntl GPU check" + (" (dry run: CPU, tiny shapes)" if meta["dry_run"] else ""),
        "",
        f"Device: {mach.get('gpu') or meta['device']}; CPU {mach['cpu']} ({mach['cpu_count']} "
        f"cores); torch {mach['torch']}, {versions}.",
        f"Command: `{meta['command']}`; {plan['repeats']} interleaved rounds after "
        f"{plan['warmup']} warm-up; {check['elapsed_s']:.0f} s of a {plan['budget_s']:.0f} s "
        "budget. Ratios are to the `(ref)` row of the same stage, measured in the same process; "
        "peak MiB = peak memory the call adds (CUDA: `max_memory_allocated` delta; CPU: peak "
        "RSS delta). `ce` = torch CE in float32 math (as Hugging Face's loss); `plain` / "
        "`fused` = CE + 0.3·NTL unfused / fused; `lin-*` = `h @ W.T` then that loss; "
        "`linear-was` = ntl's logits-free CE + 0.3·NTL-WAS; `liger-ce`, `liger-flce` "
        "(Liger-Kernel) and `cce` (Cut Cross-Entropy) compute CE only. `(= x: e)`: the loss "
        "equals case x's to relative error e.",
        "",
        "| stage | case | status | time ms | time ×ref | peak MiB | mem ×ref | loss |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in check["rows"]:
        row = r if isinstance(r, Row) else Row(**r)
        time_ms = "" if row.time_ms is None else f"{row.time_ms:,.2f}"
        loss = "" if row.loss is None else f"{row.loss:.6g}"
        measured = row.time_ms is not None
        lines.append(
            f"| {row.stage} | {row.case} | {row.status} | {time_ms} | "
            f"{fmt_ratio(row.time_ratio) if measured else ''} | "
            f"{fmt_bytes(row.peak_bytes) if measured else ''} | "
            f"{fmt_ratio(row.mem_ratio) if measured else ''} | {loss} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the GPU check."""
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny shapes, the test stage only collects: the same code "
                        "path in seconds")
    parser.add_argument("--out", default=None,
                        help="output folder for gpu_check.md/.json (default: $OUT, else "
                        "runs/gpu_check)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="overall time budget in seconds (default 480; dry run 300)")
    parser.add_argument("--tests", nargs="+", default=None, metavar="FILE",
                        help=f"test files to run (default: {', '.join(DEVICE_TEST_FILES)} "
                        "under tests/)")
    parser.add_argument("--test-filter", default="cuda",
                        help="pytest -k expression selecting the CUDA cases ('' runs all)")
    parser.add_argument("--slow", action="store_true", help="include tests marked slow")


def main(argv: list[str] | None = None) -> int:
    """``python -m ntl.lab.bench.gpu_check [--dry-run] [--out DIR]``."""
    import torch

    parser = argparse.ArgumentParser(prog="python -m ntl.lab.bench.gpu_check",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if args.budget_s is not None:
        plan = replace(plan, budget_s=args.budget_s)
    out = Path(args.out or os.environ.get("OUT") or "runs/gpu_check")
    root = Path(__file__).resolve().parents[4]  # <checkout>/ (src/ntl/lab/bench/ -> 4 up)
    if not (root / "tests").is_dir():
        root = Path.cwd()
    no_cuda = plan.device == "cuda" and not torch.cuda.is_available()
    if no_cuda:
        check = {"rows": [Row(stage, "(all)", "skipped: torch sees no CUDA device (run "
                              "--dry-run for the CPU check)") for stage in STAGES],
                 "raw": {}, "elapsed_s": 0.0}
    else:
        check = run_check(plan, root=root,
                          test_files=[Path(f).resolve() for f in args.tests] if args.tests
                          else None,
                          selection=args.test_filter, slow=args.slow, dry_run=args.dry_run,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    check["meta"] = {"machine": machine_info(plan.device, packages=PACKAGES),
                     "device": plan.device, "dry_run": args.dry_run,
                     "plan": {**asdict(plan), "shape": asdict(plan.shape)},
                     "command": "python -m ntl.lab.bench.gpu_check " + shlex.join(
                         sys.argv[1:] if argv is None else argv)}
    check["rows"] = [asdict(r) for r in check["rows"]]
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(check)
    (out / "gpu_check.md").write_text(markdown)
    (out / "gpu_check.json").write_text(json.dumps(check, indent=1))
    print(markdown)
    print(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}", file=sys.stderr)
    if no_cuda:
        return 2
    return 1 if any(r["status"].startswith("failed") for r in check["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
