"""Generate and cache DeepMind mathematics data offline (train / valid / interpolate / extrapolate).

Writes ``<out>/<hash of the request>/{train,valid,interpolate,extrapolate}.jsonl`` plus
``spec.json``; a request already on disk is reused, not regenerated. Counts are per module.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ntl data`` options to ``parser``."""
    from ntl.lab.data.mathematics import DIFFICULTIES, TRAIN_MODULES, DataSpec

    defaults = DataSpec()
    parser.add_argument(
        "--modules",
        default="paper",
        help="training modules: 'paper' for the paper's 13, or a comma-separated list of "
        f"names from: {', '.join(TRAIN_MODULES)}",
    )
    parser.add_argument(
        "--extrapolate-modules",
        default=None,
        help="comma-separated extrapolation modules; default: the counterparts of --modules "
        "(the paper's 7 for 'paper')",
    )
    parser.add_argument(
        "--difficulty",
        default=defaults.difficulty,
        choices=list(DIFFICULTIES),
        help="training entropy band for train/valid: lower/middle/upper third of each module's "
        "range, or 'train' for all of it",
    )
    parser.add_argument(
        "--entropy",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="explicit training entropy range (log10 of the number of possible problems) "
        "replacing every module's, e.g. 3 6; overrides --difficulty",
    )
    parser.add_argument("--n-train", type=int, default=defaults.n_train, help="train examples per module")
    parser.add_argument("--n-valid", type=int, default=defaults.n_valid, help="valid examples per module")
    parser.add_argument(
        "--n-interpolate",
        type=int,
        default=defaults.n_interpolate,
        help="interpolate examples per training module",
    )
    parser.add_argument(
        "--n-extrapolate",
        type=int,
        default=defaults.n_extrapolate,
        help="extrapolate examples per extrapolation module",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="base random seed")
    parser.add_argument(
        "--max-question-len",
        type=int,
        default=defaults.max_question_len,
        help="drop and re-draw problems whose question has more characters (generator default)",
    )
    parser.add_argument(
        "--max-answer-len",
        type=int,
        default=defaults.max_answer_len,
        help="drop and re-draw problems whose answer has more characters (generator default)",
    )
    parser.add_argument("--out", default="data", help="parent directory of the cache directories")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate (or find cached) data for ``args``; print where it is and the counts."""
    from ntl.lab.data.mathematics import DataSpec, generate, load_manifest, parse_modules

    try:
        spec = DataSpec(
            modules=parse_modules(args.modules),
            difficulty=args.difficulty,
            n_train=args.n_train,
            n_valid=args.n_valid,
            n_interpolate=args.n_interpolate,
            n_extrapolate=args.n_extrapolate,
            seed=args.seed,
            entropy=tuple(args.entropy) if args.entropy else None,
            extrapolate_modules=(
                parse_modules(args.extrapolate_modules) if args.extrapolate_modules is not None else None
            ),
            max_question_len=args.max_question_len,
            max_answer_len=args.max_answer_len,
        )
    except ValueError as e:
        print(f"ntl data: {e}", file=sys.stderr)
        return 2
    paths = generate(spec, out_dir=args.out, progress=not args.no_progress)
    directory = paths["train"].parent
    manifest = load_manifest(directory)
    print(f"data in {directory}")
    for split, path in paths.items():
        per_module = manifest["counts"][split]
        print(f"  {split:<12} {sum(per_module.values()):>9} examples  {path}")
        entropy = manifest.get("entropy", {}).get(split, {})
        for module, n in per_module.items():
            e = entropy.get(module, {})
            lo, hi = e.get("entropy", (None, None))
            where = "" if lo is None else f"  entropy {lo:g}" + (f"-{hi:g}" if hi != lo else "")
            if "terms" in e:
                where += f", {e['terms'][0]}-{e['terms'][1]} terms"
            print(f"    {module:<40} {n:>9}{where}")
    return 0
