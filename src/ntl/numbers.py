"""The number vocabulary: which tokens of a tokenizer are numbers, and what they are worth.

`NumberVocab` maps every token id of a tokenizer to its numeric value (NaN for non-numbers),
its digit count, and keeps the sorted ids of the number tokens. It is built from a Hugging Face
tokenizer, a `tokenizers.Tokenizer`, a SentencePiece model, a plain ``{token: id}`` mapping, or a
tokenizer folder / cached hub name (`load_tokenizer`), and never mutates the tokenizer.
Tokenizer libraries are imported lazily: ``import ntl`` needs torch only.

Rules (see `number_value`):
- the tokenizer's space/continuation markers are stripped first: ``▁`` (SentencePiece),
  ``Ġ`` (byte-level BPE), a plain leading space, and ``##`` (WordPiece continuation);
- ``digits`` mode: the stripped text is one ASCII digit ``0``-``9`` (the paper's main setting);
- ``numbers`` mode: the stripped text is a plain ASCII decimal ``123`` or ``3.5``
  (digits, optionally one ``.`` followed by digits);
- never numbers: non-ASCII digits (``٣``, ``³``), ``inf``, ``nan``, ``1e3``, ``1_000``, ``-5``,
  ``.5``, ``5.`` (the sign and a lone point are separate tokens, handled by the number-level loss).
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODES = ("digits", "numbers")
# Markers a tokenizer puts before a word piece: SentencePiece, byte-level BPE, plain space.
_SPACE_MARKERS = "\u2581\u0120 "
_WORDPIECE_CONTINUATION = "##"
_DIGIT = re.compile(r"[0-9]")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# Numbers of several lengths, tokenized to see whether digits mode sees every digit.
COVERAGE_PROBE = "0 7 12 345 2048 13023.5 65536 1000000"


class NoNumberTokens(ValueError):
    """The tokenizer (or the chosen ids) has no number tokens in the given mode."""


def _no_numbers_message(mode: str, tokens: Iterable[str] | None) -> str:
    """Why a vocabulary has no number tokens in ``mode``, and the fix that works, if one does.

    ``split_digits`` changes how text is split, not the vocabulary, so it never adds number
    tokens; ``mode='numbers'`` helps when ``tokens`` hold plain decimals but no single digits.
    ``tokens=None``: a selection of token ids (``restricted``) held none.
    """
    if tokens is None:
        return (f"None of the given token ids is a number token in mode={mode!r}; pass ids that "
                "include the number tokens the loss should see.")
    in_numbers = 0 if mode == "numbers" else sum(number_value(t, "numbers") is not None for t in tokens)
    fix = (f"Use mode='numbers': {in_numbers} of its tokens are plain decimals such as '123'."
           if in_numbers else
           "None of its tokens is a digit or a plain decimal, in either mode, and split_digits "
           "cannot add tokens: the Number Token Loss needs a tokenizer whose vocabulary has the "
           "digits 0-9.")
    return (f"The tokenizer has no number tokens in mode={mode!r}, so the Number Token Loss would "
            f"see nothing. {fix}")


class NumberCoverageWarning(UserWarning):
    """The tokenizer writes some digits inside multi-digit tokens that the loss cannot see."""


def vocab_size_hint(logits_size: int, vocab_size: int) -> str:
    """Why ``logits_size`` classes do not fit a NumberVocab of ``vocab_size``, and the fix."""
    if logits_size > vocab_size:
        return (
            f"logits have {logits_size} classes but the NumberVocab has vocab_size={vocab_size}: "
            f"build it with NumberVocab.from_tokenizer(tokenizer, vocab_size={logits_size}) "
            "(= model.config.vocab_size; padded embeddings are fine)."
        )
    return (
        f"logits have {logits_size} classes but the NumberVocab has vocab_size={vocab_size}: "
        f"if the tokenizer has at most {logits_size} ids, build the vocab with "
        f"vocab_size={logits_size}; if it has more, the model cannot predict all its tokens "
        "(a different tokenizer, or call model.resize_token_embeddings(len(tokenizer)))."
    )


def strip_marker(token: str) -> str:
    """Token text without the tokenizer's leading space/continuation marker (``▁7`` -> ``7``)."""
    if token.startswith(_WORDPIECE_CONTINUATION):
        return token[len(_WORDPIECE_CONTINUATION) :]
    return token.lstrip(_SPACE_MARKERS)


