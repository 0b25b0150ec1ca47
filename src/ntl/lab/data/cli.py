"""Generate and cache data offline: DeepMind mathematics (the default), or a text-regression task.

``--task mathematics``: ``<out>/<hash of the request>/{train,valid,interpolate,extrapolate}.jsonl``
plus ``spec.json``; counts are per module.

``--task diamonds`` (the price of 53,940 diamonds, the CSV shipped in the plotnine wheel) and
``--task synthetic`` (a formula plus Gaussian noise, best possible error known):
``<out>/<task>-<hash>/{train,valid,test,extrapolate}.jsonl`` plus ``spec.json``; ``extrapolate``
holds the largest 10% of the targets (``--extrapolate-fraction``), above every training target.

A request already on disk is reused, not regenerated.
"""

from __future__ import annotations

import argparse
import json
import sys

#: The text-regression tasks ``--task`` takes.
REGRESSION_TASKS: tuple[str, ...] = ("diamonds", "synthetic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ntl data`` options to ``parser``."""
    from ntl.lab.data.mathematics import DIFFICULTIES, TRAIN_MODULES, DataSpec

    defaults = DataSpec()
    parser.add_argument("--task", default="mathematics", choices=["mathematics", *REGRESSION_TASKS],
                        help="which data: DeepMind mathematics, or a text-regression task")
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
    parser.add_argument("--n-train", type=int, default=None,
                        help=f"train examples per module (default {defaults.n_train}); regression "
                        "tasks: train rows (default: all rows left)")
    parser.add_argument("--n-valid", type=int, default=None,
                        help=f"valid examples per module (default {defaults.n_valid}); regression "
                        "tasks: valid rows (default 2000 for diamonds, 1000 for synthetic)")
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
    regression = parser.add_argument_group("text-regression tasks (--task diamonds / synthetic)")
    regression.add_argument("--n-test", type=int, default=None,
                            help="test rows (default 2000 for diamonds, 1000 for synthetic)")
    regression.add_argument("--extrapolate-fraction", type=float, default=0.1,
                            help="share of the largest targets held out as the extrapolate split")
    regression.add_argument("--n-extrapolate-rows", type=int, default=None,
                            help="keep this many extrapolate rows (default: all)")
    regression.add_argument("--csv", default=None,
                            help="diamonds: the CSV or a plotnine wheel (default: the installed plotnine)")
    regression.add_argument("--rows", type=int, default=None, help="synthetic: rows drawn (default 20000)")
    regression.add_argument("--noise", type=float, default=None, help="synthetic: noise σ (default 50)")
    parser.add_argument("--out", default="data", help="parent directory of the cache directories")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate (or find cached) data for ``args``; print where it is and the counts."""
    from ntl.lab.data.mathematics import DataSpec, generate, load_manifest, parse_modules

    if args.task in REGRESSION_TASKS:
        return _run_regression(args)
    defaults = DataSpec()
    try:
        spec = DataSpec(
            modules=parse_modules(args.modules),
            difficulty=args.difficulty,
            n_train=defaults.n_train if args.n_train is None else args.n_train,
            n_valid=defaults.n_valid if args.n_valid is None else args.n_valid,
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


def _run_regression(args: argparse.Namespace) -> int:
    """``ntl data --task diamonds|synthetic``: make (or find) the task; print where and the counts."""
    given = {"n_train": args.n_train, "n_valid": args.n_valid, "n_test": args.n_test,
             "n_extrapolate": args.n_extrapolate_rows, "seed": args.seed,
             "extrapolate_fraction": args.extrapolate_fraction}
    given = {k: v for k, v in given.items() if v is not None}
    try:
        if args.task == "diamonds":
            from ntl.lab.data.diamonds import DiamondsSpec, generate

            paths = generate(DiamondsSpec(**given), out_dir=args.out, source=args.csv)
        else:
            from ntl.lab.data.synthetic import SyntheticSpec, generate

            extra = {"n_rows": args.rows, "noise": args.noise}
            paths = generate(SyntheticSpec(**given, **{k: v for k, v in extra.items() if v is not None}),
                             out_dir=args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"ntl data: {e}", file=sys.stderr)
        return 2
    directory = paths["train"].parent
    manifest = json.loads((directory / "spec.json").read_text(encoding="utf-8"))
    print(f"data in {directory}")
    for split, path in paths.items():
        print(f"  {split:<12} {sum(manifest['counts'][split].values()):>9} examples  {path}")
    above = manifest["extrapolate_above"]
    print(f"  training median {manifest['train_median']:g}; extrapolate: "
          + ("none" if above is None else f"targets above {above:g}")
          + f"; {manifest['duplicates_dropped']} repeated questions dropped")
    for split, best in manifest.get("bayes", {}).items():
        print(f"  best possible on {split}: MAE {best['mae']:.2f}, RMSE {best['rmse']:.2f}")
    return 0
