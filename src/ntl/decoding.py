"""Number-aware decoding: turn a language model's answer distribution into the number a user wants.

Greedy decoding returns the most likely token at each place, which is not the number that
minimises the error one cares about. For an answer that is an estimate (a price, a measurement),
drawing ``k`` answers and returning the **median** of their numbers minimises the expected
absolute error, the **mean** the expected squared error (regression-aware inference, Lukasik et
al., 2024). This module does that for any Hugging Face model with ``generate``, encoder-decoder or
decoder-only:

=====================  ==========================================================================
``greedy``             the most likely token at each step (``num_beams=1``).
``beam``               beam search with ``k`` beams; the best beam.
``median-of-k``        ``k`` answers (ancestral samples, or the ``k`` best beams), the median of
                       the numbers they parse to.
``mean-of-k``          the same, their mean.
``expected-digits``    greedy, then each generated digit is replaced by its expected value under
                       the model's distribution over the digit tokens at that step (given the
                       greedy prefix), placed by its position in the number:
                       ``sign·Σ E[digit]·10^place``. For tokenizers that write each digit as its
                       own token (``ntl.numbers.split_digits``); a continuous answer.
=====================  ==========================================================================

Invalid answers (text that is not exactly one number, :func:`ntl.parsing.parse_number`) are
skipped by the median and mean and counted; an answer whose ``k`` samples are all invalid is
invalid. The pure part (:func:`aggregate_numbers`, :func:`answer_from_samples`,
:func:`expected_digits`, :func:`expected_number`) needs torch and numpy only;
:func:`generate_numbers` is a thin call of ``model.generate``. Example::

    from ntl.decoding import Decoding, generate_numbers
    inputs = tokenizer(["carat 0.23, cut Ideal, ..."], return_tensors="pt")
    answers = generate_numbers(model, tokenizer, inputs, Decoding("median-of-k", k=16))
    answers[0].value, answers[0].n_invalid      # the median price, invalid samples among the 16
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ntl.parsing import NumberParts, format_number, number_parts, parse_number

__all__ = [
    "DECODINGS",
    "Decoding",
    "NumberAnswer",
    "aggregate_numbers",
    "answer_from_samples",
    "answers_from_texts",
    "expected_digits",
    "expected_number",
    "generate_numbers",
]

#: Decoding methods, by name.
DECODINGS: tuple[str, ...] = ("greedy", "beam", "median-of-k", "mean-of-k", "expected-digits")
#: Where the ``k`` answers of ``median-of-k`` / ``mean-of-k`` come from.
SOURCES: tuple[str, ...] = ("sample", "beams")
_AGGREGATE = {"median-of-k": "median", "mean-of-k": "mean"}


@dataclass(frozen=True)
class Decoding:
    """How to decode a number (see the module docstring for the methods).

    Attributes:
        method: one of :data:`DECODINGS`.
        k: beams for ``beam``; answers aggregated for ``median-of-k`` / ``mean-of-k``. Set to 1
            for ``greedy`` and ``expected-digits``.
        source: ``"sample"`` (``k`` ancestral samples at ``temperature``, no top-k / top-p
            truncation) or ``"beams"`` (the ``k`` best beams of a beam search, unweighted);
            only for ``median-of-k`` / ``mean-of-k``.
        temperature: sampling temperature (``source="sample"`` only); 1.0 samples the model's
            own distribution.
        seed: seed of the sampling; the same inputs, batch and seed give the same samples.
    """

    method: str = "greedy"
    k: int = 1
    source: str = "sample"
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in DECODINGS:
            raise ValueError(f"unknown decoding {self.method!r}; use one of {', '.join(DECODINGS)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"Decoding.k={self.k!r}; expected an integer >= 1 (answers or beams)")
        if self.source not in SOURCES:
            raise ValueError(f"Decoding.source={self.source!r}; use one of {', '.join(SOURCES)}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"Decoding.temperature={self.temperature!r}; expected a finite float > 0")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"Decoding.seed={self.seed!r}; expected an integer")
        if self.method in ("greedy", "expected-digits"):
            object.__setattr__(self, "k", 1)  # one answer; a k given along is meaningless

    @property
    def aggregate(self) -> str | None:
        """``"median"``, ``"mean"`` or ``None`` (one answer per question)."""
        return _AGGREGATE.get(self.method)

    @property
    def samples(self) -> bool:
        """Whether generation draws random samples (needs a seed)."""
        return self.aggregate is not None and self.source == "sample"

    @property
    def name(self) -> str:
        """A short name for files and tables: ``greedy``, ``beam-4``, ``median-of-8``,
        ``mean-of-8-beams``, ``median-of-8-t0.7``, ``expected-digits``."""
        if self.method in ("greedy", "expected-digits"):
            return self.method
        if self.method == "beam":
            return f"beam-{self.k}"
        name = f"{self.aggregate}-of-{self.k}"
        if self.source == "beams":
            return name + "-beams"
        return name if self.temperature == 1.0 else f"{name}-t{self.temperature:g}"

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``model.generate`` for this decoding."""
        if self.method == "beam" or (self.aggregate and self.source == "beams"):
            kwargs: dict[str, Any] = {"do_sample": False, "num_beams": self.k, "early_stopping": True}
            if self.aggregate:
                kwargs["num_return_sequences"] = self.k
            return kwargs
        if self.aggregate:  # ancestral sampling from the model's distribution, untruncated
            return {"do_sample": True, "num_beams": 1, "num_return_sequences": self.k,
                    "temperature": float(self.temperature), "top_k": 0, "top_p": 1.0}
        kwargs = {"do_sample": False, "num_beams": 1}
        if self.method == "expected-digits":
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        return kwargs