def number_value(token: str, mode: str = "digits") -> float | None:
    """The numeric value of one token's text in ``mode``, or None if it is not a number token."""
    text = strip_marker(token)
    pattern = _DIGIT if mode == "digits" else _DECIMAL
    if pattern.fullmatch(text) is None:
        return None
    return float(text)


@dataclass(frozen=True)
class NumberTable:
    """The tensors the losses read, all on one device. Built by `NumberVocab.table`.

    Attributes:
        values: float32 (V,), token value, NaN for non-number tokens.
        is_number: bool (V,).
        number_ids: int64 (K,), ids of number tokens, ascending.
        number_values: float32 (K,), their values.
        digit_counts: int64 (V,), digits in each number token (``3.5`` -> 2), 0 elsewhere.
        frac_digits: int64 (V,), digits after the point of a decimal number token (``3.5``
            -> 1, ``12.25`` -> 2), 0 elsewhere (the number-level loss places them).
        is_dot: bool (V,), tokens whose text is ``.`` (decimal point for number-level loss).
        is_minus: bool (V,), tokens whose text is ``-``.
        value_span: max - min of the number values (the largest token distance).
        min_gap: the smallest non-zero distance between two number values (1 for digits).
    """

    values: torch.Tensor
    is_number: torch.Tensor
    number_ids: torch.Tensor
    number_values: torch.Tensor
    digit_counts: torch.Tensor
    frac_digits: torch.Tensor
    is_dot: torch.Tensor
    is_minus: torch.Tensor
    value_span: float
    min_gap: float

    @property
    def vocab_size(self) -> int:
        return self.values.shape[0]

    def to(self, device: torch.device | str) -> NumberTable:
        """A copy of the tables on ``device`` (floats stay float32)."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("values", "is_number", "number_ids", "number_values", "digit_counts",
                         "frac_digits", "is_dot", "is_minus")
        }
        return NumberTable(**moved, value_span=self.value_span, min_gap=self.min_gap)


class NumberVocab:
    """Per-token numeric values of a tokenizer's vocabulary.

    Build it with `from_tokenizer` (any tokenizer kind) or `from_vocab` (a ``{token: id}``
    mapping); a vocabulary without number tokens in ``mode`` raises `NoNumberTokens` (a
    ValueError) at once, saying how to get some. ``vocab_size`` may exceed the tokenizer's size
    (models pad their embeddings, e.g. Qwen2: tokenizer 151,646, model 151,936); the padding
    ids are non-numbers.
    """

    def __init__(
        self,
        token_to_id: Mapping[str, int],
        mode: str = "digits",
        vocab_size: int | None = None,
        tokenizer: Any = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not supported; use one of {MODES}.")
        if not token_to_id:
            raise ValueError("The token -> id mapping is empty; pass the tokenizer's vocabulary.")
        needed = max(token_to_id.values()) + 1
        if vocab_size is None:
            vocab_size = needed
        if vocab_size < needed:
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than the tokenizer's vocabulary ({needed} ids): "
                f"pass the model's output size (logits.shape[-1]), which must be >= {needed}."
            )
        self.mode = mode
        self.vocab_size = int(vocab_size)
        self._tokenizer = tokenizer  # kept only to tokenize text for `coverage`; never modified
        self._mapping = dict(token_to_id)

        values = torch.full((self.vocab_size,), float("nan"), dtype=torch.float32)
        digit_counts = torch.zeros(self.vocab_size, dtype=torch.int64)
        frac_digits = torch.zeros(self.vocab_size, dtype=torch.int64)
        is_dot = torch.zeros(self.vocab_size, dtype=torch.bool)
        is_minus = torch.zeros(self.vocab_size, dtype=torch.bool)
        for token, idx in token_to_id.items():
            value = number_value(token, mode)
            if value is not None:
                values[idx] = value
                digit_counts[idx] = sum(ch.isdigit() for ch in strip_marker(token))
                frac_digits[idx] = len(strip_marker(token).partition(".")[2])
            stripped = strip_marker(token)
            is_dot[idx] = stripped == "."
            is_minus[idx] = stripped == "-"
        self.values = values
        self.digit_counts = digit_counts
        self.frac_digits = frac_digits
        self.number_ids = torch.nonzero(~torch.isnan(values)).flatten()
        if self.number_ids.numel() == 0:
            raise NoNumberTokens(_no_numbers_message(mode, token_to_id))
        self.number_values = values[self.number_ids]
        id_to_token = {idx: tok for tok, idx in token_to_id.items()}
        self.number_tokens = [id_to_token[int(i)] for i in self.number_ids]
        self._is_dot = is_dot
        self._is_minus = is_minus
        self._tables: dict[torch.device, NumberTable] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_vocab(
        cls, token_to_id: Mapping[str, int], mode: str = "digits", vocab_size: int | None = None
    ) -> NumberVocab:
        """From a plain ``{token: id}`` mapping."""
        return cls(token_to_id, mode=mode, vocab_size=vocab_size)

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, mode: str = "digits", vocab_size: int | None = None
    ) -> NumberVocab:
        """From a Hugging Face tokenizer, a `tokenizers.Tokenizer`, a SentencePiece processor,
        a ``{token: id}`` mapping, or anything `load_tokenizer` takes (a tokenizer folder or file,
        a hub name already in the local Hugging Face cache).

        In ``digits`` mode, warns (`NumberCoverageWarning`) when the tokenizer writes digits
        inside multi-digit tokens (Llama-3: ``2048`` -> ``204``, ``8``), which the loss would miss.
        """
        if isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(tokenizer)
        vocab = cls(_token_to_id(tokenizer), mode=mode, vocab_size=vocab_size,
                    tokenizer=None if isinstance(tokenizer, Mapping) else tokenizer)
        if mode == "digits":
            vocab._warn_if_digits_missed()
        return vocab

    def _warn_if_digits_missed(self) -> None:
        """Warn when digits mode misses digits this tokenizer writes (see `from_tokenizer`)."""
        if self._tokenizer is not None:
            coverage = self.coverage([COVERAGE_PROBE])
            if not coverage < 1:
                return
            sample = tokenize_pieces(self._tokenizer, "2048")
            what = f"{coverage:.0%} of the digits in {COVERAGE_PROBE!r} ('2048' -> {sample})"
        else:  # a bare mapping: judge by the vocabulary alone
            multi = [t for t in self._mapping if len(_DIGIT.findall(strip_marker(t))) > 1
                     and number_value(t, "numbers") is not None]
            if not multi:
                return
            what = f"none of the digits inside its {len(multi)} multi-digit tokens ({multi[:3]} ...)"
        warnings.warn(
            f"mode='digits' sees only {what}: the Number Token Loss skips digits inside "
            "multi-digit tokens. Use mode='numbers', or make every digit a token with "
            "ntl.numbers.split_digits(tokenizer).",
            NumberCoverageWarning,
            stacklevel=3,
        )

    def with_vocab_size(self, vocab_size: int) -> NumberVocab:
        """The same vocabulary padded to the model's output size ``vocab_size``."""
        return NumberVocab(self._mapping, self.mode, vocab_size, tokenizer=self._tokenizer)

    def restricted(self, token_ids: Iterable[int]) -> NumberVocab:
        """A copy whose number tokens are only those among ``token_ids`` (e.g. the tokens that
        occur as labels): the NTL softmax then runs over them alone. With a digit-split
        tokenizer whose labels hold bare digits, this drops the marker forms (``▁7``), on which
        probability mass would otherwise cost nothing in NTL-WAS when the target is ``7``."""
        keep = torch.zeros(self.vocab_size, dtype=torch.bool)
        ids = [int(i) for i in token_ids if 0 <= int(i) < self.vocab_size]
        keep[ids] = True
        new = copy.copy(self)
        new.values = torch.where(keep, self.values, torch.full_like(self.values, float("nan")))
        new.number_ids = torch.nonzero(~torch.isnan(new.values)).flatten()
        if new.number_ids.numel() == 0:
            raise NoNumberTokens(_no_numbers_message(self.mode, None))
        new.number_values = new.values[new.number_ids]
        kept = set(new.number_ids.tolist())
        new.number_tokens = [t for i, t in zip(self.number_ids.tolist(), self.number_tokens) if i in kept]
        new._tables = {}
        return new

    # ------------------------------------------------------------------ queries
    @property
    def num_number_tokens(self) -> int:
        return int(self.number_ids.numel())

    def table(self, device: torch.device | str = "cpu") -> NumberTable:
        """The loss lookup tables on ``device``, built once per device and cached."""
        device = torch.device(device)
        cached = self._tables.get(device)
        if cached is None:
            values = self.number_values.double()
            span = float(values.max() - values.min()) if values.numel() else 0.0
            gaps = (values[:, None] - values[None, :]).abs()
            gaps = gaps[gaps > 0]
            min_gap = float(gaps.min()) if gaps.numel() else 1.0
            cached = NumberTable(
                values=self.values,
                is_number=~torch.isnan(self.values),
                number_ids=self.number_ids,
                number_values=self.number_values,
                digit_counts=self.digit_counts,
                frac_digits=self.frac_digits,
                is_dot=self._is_dot,
                is_minus=self._is_minus,
                value_span=span,
                min_gap=min_gap,
            ).to(device)
            self._tables[device] = cached
        return cached

    def require_numbers(self) -> NumberVocab:
        """Raise `NoNumberTokens` if this vocabulary has no number tokens; return self. (The
        constructor already refuses such a vocabulary; this stays for callers that check.)"""
        if self.num_number_tokens == 0:
            raise NoNumberTokens(_no_numbers_message(self.mode, self._mapping))
        return self

    def coverage(self, texts: Iterable[str], tokenizer: Any = None) -> float:
        """Share of the ASCII digit characters in ``texts`` that land on number tokens.

        1.0 means the loss sees every digit; T5's ``▁130`` or ``3.5`` pieces in ``digits`` mode
        lower it. Returns NaN when the texts contain no digits.
        """
        tokenizer = tokenizer if tokenizer is not None else self._tokenizer
        if tokenizer is None:
            raise ValueError("coverage needs a tokenizer: pass tokenizer=... (built from a mapping).")
        covered = total = 0
        for text in texts:
            for piece in tokenize_pieces(tokenizer, text):
                digits = len(_DIGIT.findall(piece))
                total += digits
                if number_value(piece, self.mode) is not None:
                    covered += digits
        return covered / total if total else math.nan

    def __repr__(self) -> str:
        return (
            f"NumberVocab(mode={self.mode!r}, vocab_size={self.vocab_size}, "
            f"number_tokens={self.num_number_tokens})"
        )


