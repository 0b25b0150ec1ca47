"""The `ntl` command line: one subcommand per stage, each living in the module that does the work.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Only the
module of the command being run is imported, and modules keep heavy imports (transformers,
matplotlib) inside functions, so ``ntl --help`` stays fast.

Errors the user can fix (an `ntl.errors.UserError`, a bad option, a missing optional dependency)
are one line on stderr and exit status 2; ``--debug`` shows their traceback instead. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order of the main job.
COMMANDS: dict[str, tuple[str, str]] = {
    "vocab": ("ntl.vocab_cli", "show a tokenizer's number tokens, their values and coverage"),
    "data": ("ntl.lab.data.cli", "generate and cache data offline: DeepMind mathematics, or a "
             "text-regression task (diamonds, synthetic)"),
    "train": ("ntl.lab.train", "train one arm (ce, ce+ntl-was, ...) of an experiment"),
    "eval": ("ntl.lab.evaluate", "generate answers with a checkpoint and compute number metrics"),
    "report": ("ntl.lab.report", "collect metrics of a run into results.json, report.md and plots"),
    "experiment": ("ntl.lab.experiment", "the main job: data -> train every arm -> eval -> report"),
    "bench": ("ntl.lab.bench.cli", "time and memory of CE vs CE+NTL (plain, fused, ntloss), as ratios"),
    "explore": ("ntl.explore", "write an interactive HTML page that shows CE and every NTL on a "
                "distribution you drag"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (no usage block): ``ntl vocab: error: ...``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its options."""
    parser = _Parser(
        prog="ntl",
        description="Number Token Loss: make language models regress numbers instead of "
        "guessing them. Each subcommand is one stage; `ntl experiment` runs them all. "
        "`ntl COMMAND --help` explains a command's options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error, user errors included")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of any error, user errors included")
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
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(args._module.run(args) or 0)
    except Exception as err:
        message = _user_error(err, command or "")
        if message is None or "--debug" in argv:
            raise
        print(f"ntl {command}: error: {message}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """The error classes printed as one line: `ntl.errors.UserError` and its subclasses, and the
    tokenizer errors of `ntl.numbers` (plain ``FileNotFoundError`` / ``ValueError`` subclasses)."""
    from ntl.errors import UserError
    from ntl.numbers import TokenizerLoadError, TokenizerNotFound

    return (UserError, TokenizerNotFound, TokenizerLoadError)


def _user_error(err: Exception, command: str) -> str | None:
    """The one-line message of an error the user can fix, or None for a bug."""
    from ntl._optional import as_missing_dependency

    user_errors = _user_errors()
    if isinstance(err, ModuleNotFoundError) and not isinstance(err, user_errors):
        err = as_missing_dependency(err, f"ntl {command}") or err
    if not isinstance(err, user_errors):
        return None
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