@dataclass(frozen=True)
class NumberAnswer:
    """One question's decoded answer.

    Attributes:
        text: the answer as text: the generated text (``greedy``, ``beam``), or the decoded
            number written out by :func:`ntl.parsing.format_number` (``median-of-k``,
            ``mean-of-k``, ``expected-digits``); when no number could be decoded, the first
            generated text.
        value: the number, or ``None`` when the answer is invalid.
        samples: the generated texts behind it (one for ``greedy`` / ``beam`` /
            ``expected-digits``, ``k`` for the aggregates).
        sample_values: each sample's parsed number (``None`` = invalid).
    """

    text: str
    value: float | None
    samples: tuple[str, ...]
    sample_values: tuple[float | None, ...]

    @property
    def valid(self) -> bool:
        return self.value is not None

    @property
    def n_invalid(self) -> int:
        """Samples that did not parse to a number."""
        return sum(v is None for v in self.sample_values)


def aggregate_numbers(values: Sequence[float | None], how: str) -> tuple[float | None, int]:
    """The median or mean of the valid ``values`` and how many were invalid.

    Args:
        values: parsed numbers; ``None``, NaN and ±inf count as invalid and are skipped.
        how: ``"median"`` (the middle value; the mean of the two middle ones for an even count,
            as ``numpy.median``) or ``"mean"``.

    Returns:
        ``(value, n_invalid)``; ``value`` is ``None`` when no value is valid.

    Raises:
        ValueError: ``how`` is neither ``"median"`` nor ``"mean"``.
    """
    if how not in ("median", "mean"):
        raise ValueError(f"aggregate {how!r} is unknown; use 'median' or 'mean'")
    valid = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n_invalid = len(values) - len(valid)
    if not valid:
        return None, n_invalid
    arr = np.asarray(valid, dtype=np.float64)
    value = float(np.median(arr) if how == "median" else arr.mean())
    return value, n_invalid


def answer_from_samples(
    samples: Sequence[str],
    how: str | None = None,
    parse: Callable[[str], float | None] = parse_number,
) -> NumberAnswer:
    """One question's :class:`NumberAnswer` from its generated texts.

    Args:
        samples: the generated texts (exactly one when ``how`` is ``None``).
        how: ``"median"``, ``"mean"``, or ``None`` for a single answer taken as it is.
        parse: text -> number or ``None``; :func:`ntl.parsing.parse_number` by default.

    Raises:
        ValueError: no samples, or several with ``how=None``.
    """
    samples = tuple(samples)
    if not samples:
        raise ValueError("answer_from_samples needs at least one generated text")
    values = tuple(parse(s) for s in samples)
    if how is None:
        if len(samples) != 1:
            raise ValueError(f"{len(samples)} texts for one answer; pass how='median' or 'mean'")
        return NumberAnswer(text=samples[0], value=values[0], samples=samples, sample_values=values)
    value, _ = aggregate_numbers(values, how)
    text = format_number(value) if value is not None else samples[0]
    return NumberAnswer(text=text, value=value, samples=samples, sample_values=values)


def answers_from_texts(
    texts: Sequence[str], k: int, how: str | None = None,
    parse: Callable[[str], float | None] = parse_number,
) -> list[NumberAnswer]:
    """Group ``B·k`` generated texts, ``k`` consecutive ones per question (the order of
    ``generate(..., num_return_sequences=k)``), into ``B`` answers.

    Raises:
        ValueError: ``len(texts)`` is not a multiple of ``k``.
    """
    if k < 1 or len(texts) % k:
        raise ValueError(f"{len(texts)} generated texts do not split into groups of k={k}")
    return [answer_from_samples(texts[i : i + k], how, parse) for i in range(0, len(texts), k)]


def expected_digits(
    logits: torch.Tensor, number_ids: torch.Tensor, number_values: torch.Tensor
) -> torch.Tensor:
    """The expected digit at each step: ``Σ_j softmax(logits[number_ids])_j · number_values_j``.

    The softmax runs over the digit tokens only (the distribution *given* that a digit is
    written), so the probability of other tokens does not pull the value towards 0.

    Args:
        logits: (..., V) raw next-token logits.
        number_ids: (K,) int64 ids of the digit tokens.
        number_values: (K,) their values (0-9; the same value may appear under several ids).

    Returns:
        (...) float64 expected values.
    """
    if number_ids.numel() == 0:
        raise ValueError("no digit tokens: the tokenizer must write digits as tokens")
    digit_logits = logits.index_select(-1, number_ids.to(logits.device)).double()
    probs = torch.softmax(digit_logits, dim=-1)
    return (probs * number_values.to(probs.device, torch.float64)).sum(-1)