# ---------------------------------------------------------------------- tokenizer adapters
def _token_to_id(tokenizer: Any) -> dict[str, int]:
    """The ``{token: id}`` mapping of any supported tokenizer kind."""
    if isinstance(tokenizer, Mapping):
        return dict(tokenizer)
    if hasattr(tokenizer, "id_to_piece") and hasattr(tokenizer, "get_piece_size"):  # SentencePiece
        return {tokenizer.id_to_piece(i): i for i in range(tokenizer.get_piece_size())}
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        raise TypeError(
            f"Cannot read a vocabulary from {type(tokenizer).__name__}: pass a Hugging Face "
            "tokenizer, a tokenizers.Tokenizer, a sentencepiece.SentencePieceProcessor or a dict."
        )
    try:  # tokenizers.Tokenizer takes with_added_tokens
        return dict(get_vocab(with_added_tokens=True))
    except TypeError:
        return dict(get_vocab())


def tokenize_pieces(tokenizer: Any, text: str) -> list[str]:
    """Token strings of ``text`` for any supported tokenizer kind."""
    if hasattr(tokenizer, "encode_as_pieces"):  # SentencePiece
        return list(tokenizer.encode_as_pieces(text))
    if hasattr(tokenizer, "convert_ids_to_tokens"):  # Hugging Face
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(tokenizer.convert_ids_to_tokens(ids))
    return list(tokenizer.encode(text, add_special_tokens=False).tokens)  # tokenizers.Tokenizer


