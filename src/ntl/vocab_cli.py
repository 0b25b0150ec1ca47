"""Show which tokens of a tokenizer the Number Token Loss sees, their values, and the coverage.

A tokenizer is a tokenizer folder, a tokenizer.json, a SentencePiece .model, a WordPiece
vocab.txt, or a Hugging Face hub name already in your local cache (nothing is downloaded).

Examples:
  ntl vocab --tokenizer ./my-tokenizer --mode digits --split-digits --text "12345 + 678"
  ntl vocab --table --tokenizer tokenizers/*     # one markdown row per tokenizer
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from ntl.errors import UsageError

DEFAULT_TEXT = "12345 + 678 = 13023.5; -0.25 * 4 = -1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer", action="extend", nargs="+", default=None, metavar="TOKENIZER",
        help="a tokenizer folder, a tokenizer.json, a SentencePiece .model, a WordPiece vocab.txt, "
        "or a hub name in the local Hugging Face cache (never downloaded); several with --table",
    )
    parser.add_argument(
        "--mode", choices=("digits", "numbers"), default="digits",
        help="digits: single ASCII digits 0-9 (the paper's setting); numbers: any plain decimal "
        "token such as 123 or 3.5",
    )
    parser.add_argument(
        "--split-digits", action="store_true",
        help="first make every digit its own token (ntl.numbers.split_digits), as the paper's T5",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=None,
        help="the model's output size if larger than the tokenizer's (padded embeddings)",
    )
    parser.add_argument(
        "--text", action="append", default=None,
        help="sample text for the coverage figure (repeatable); default: a mixed arithmetic line",
    )
    parser.add_argument("--show", type=int, default=30, help="how many number tokens to list")
    parser.add_argument(
        "--table", action="store_true",
        help="print one markdown row per --tokenizer: number-token counts per mode and coverage "
        "of --text",
    )


def load(spec: str) -> Any:
    """The tokenizer named by a ``--tokenizer`` value, or a `UsageError` that says why not."""
    from ntl.numbers import TokenizerLoadError, TokenizerNotFound, load_tokenizer

    try:
        return load_tokenizer(spec)
    except (TokenizerNotFound, TokenizerLoadError) as err:
        raise UsageError(f"--tokenizer: {err}") from None


def build_vocab(tokenizer: Any, mode: str, vocab_size: int | None, spec: str = "the tokenizer") -> Any:
    """The `NumberVocab`, with a bad ``--vocab-size`` or no number tokens as a `UsageError`
    (``spec``: the ``--tokenizer`` value, named in the message)."""
    from ntl.numbers import NoNumberTokens, NumberCoverageWarning, NumberVocab

    if vocab_size is not None and vocab_size <= 0:
        raise UsageError(f"--vocab-size {vocab_size}: must be a positive number of logits")
    with warnings.catch_warnings():  # this command prints the coverage itself
        warnings.simplefilter("ignore", NumberCoverageWarning)
        try:
            return NumberVocab.from_tokenizer(tokenizer, mode=mode, vocab_size=vocab_size)
        except NoNumberTokens:
            raise UsageError(no_numbers_message(tokenizer, mode, spec)) from None
        except ValueError as err:
            raise UsageError(f"--vocab-size {vocab_size}: {err}") from None


def no_numbers_message(tokenizer: Any, mode: str, spec: str) -> str:
    """Why ``--mode mode`` finds no number tokens, and the option that helps, if one does.

    ``--split-digits`` changes how text is split, not the vocabulary, so it never helps here;
    ``--mode numbers`` helps when the vocabulary has multi-digit tokens but no single digits.
    """
    from ntl.numbers import NumberCoverageWarning

    in_numbers = 0
    if mode == "digits":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumberCoverageWarning)
            in_numbers = _count(_vocab_or_none(tokenizer, "numbers"))
    fix = (f"try --mode numbers ({in_numbers} of its tokens are plain decimals such as 123)"
           if in_numbers else
           "none of its tokens is a digit or a plain decimal in either --mode, and --split-digits "
           "cannot add tokens: the loss needs a tokenizer whose vocabulary has the digits 0-9")
    return f"--tokenizer {spec} has no number tokens in --mode {mode}, so the loss would see nothing; {fix}"


def coverage_hint(mode: str, split: bool) -> str:
    """What to try when some digits do not land on number tokens: only options not yet given."""
    fixes = []
    if not split:
        fixes.append("--split-digits")
    if mode == "digits":
        fixes.append("--mode numbers")
    if not fixes:
        return ("coverage < 100% with every digit split: some digits have no token of their own "
                "in this vocabulary (see the split pieces above)")
    return f"coverage < 100%: the loss misses some digits; try {' or '.join(fixes)}"


def _vocab_or_none(tokenizer: Any, mode: str) -> Any:
    """The tokenizer's `NumberVocab` in ``mode``, or None when it has no number tokens there."""
    from ntl.numbers import NoNumberTokens, NumberVocab

    try:
        return NumberVocab.from_tokenizer(tokenizer, mode=mode)
    except NoNumberTokens:
        return None