def expected_number(parts: NumberParts, digit_means: Sequence[float]) -> float:
    """``sign · Σ_i E[d_i]·10^place_i · 10^exponent`` over the digits of a number.

    Args:
        parts: the number as written greedily (:func:`ntl.parsing.number_parts`); it fixes the
            sign, where the point is and the exponent.
        digit_means: the expected value of each digit in writing order: one per digit of
            ``int_digits`` then ``frac_digits`` (the exponent's digits are kept as written and
            take no entry).

    Raises:
        ValueError: ``len(digit_means)`` is not the number of mantissa digits.
    """
    n_int, n_frac = len(parts.int_digits), len(parts.frac_digits)
    if len(digit_means) != n_int + n_frac:
        raise ValueError(
            f"{len(digit_means)} expected digits for a number with {n_int + n_frac} digits "
            f"({parts.int_digits}.{parts.frac_digits})"
        )
    places = [n_int - 1 - i for i in range(n_int)] + [-(i + 1) for i in range(n_frac)]
    total = math.fsum(float(m) * 10.0**p for m, p in zip(digit_means, places))
    return parts.sign * total * 10.0**parts.exponent


def generate_numbers(
    model: Any,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    decoding: Decoding | None = None,
    *,
    max_new_tokens: int = 32,
    number_vocab: Any = None,
    **generate_kwargs: Any,
) -> list[NumberAnswer]:
    """Decode one number per input row with ``model.generate``.

    Args:
        model: a Hugging Face model with ``generate`` (encoder-decoder or decoder-only; for
            decoder-only models the prompt is cut off the output).
        tokenizer: its tokenizer (``batch_decode``; and, for ``expected-digits``, its digit
            tokens unless ``number_vocab`` is given).
        inputs: the batch, ``{"input_ids": (B, S), "attention_mask": (B, S), ...}`` on the
            model's device (decoder-only models: left-padded).
        decoding: how to decode; greedy by default.
        max_new_tokens: answer length limit in tokens.
        number_vocab: a :class:`ntl.numbers.NumberVocab` in ``digits`` mode for
            ``expected-digits`` (built from ``tokenizer`` when omitted).
        generate_kwargs: more ``generate`` arguments (``pad_token_id``, ``eos_token_id``,
            ``suppress_tokens``, ...); they override the decoding's.

    Returns:
        ``B`` answers, in input order.

    Raises:
        ValueError: ``expected-digits`` with a tokenizer that writes several digits in one
            token (the message says how to split them).
    """
    decoding = decoding or Decoding()
    prompt_len = int(inputs["input_ids"].shape[1])
    causal = not bool(getattr(model.config, "is_encoder_decoder", False))
    kwargs = {"max_new_tokens": max_new_tokens, **decoding.generate_kwargs(), **generate_kwargs}
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if decoding.samples:
            torch.manual_seed(decoding.seed)
        out = model.generate(**inputs, **kwargs)
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    new = sequences[:, prompt_len:] if causal else sequences
    texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    if decoding.method == "expected-digits":
        steps = torch.stack(list(out.logits), dim=1)  # (B, T, V) raw logits
        return _expected_answers(texts, sequences[:, -steps.shape[1] :], steps, tokenizer, number_vocab)
    return answers_from_texts(texts, decoding.k if decoding.aggregate else 1, decoding.aggregate)


def _expected_answers(
    texts: Sequence[str], tokens: torch.Tensor, logits: torch.Tensor, tokenizer: Any, vocab: Any
) -> list[NumberAnswer]:
    """``expected-digits`` answers from the greedy texts, their (B, T) tokens and (B, T, V) logits."""
    if vocab is None:
        from ntl.numbers import NumberVocab

        vocab = NumberVocab.from_tokenizer(tokenizer, mode="digits", vocab_size=logits.shape[-1])
    if vocab.mode != "digits":
        raise ValueError(f"expected-digits needs a NumberVocab in mode='digits', got mode={vocab.mode!r}")
    table = vocab.table(logits.device)
    means = expected_digits(logits, table.number_ids, table.number_values)  # (B, T)
    is_digit = table.is_number[tokens]  # (B, T)
    answers = []
    for i, text in enumerate(texts):
        greedy = answer_from_samples([text])
        parts = number_parts(text)
        if parts is None:
            answers.append(greedy)
            continue
        row = means[i][is_digit[i]].tolist()
        written = sum(c.isdecimal() for c in text)  # what the parser reads as digits (\d)
        if len(row) != written:
            raise ValueError(
                f"expected-digits: the answer {text!r} has {written} digits but {len(row)} digit "
                "tokens; the tokenizer writes several digits in one token -- make every digit a "
                "token with ntl.numbers.split_digits(tokenizer), or use another decoding"
            )
        n_mantissa = len(parts.int_digits) + len(parts.frac_digits)
        value = expected_number(parts, row[:n_mantissa])
        answers.append(NumberAnswer(text=format_number(value), value=value, samples=greedy.samples,
                                    sample_values=greedy.sample_values))
    return answers