class TokenizerNotFound(FileNotFoundError):
    """`load_tokenizer` found no tokenizer under the given name or path."""


class TokenizerLoadError(ValueError):
    """A path exists but holds no tokenizer `load_tokenizer` can read."""


# Files one of which every tokenizer folder holds.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(name_or_path: str | Path) -> Any:
    """Load a tokenizer as a Hugging Face tokenizer, without ever downloading anything.

    ``name_or_path`` is whatever ``transformers.AutoTokenizer.from_pretrained`` accepts — a
    tokenizer folder, or a hub name such as ``"gpt2"`` that is already in the local Hugging Face
    cache — or a single file: a ``tokenizer.json``, a SentencePiece ``.model`` or a WordPiece
    ``vocab.txt``. Raises `TokenizerNotFound` or `TokenizerLoadError` with a one-line message;
    `ntl._optional.MissingDependency` when ``transformers`` is not installed (extra ``[hf]``).
    """
    from ntl._optional import require

    transformers = require("transformers", "loading a tokenizer")
    text = str(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if isinstance(name_or_path, Path) or text.startswith((".", "/", "~")) or text.count("/") > 1:
            raise TokenizerNotFound(
                f"no tokenizer at {text!r}: no such file or folder; give a tokenizer folder, a "
                "tokenizer.json, a SentencePiece .model or a WordPiece vocab.txt"
            )
        try:  # a hub name, from the local cache only
            return transformers.AutoTokenizer.from_pretrained(text, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - OSError, HFValidationError, ...
            raise TokenizerNotFound(
                f"no tokenizer {text!r}: not a file or folder, and not a hub name in the local "
                "Hugging Face cache (ntl never downloads); give a tokenizer folder or file, or "
                f"cache it first (transformers.AutoTokenizer.from_pretrained({text!r}) online)"
            ) from err
    try:
        if path.is_file():
            return _load_tokenizer_file(transformers, path)
        if not any((path / name).exists() for name in _TOKENIZER_FILES) and not any(path.glob("*.model")):
            raise TokenizerLoadError(
                f"{text!r} holds no tokenizer: expected a tokenizer.json, vocab.json, vocab.txt or "
                "SentencePiece .model in it (a folder written by tokenizer.save_pretrained)"
            )
        if (path / "vocab.txt").exists() and not (path / "tokenizer.json").exists() and not (
            path / "tokenizer_config.json"
        ).exists():
            return transformers.BertTokenizer(vocab=str(path / "vocab.txt"))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except TokenizerLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - the tokenizer libraries raise many kinds
        raise TokenizerLoadError(f"cannot read a tokenizer from {text!r}: {_first_line(err)}") from err
    specials = set(getattr(tokenizer, "all_special_tokens", ()))
    if len(set(tokenizer.get_vocab()) - specials) <= 1:  # transformers builds a blank one from a config
        raise TokenizerLoadError(
            f"{text!r} has a tokenizer config but no vocabulary: expected a tokenizer.json, "
            "vocab.json, vocab.txt or a SentencePiece .model next to it"
        )
    return tokenizer


def _load_tokenizer_file(transformers: Any, path: Path) -> Any:
    if path.suffix == ".json":
        return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    if path.suffix == ".model":
        return transformers.LlamaTokenizer(vocab_file=str(path))
    if path.name.endswith(".txt"):
        return transformers.BertTokenizer(vocab=str(path))
    raise TokenizerLoadError(
        f"{str(path)!r} is not a tokenizer file: expected a tokenizer.json, a SentencePiece .model, "
        "a WordPiece vocab.txt, or a folder holding one"
    )


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def as_generic_fast(tokenizer: Any) -> Any:
    """The same tokenizer as a generic ``PreTrainedTokenizerFast`` (a copy).

    Model-specific classes such as ``T5Tokenizer`` rebuild their own pre-tokenizer when loaded
    with ``AutoTokenizer``, so a customised pre-tokenizer (the digit split) would be silently
    dropped by ``save_pretrained`` + ``from_pretrained``; the generic class keeps it.
    """
    from ntl._optional import require

    Tokenizer = require("tokenizers", "as_generic_fast").Tokenizer
    PreTrainedTokenizerFast = require("transformers", "as_generic_fast").PreTrainedTokenizerFast
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    specials = {
        name: getattr(tokenizer, name)
        for name in ("pad_token", "eos_token", "unk_token", "bos_token")
        if getattr(tokenizer, name, None) is not None
    }
    out = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    if out.pad_token is None and out.eos_token is not None:
        out.pad_token = out.eos_token
    return out


def split_digits(tokenizer: Any) -> Any:
    """A copy of a fast tokenizer whose pre-tokenizer splits every digit into its own piece.

    This is the paper's digit-level T5 tokenizer: ``13023.5`` -> ``1 3 0 2 3 . 5``. The digit
    split is appended after the existing pre-tokenizer so that space markers stay on the space
    piece (``▁`` ``1`` ``3``), and decoding gives back the original text. Works for Hugging Face
    fast tokenizers (returned as a generic ``PreTrainedTokenizerFast``, see `as_generic_fast`, so
    the split survives ``save_pretrained``/``AutoTokenizer``) and `tokenizers.Tokenizer`; the input
    tokenizer is not modified.
    """
    from ntl._optional import require

    tokenizers = require("tokenizers", "split_digits")
    Tokenizer, pre_tokenizers = tokenizers.Tokenizer, tokenizers.pre_tokenizers
    clone = copy.deepcopy(tokenizer)
    backend = clone if isinstance(clone, Tokenizer) else getattr(clone, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"split_digits needs a fast tokenizer (tokenizers backend), got "
            f"{type(tokenizer).__name__}; load it with ntl.numbers.load_tokenizer(path)."
        )
    digits = pre_tokenizers.Digits(individual_digits=True)
    old = backend.pre_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([old, digits] if old is not None else [digits])
    return clone if isinstance(clone, Tokenizer) else as_generic_fast(clone)
