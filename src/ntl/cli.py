"""The `ntl` command line: one subcommand per stage, each living in the module that does the work.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Only the
module of the command being run is imported, and modules keep heavy imports (transformers,
matplotlib) inside functions, so ``ntl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order of the main job.
COMMANDS: dict[str, tuple[str, str]] = {
    "vocab": ("ntl.vocab_cli", "show a tokenizer's number tokens, their values and coverage"),
    "data": ("ntl.data.cli", "generate and cache DeepMind mathematics data (offline)"),
    "train": ("ntl.train", "train one arm (ce, ce+ntl-was, ...) of an experiment"),
    "eval": ("ntl.evaluate", "generate answers with a checkpoint and compute number metrics"),
    "report": ("ntl.report", "collect metrics of a run into results.json, report.md and plots"),
    "experiment": ("ntl.experiment", "the main job: data -> train every arm -> eval -> report"),
    "bench": ("ntl.bench", "time and memory of CE vs CE+NTL (plain, fused, ntloss), as ratios"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its options."""
    parser = argparse.ArgumentParser(
        prog="ntl",
        description="Number Token Loss: make language models regress numbers instead of "
        "guessing them. Each subcommand is one stage; `ntl experiment` runs them all. "
        "`ntl COMMAND --help` explains a command's options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            doc = (module.__doc__ or help_text).strip()
            p.description = doc
            p.formatter_class = _DocAndDefaults
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


class _DocAndDefaults(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keep the module docstring's line breaks and show every option's default."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