def _count(vocab: Any) -> int:
    return 0 if vocab is None else vocab.num_number_tokens


def _coverage(vocab: Any, texts: list[str]) -> str:
    return "0%" if vocab is None else f"{vocab.coverage(texts):.0%}"


def tokenizer_table(specs: list[str], texts: list[str]) -> str:
    """Markdown table: each tokenizer's number tokens and coverage in both modes."""
    from ntl.numbers import NoNumberTokens, NumberCoverageWarning, NumberVocab, split_digits

    rows = [
        "| tokenizer | vocab | digit tokens | coverage (digits) | number tokens | coverage (numbers) "
        "| coverage (split_digits + digits) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumberCoverageWarning)
        for spec in specs:
            tok = load(spec)
            size = max(tok.get_vocab().values()) + 1
            digits, numbers = (_vocab_or_none(tok, mode) for mode in ("digits", "numbers"))
            try:
                split = f"{NumberVocab.from_tokenizer(split_digits(tok)).coverage(texts):.0%}"
            except TypeError:  # a slow (python) tokenizer has no pre-tokenizer to extend
                split = "n/a (slow tokenizer)"
            except NoNumberTokens:
                split = "0%"
            rows.append(
                f"| {Path(spec).name or spec} | {size} | {_count(digits)} | "
                f"{_coverage(digits, texts)} | {_count(numbers)} | "
                f"{_coverage(numbers, texts)} | {split} |"
            )
    return "\n".join(rows)


def describe(spec: str, args: argparse.Namespace, texts: list[str]) -> None:
    """Print one tokenizer's number tokens, their values and the coverage of ``texts``."""
    from ntl.numbers import split_digits, tokenize_pieces

    tokenizer = load(spec)
    if args.split_digits:
        try:
            tokenizer = split_digits(tokenizer)
        except TypeError:
            raise UsageError(f"--split-digits: {spec} is a slow (Python) tokenizer without a "
                             "pre-tokenizer to extend; use its tokenizer.json instead") from None
    vocab = build_vocab(tokenizer, args.mode, args.vocab_size, spec)
    values = sorted(set(vocab.number_values.tolist()))
    print(f"tokenizer      {spec} ({type(tokenizer).__name__}, {vocab.vocab_size} ids)")
    print(f"mode           {args.mode}{' (digits split)' if args.split_digits else ''}")
    print(f"number tokens  {vocab.num_number_tokens} ({len(values)} distinct values, "
          f"{min(values):g} .. {max(values):g})")
    pairs = [f"{tok!r}={val:g}" for tok, val in zip(vocab.number_tokens, vocab.number_values.tolist())]
    more = f" ... (+{len(pairs) - args.show})" if len(pairs) > args.show else ""
    print(f"tokens         {', '.join(pairs[: args.show])}{more}")
    coverage = vocab.coverage(texts)
    print(f"coverage       {coverage:.1%} of digit characters land on number tokens")
    for text in texts:
        print(f"  split        {text!r} -> {tokenize_pieces(tokenizer, text)}")
    if coverage < 1:
        print(f"hint           {coverage_hint(args.mode, args.split_digits)}")


def run(args: argparse.Namespace) -> int:
    texts = args.text or [DEFAULT_TEXT]
    if not args.tokenizer:
        raise UsageError("give --tokenizer PATH_OR_NAME (a tokenizer folder, file or cached hub name)")
    if args.table:
        print(tokenizer_table(args.tokenizer, texts))
        return 0
    for i, spec in enumerate(args.tokenizer):
        if i:
            print()
        describe(spec, args, texts)
    return 0
