"""Evaluate a trained arm: generate answers, parse the numbers, compute metrics per split and module.

Usage: ``ntl eval runs/NAME/ARM/seedK [--splits valid interpolate extrapolate] [--num-beams 4]``
or ``ntl eval runs/NAME/ARM/seedK --decoding median-of-k --k 8``.

Reads ``train_config.json`` (data files, profile) and the model in ``final/`` (or
``--checkpoint checkpoint-<step>``), generates answers greedily (or with beams) in batches,
parses them with :func:`ntl.lab.metrics.parse_number` and writes ``eval/<split>.jsonl``
(``{"module", "question", "answer", "prediction", "parsed", "valid"}``), ``eval/metrics.json``
(``{split: {"overall": METRICS, "per_module": {module: METRICS}}}``) and ``eval/decoding.json``
(the decoding used). Generation is deterministic: evaluating the same checkpoint again gives the
same files.

``--decoding`` picks a number-aware decoding (:mod:`ntl.decoding`): ``greedy``, ``beam`` (``--k``
beams), ``median-of-k`` / ``mean-of-k`` (the median / mean of the numbers in ``--k`` sampled
answers, or of the ``--k`` best beams with ``--k-source beams``) or ``expected-digits``. Its files
go to ``eval-<decoding>/`` (``eval-median-of-8/``, ...), next to the default ``eval/``; rows of
the aggregating decodings also hold the ``samples`` and how many of them were invalid
(``invalid_samples``), and ``prediction`` is the aggregated number. Arms that decode only greedily
(xVal, RT, regression head) are evaluated greedily under any ``--decoding``, and
``decoding.json`` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ntl.decoding import DECODINGS, Decoding

DEFAULT_SPLITS = ("valid", "interpolate", "extrapolate")


def select_examples(records: Sequence[Mapping[str, Any]], max_examples: int | None) -> list[int]:
    """Indices of the examples to evaluate: all, or a fixed subset of ``max_examples`` (seeded
    with 0, in file order) — the same subset for every arm and seed."""
    n = len(records)
    if max_examples is None or max_examples >= n:
        return list(range(n))
    import numpy as np

    return sorted(np.random.default_rng(0).choice(n, size=max_examples, replace=False).tolist())


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    checkpoint: str | None = None,
    num_beams: int | None = None,
    batch_size: int | None = None,
    max_examples: int | None = -1,
    max_new_tokens: int | None = None,
    n_boot: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    decoding: Any = None,
) -> dict[str, Any]:
    """Evaluate the arm in ``run_dir`` on ``splits``; write ``eval/`` and return the metrics.

    Args:
        run_dir: ``runs/<name>/<arm>/seed<k>`` (with ``train_config.json`` and ``final/``).
        splits: data splits to evaluate (default: the profile's ``eval_splits``); splits
            without a data file or with no examples are skipped.
        checkpoint: a ``checkpoint-<step>`` folder name inside ``run_dir`` instead of ``final``.
        num_beams, batch_size, max_new_tokens, n_boot: default to the profile's values.
        max_examples: examples per split (a fixed subset); ``-1`` = the profile's
            ``eval_max_examples``, ``None`` = all.
        out_dir: where to write (default ``run_dir/eval``, or ``run_dir/eval-<checkpoint>``;
            with ``decoding``, ``-<decoding name>`` is appended: ``run_dir/eval-median-of-8``).
        decoding: a :class:`ntl.decoding.Decoding`; ``None``: greedy, or the profile's /
            ``num_beams`` beams. Give either this or ``num_beams``.

    Raises:
        ValueError: both ``decoding`` and ``num_beams`` are given.

    Returns:
        ``{split: {"overall": METRICS, "per_module": {...}}}`` as written to ``metrics.json``.
    """
    import torch

    from ntl.lab.arms import resolve_arm
    from ntl.lab.data.mathematics import load_split
    from ntl.lab.data.tasks import train_median
    from ntl.lab.metrics import metrics_by_module, parse_number, write_json
    from ntl.lab.regression_metrics import regression_metrics_from_records
    from ntl.lab.tokenization import load_prepared_tokenizer

    run = Path(run_dir)
    cfg_path = run / "train_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no train_config.json in {run}: is it a trained arm folder?")
    cfg = json.loads(cfg_path.read_text())
    profile = cfg.get("profile", {})
    recipe = resolve_arm(cfg["arm"], float(profile.get("lam", 0.3)))
    model_dir = run / (checkpoint or "final")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no saved model in {model_dir}; train first (ntl train)")
    splits = list(splits or profile.get("eval_splits") or DEFAULT_SPLITS)
    requested = decoding
    if decoding is not None and num_beams is not None:
        raise ValueError(
            f"give either a decoding ({decoding.name}) or num_beams={num_beams}, not both; "
            "for beam search use the decoding 'beam' with k beams"
        )
    if decoding is None:
        num_beams = num_beams or int(profile.get("num_beams", 1))
        decoding = Decoding("beam", k=num_beams) if num_beams > 1 else Decoding()
    if decoding.method != "greedy" and recipe.greedy_only:
        print(f"[ntl eval] {cfg['arm']}: greedy decoding ({decoding.name} ignored)", file=sys.stderr)
        decoding = Decoding()
    batch_size = batch_size or int(profile.get("eval_batch_size", 256))
    max_new_tokens = max_new_tokens or int(profile.get("max_new_tokens", 32))
    n_boot = int(profile.get("n_boot", 1000)) if n_boot is None else n_boot
    if max_examples == -1:
        max_examples = profile.get("eval_max_examples")
    if profile.get("threads"):
        torch.set_num_threads(int(profile["threads"]))
    if out_dir:
        out = Path(out_dir)
    else:
        out = run / eval_folder(checkpoint, requested)

    tokenizer = load_prepared_tokenizer(
        model_dir if (model_dir / "tokenizer.json").is_file() else cfg["tokenizer"]
    )
    model = recipe.load_model(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    for split in splits:
        path = cfg.get("data", {}).get(split)
        if not path or not Path(path).is_file():
            print(f"[ntl eval] no {split} data for {run}; skipped", file=sys.stderr)
            continue
        records = load_split(path)
        keep = [
            i
            for i in select_examples(records, max_examples)
            if parse_number(str(records[i]["answer"])) is not None
        ]
        if not keep:
            continue
        chosen = [records[i] for i in keep]
        answers = recipe.predict_numbers(
            model,
            tokenizer,
            [str(r["question"]) for r in chosen],
            decoding=decoding,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            max_source_length=int(profile.get("max_source_length", 160)),
            progress=progress,
            desc=f"eval {split}",
        )
        samples = [a.samples for a in answers] if decoding.aggregate else None
        rows = score_rows(chosen, [a.text for a in answers], samples=samples)
        tmp = out / f".{split}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out / f"{split}.jsonl")
        metrics[split] = metrics_by_module(rows, n_boot=n_boot, seed=0)
        fallback = train_median(path)
        if fallback is not None:  # a text-regression task: its error metrics too
            metrics[split]["regression"] = regression_metrics_from_records(
                rows, fallback=fallback, n_boot=n_boot, seed=0)
    write_json(out / "decoding.json", decoding_record(decoding, requested))
    write_json(out / "metrics.json", metrics)
    return metrics


def decoding_record(used: Any, requested: Any = None) -> dict[str, Any]:
    """``decoding.json``: the decoding the answers were made with (``name``, ``method``, ``k``,
    ``source``, ``temperature``, ``seed``) and ``requested``, the name asked for (``None``: the
    default), which differs from ``name`` for arms that decode only greedily."""
    import dataclasses

    return {"name": used.name, **dataclasses.asdict(used),
            "requested": None if requested is None else requested.name}


def score_rows(
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[str],
    samples: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """One ``eval/<split>.jsonl`` row per record: ``{"module", "question", "answer",
    "prediction", "parsed", "valid"}``, ``parsed`` being :func:`ntl.lab.metrics.parse_number` of the
    prediction (None when it is not one number) and ``valid`` whether it parsed.

    With ``samples`` (the generated texts behind each prediction, for decodings that aggregate
    several), rows also hold ``"samples"`` and ``"invalid_samples"`` (how many do not parse).
    """
    from ntl.lab.metrics import parse_number

    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    if samples is not None and len(samples) != len(records):
        raise ValueError(f"{len(records)} records but {len(samples)} sample lists")
    rows = []
    for i, (r, pred) in enumerate(zip(records, predictions)):
        parsed = parse_number(pred)
        row = {"module": r["module"], "question": r["question"], "answer": r["answer"],
               "prediction": pred, "parsed": parsed, "valid": parsed is not None}
        if samples is not None:
            row["samples"] = list(samples[i])
            row["invalid_samples"] = sum(parse_number(s) is None for s in samples[i])
        rows.append(row)
    return rows


def eval_folder(checkpoint: str | None = None, decoding: Any = None) -> str:
    """Name of the folder :func:`evaluate_run` writes by default: ``eval``,
    ``eval-<checkpoint>``, with ``-<decoding name>`` appended for a requested decoding."""
    name = "eval" if checkpoint is None else f"eval-{checkpoint}"
    return name if decoding is None else f"{name}-{decoding.name}"


def is_evaluated(
    run_dir: str | os.PathLike[str],
    splits: Sequence[str],
    *,
    checkpoint: str | None = None,
    decoding: Any = None,
) -> bool:
    """True when ``run_dir/eval/metrics.json`` (:func:`eval_folder` of ``checkpoint`` and
    ``decoding``) exists, is newer than the model it scores (``final/`` or the checkpoint) and
    covers ``splits`` (those with data)."""
    run = Path(run_dir)
    path = run / eval_folder(checkpoint, decoding) / "metrics.json"
    final = run / (checkpoint or "final") / "config.json"
    if not path.is_file() or not final.is_file():
        return False
    if path.stat().st_mtime < final.stat().st_mtime:
        return False
    try:
        done = json.loads(path.read_text())
        cfg = json.loads((run / "train_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    wanted = [s for s in splits if cfg.get("data", {}).get(s)]
    return all(s in done for s in wanted)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntl eval``."""
    parser.add_argument("run_dir", help="an arm's run folder, runs/<name>/<arm>/seed<k>")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="splits to evaluate (default: the profile's eval_splits: valid interpolate extrapolate)",
    )
    parser.add_argument("--checkpoint", default=None, help="evaluate checkpoint-<step> instead of final/")
    parser.add_argument(
        "--num-beams", type=int, default=None, help="beam width (1 = greedy; default: profile)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="generation batch size (default: profile)"
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=-1,
        help="examples per split, a fixed subset (-1: the profile's eval_max_examples; 0: all)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit in tokens")
    parser.add_argument("--n-boot", type=int, default=None, help="bootstrap replicates for the CIs")
    parser.add_argument("--out", default=None,
                        help="output folder (default RUN_DIR/eval, RUN_DIR/eval-<decoding> with --decoding)")
    parser.add_argument(
        "--decoding", default=None, choices=list(DECODINGS),
        help="number-aware decoding (default: greedy, or the profile's num_beams); see ntl.decoding",
    )
    parser.add_argument("--k", type=int, default=8,
                        help="--decoding beam: beams; median-of-k / mean-of-k: answers aggregated")
    parser.add_argument("--k-source", default="sample", choices=["sample", "beams"],
                        help="median-of-k / mean-of-k: k sampled answers, or the k best beams")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature of median-of-k / mean-of-k (1: the model's own)")
    parser.add_argument("--decoding-seed", type=int, default=0, help="seed of the sampling")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ntl eval``."""
    from ntl.lab.file_checks import CorruptFileError

    try:
        metrics = _evaluate_from_args(args)
    except CorruptFileError as exc:
        print(f"ntl eval: {exc}", file=sys.stderr)  # names the file and the fix
        return 2
    for split, m in metrics.items():
        o = m["overall"]
        print(
            f"{split:12s} n={o['n']:5d}  exact_match={o['exact_match']['value']:.3f}  "
            f"log_mae={o['log_mae']['value']:.3f}  invalid={o['invalid_rate']['value']:.3f}"
        )
    return 0


def decoding_from_args(args: argparse.Namespace) -> Any:
    """The :class:`ntl.decoding.Decoding` of ``ntl eval``'s options, or ``None`` without
    ``--decoding``.

    Raises:
        UsageError: a bad ``--k`` / ``--temperature``, or ``--num-beams`` with ``--decoding``.
    """
    from ntl.errors import UsageError

    if args.decoding is None:
        return None
    if args.num_beams is not None:
        raise UsageError(f"--num-beams with --decoding {args.decoding}: use --decoding beam --k "
                         f"{args.num_beams} for beam search")
    try:
        return Decoding(args.decoding, k=args.k, source=args.k_source, temperature=args.temperature,
                        seed=args.decoding_seed)
    except ValueError as exc:
        message = f"--decoding {args.decoding}: {exc} (set by --k, --k-source, --temperature)"
        raise UsageError(message) from None


def _evaluate_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return evaluate_run(
        args.run_dir,
        splits=args.splits,
        checkpoint=args.checkpoint,
        num_beams=args.num_beams,
        batch_size=args.batch_size,
        max_examples=None if args.max_examples == 0 else args.max_examples,
        max_new_tokens=args.max_new_tokens,
        n_boot=args.n_boot,
        out_dir=args.out,
        progress=not args.no_progress,
        decoding=decoding_from_args(args),
    )
