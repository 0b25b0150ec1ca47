"""Show which tokens of a tokenizer the Number Token Loss sees, their values, and the coverage.

Examples:
  ntl vocab --tokenizer t5-small --mode digits --split-digits --text "12345 + 678"
  ntl vocab --table          # every tokenizer in ../shared/tokenizers, as a markdown table
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_TEXT = "12345 + 678 = 13023.5; -0.25 * 4 = -1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        help="a folder under ../shared/tokenizers (e.g. t5-small, llama3), a tokenizer folder, "
        "a tokenizer.json, a SentencePiece .model or a WordPiece vocab.txt",
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
        help="instead of one tokenizer, print a markdown table of every tokenizer under "
        "../shared/tokenizers: number-token counts per mode and coverage of --text",
    )


def tokenizer_table(texts: list[str]) -> str:
    """Markdown table: each shared tokenizer's number tokens and coverage in both modes."""
    from ntl.numbers import SHARED_TOKENIZERS, NumberVocab, load_tokenizer, split_digits

    rows = [
        "| tokenizer | vocab | digit tokens | coverage (digits) | number tokens | coverage (numbers) "
        "| coverage (split_digits + digits) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for folder in sorted(p for p in SHARED_TOKENIZERS.iterdir() if p.is_dir()):
        tok = load_tokenizer(folder)
        digits = NumberVocab.from_tokenizer(tok, mode="digits")
        numbers = NumberVocab.from_tokenizer(tok, mode="numbers")
        try:
            split = f"{NumberVocab.from_tokenizer(split_digits(tok)).coverage(texts):.0%}"
        except TypeError:  # a slow (python) tokenizer has no pre-tokenizer to extend
            split = "n/a (slow tokenizer)"
        rows.append(
            f"| {folder.name} | {digits.vocab_size} | {digits.num_number_tokens} | "
            f"{digits.coverage(texts):.0%} | {numbers.num_number_tokens} | "
            f"{numbers.coverage(texts):.0%} | {split} |"
        )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    from ntl.numbers import NumberVocab, load_tokenizer, split_digits, tokenize_pieces

    texts = args.text or [DEFAULT_TEXT]
    if args.table:
        print(tokenizer_table(texts))
        return 0
    if args.tokenizer is None:
        print("error: give --tokenizer PATH_OR_NAME (or --table for all shared tokenizers)",
              file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(args.tokenizer)
    if args.split_digits:
        tokenizer = split_digits(tokenizer)
    vocab = NumberVocab.from_tokenizer(tokenizer, mode=args.mode, vocab_size=args.vocab_size)
    try:
        vocab.require_numbers()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    values = sorted(set(vocab.number_values.tolist()))
    print(f"tokenizer      {args.tokenizer} ({type(tokenizer).__name__}, {vocab.vocab_size} ids)")
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
        print("hint           coverage < 100%: the loss misses some digits; try --split-digits "
              "or --mode numbers")
    return 0
