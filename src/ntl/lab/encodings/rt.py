"""Regression Transformer (RT) number tokens (Born & Manica, 2023), as the paper's baseline.

Every digit of a number becomes one place-value token ``_d_p_`` (value d·10^p, places p from
-12 to 19, 320 tokens); the sign is the separate token ``-``::

    54      -> _5_1_ _4_0_
    13.87   -> _1_1_ _3_0_ _8_-1_ _7_-2_
    -0.4    -> - _0_0_ _4_-1_

Embedding: the token's learned embedding plus a *fixed* numeric encoding of its value
(:func:`numeric_encoding`). The RT paper adds ``(−1)^j·v/(j+1)`` per dimension j, which grows
without bound with the value (``9·10^19`` here); we use a bounded sinusoidal encoding of
``log10(v)`` instead (the same sines/cosines as transformer position encodings, with periods
from 64 down to 0.25 decades), zero for digit 0 (as the RT float encoding of 0 is zero), so that
tokens of nearby value have nearby encodings. It is a non-trainable buffer.

Decoding (:func:`rt_to_text`, :func:`parse_rt`) reads a run of place-value tokens back into the
exact decimal text (``_1_1_ _3_0_ _8_-1_`` -> ``13.8``). A run is well formed only if its places
go down by exactly one from the first to the last token and include the units place (p = 0);
anything else (rising or repeated places, gaps, a run without units digit, a place token glued
to a preceding text piece) is malformed: the strict parser returns None and the text renderer
prints the raw tokens (``_5_1__5_1_``), which :func:`ntl.lab.metrics.parse_number` rejects, so a
malformed sequence is counted invalid and never silently mis-read. Leading zeros (``_0_1_ _5_0_``
-> ``05``) and trailing decimal zeros are kept literally, as the CE arms' text would be.

``rt+ntl``: :func:`rt_number_vocab` makes a `ntl.NumberVocab` whose number tokens are the 320
place-value tokens, each valued by its *digit* d (the paper's RT+NTL), so the core losses
(``ntl.losses.functional``) apply unchanged; plain digit tokens are not number tokens there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import T5Config

from ntl.lab.encodings.common import NumberT5, is_word_char, render_pieces, tokenize_with_numbers
from ntl.numbers import NumberVocab, number_value

MIN_PLACE = -12
MAX_PLACE = 19
SIGN_TOKEN = "-"
#: ``_d_p_``: digit d, place p.
TOKEN_RE = re.compile(r"_([0-9])_(-?[0-9]+)_")


def rt_token(digit: int, place: int) -> str:
    """The token of ``digit`` at ``place``: ``rt_token(5, 1) == "_5_1_"``."""
    if not 0 <= digit <= 9 or not MIN_PLACE <= place <= MAX_PLACE:
        raise ValueError(
            f"no RT token for digit {digit} at place {place}: digits 0-9, places {MIN_PLACE}..{MAX_PLACE}"
        )
    return f"_{digit}_{place}_"


#: All 320 place-value tokens, places descending, digits ascending.
RT_TOKENS: tuple[str, ...] = tuple(
    rt_token(d, p) for p in range(MAX_PLACE, MIN_PLACE - 1, -1) for d in range(10)
)


def parse_token(token: str) -> tuple[int, int] | None:
    """``"_8_-1_"`` -> ``(8, -1)``; None for any other text (including places out of range)."""
    m = TOKEN_RE.fullmatch(token)
    if m is None:
        return None
    digit, place = int(m.group(1)), int(m.group(2))
    return (digit, place) if MIN_PLACE <= place <= MAX_PLACE else None


# ---------------------------------------------------------------------- number <-> tokens
_NUMBER_TEXT = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")


def number_to_tokens(text: str, *, truncate: bool = False) -> list[str]:
    """A number's text (``-13.87``) as RT tokens (``["-", "_1_1_", "_3_0_", "_8_-1_", "_7_-2_"]``).

    Args:
        text: optional ``-``, digits, optional ``.`` and digits.
        truncate: drop fraction digits below place -12 instead of raising.

    Raises:
        ValueError: not a plain number, more than 20 integer digits, or (without ``truncate``)
            more than 12 decimals.
    """
    m = _NUMBER_TEXT.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a plain decimal number (-?digits[.digits])")
    sign, integer, fraction = m.group(1), m.group(2), m.group(3) or ""
    if len(integer) > MAX_PLACE + 1:
        raise ValueError(
            f"{text!r} has {len(integer)} integer digits; RT places go up to 10^{MAX_PLACE}"
        )
    if len(fraction) > -MIN_PLACE:
        if not truncate:
            raise ValueError(
                f"{text!r} has {len(fraction)} decimals; RT places go down to 10^{MIN_PLACE} "
                "(pass truncate=True to drop the rest)"
            )
        fraction = fraction[:-MIN_PLACE]
    tokens = [SIGN_TOKEN] if sign else []
    top = len(integer) - 1
    tokens += [rt_token(int(c), top - i) for i, c in enumerate(integer)]
    tokens += [rt_token(int(c), -1 - i) for i, c in enumerate(fraction)]
    return tokens


def run_to_text(run: Sequence[tuple[int, int]], negative: bool = False) -> str | None:
    """A run of (digit, place) pairs as decimal text, or None if the places are malformed.

    Well formed: places strictly consecutive, descending (p, p-1, ..., q) with p >= 0 >= q.
    ``[(1, 1), (3, 0), (8, -1)]`` -> ``"13.8"``; ``[(5, 1)]`` (no units digit),
    ``[(5, 0), (4, 0)]`` (repeat), ``[(5, 1), (4, 2)]`` (rising), ``[(5, 2), (4, 0)]`` (gap) -> None.
    """
    if not run:
        return None
    places = [p for _, p in run]
    if places[0] < 0 or places[-1] > 0:
        return None
    if any(b != a - 1 for a, b in zip(places, places[1:])):
        return None
    integer = "".join(str(d) for d, p in run if p >= 0)
    fraction = "".join(str(d) for d, p in run if p < 0)
    return ("-" if negative else "") + integer + ("." + fraction if fraction else "")


def parse_rt(tokens: Sequence[str]) -> float | None:
    """Strict parse of a whole answer: ``[▁] [-] _d_p_ ...`` and nothing else -> value, else None.

    ``["_5_1_", "_4_0_"]`` -> 54.0; ``["-", "_4_0_", "_2_-1_"]`` -> -4.2; text pieces, a second
    number or a malformed run -> None.
    """
    pieces = [t for t in tokens if t != "\u2581"]
    negative = bool(pieces) and pieces[0] == SIGN_TOKEN
    if negative:
        pieces = pieces[1:]
    run = [parse_token(t) for t in pieces]
    if not run or any(r is None for r in run):
        return None
    text = run_to_text(run, negative)  # type: ignore[arg-type]
    return float(text) if text is not None else None


def rt_to_text(pieces: Sequence[str]) -> str:
    """Render generated pieces (special tokens already removed) as text.

    Runs of place-value tokens become their decimal text; ``-`` directly before a run is its
    sign. A malformed run, or a run glued to text (a neighbouring piece that ends/starts with a
    letter, digit, ``.`` or ``_``, e.g. ``x`` ``_5_0_`` or ``3`` ``.`` ``_5_0_``), is printed as
    its raw tokens (``x_5_0_``), which the evaluator's parser rejects.
    """
    out: list[str] = []
    i = 0
    while i < len(pieces):
        if parse_token(pieces[i]) is None:
            out.append(pieces[i])
            i += 1
            continue
        j = i
        while j < len(pieces) and parse_token(pieces[j]) is not None:
            j += 1
        run = [parse_token(t) for t in pieces[i:j]]
        negative = bool(out) and out[-1] == SIGN_TOKEN
        prev = out[-2] if negative and len(out) >= 2 else (out[-1] if out and not negative else "")
        nxt = pieces[j] if j < len(pieces) else ""
        glued = (prev != "" and is_word_char(prev[-1])) or (nxt != "" and is_word_char(nxt[0]))
        text = None if glued else run_to_text(run, negative)  # type: ignore[arg-type]
        if text is None:
            out.append("".join(pieces[i:j]))
        else:
            if negative:
                out.pop()
            out.append(text)
        i = j
    return render_pieces(out)


# ---------------------------------------------------------------------- tokenizer side
def add_rt_tokens(tokenizer: Any) -> Any:
    """Add the 320 place-value tokens to ``tokenizer`` (in place) and return it."""
    tokenizer.add_tokens(list(RT_TOKENS))
    return tokenizer


def encode_texts(
    tokenizer: Any, texts: Sequence[str], *, truncate: bool = True
) -> tuple[list[list[int]], int]:
    """Token ids of ``texts`` with every number as ``-`` + place-value tokens (no eos added).

    Returns:
        (ids per text, number of numbers whose decimals below 10^-12 were dropped).
    """
    ids, numbers = tokenize_with_numbers(tokenizer, texts)
    zero = tokenizer.convert_tokens_to_ids("0")
    token_ids = _rt_ids(tokenizer)
    sign_id = tokenizer.convert_tokens_to_ids(SIGN_TOKEN)
    truncated = 0
    out = []
    for row, nums in zip(ids, numbers):
        new, k = [], 0
        for i in row:
            if i != zero:
                new.append(i)
                continue
            text = nums[k]
            k += 1
            frac = text.split(".")[1] if "." in text else ""
            truncated += len(frac) > -MIN_PLACE
            toks = number_to_tokens(text, truncate=truncate)
            new.extend(sign_id if t == SIGN_TOKEN else token_ids[t] for t in toks)
        out.append(new)
    return out, truncated


def _rt_ids(tokenizer: Any) -> dict[str, int]:
    ids = dict(zip(RT_TOKENS, tokenizer.convert_tokens_to_ids(list(RT_TOKENS))))
    missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(
            f"the tokenizer lacks {len(missing)} RT tokens (e.g. {missing[0]}); call add_rt_tokens"
        )
    return ids


def rt_number_vocab(tokenizer: Any, vocab_size: int | None = None) -> NumberVocab:
    """A `NumberVocab` whose number tokens are the place-value tokens, valued by their digit.

    Built from a synthetic ``{name: id}`` mapping with the tokenizer's ids: ``_d_p_`` is renamed
    ``▁``×(p+13) + ``d`` (stripped to ``d`` by the core, so value d, one digit), and every other
    token the core would read as a number (plain digits ``0``-``9``) gets a non-number name, so
    the NTL softmax runs over the 320 place-value tokens only. ``number_tokens`` is set back to
    the real token texts.
    """
    vocab = dict(tokenizer.get_vocab())
    synthetic: dict[str, int] = {}
    for token, idx in vocab.items():
        parsed = parse_token(token)
        if parsed is not None:
            digit, place = parsed
            synthetic["\u2581" * (place - MIN_PLACE + 1) + str(digit)] = idx
        elif number_value(token, "digits") is not None:
            synthetic[f"<not-a-number:{idx}>"] = idx
        else:
            synthetic[token] = idx
    if len(synthetic) != len(vocab):
        raise ValueError("building the RT number vocabulary produced a name collision")
    out = NumberVocab.from_vocab(synthetic, mode="digits", vocab_size=vocab_size)
    id_to_token = {i: t for t, i in vocab.items()}
    out.number_tokens = [id_to_token[int(i)] for i in out.number_ids]
    if out.num_number_tokens != len(RT_TOKENS):
        raise ValueError(
            f"expected {len(RT_TOKENS)} place-value number tokens, found {out.num_number_tokens}; "
            "call add_rt_tokens on the tokenizer first"
        )
    return out


# ---------------------------------------------------------------------- model side
def numeric_encoding(
    token_to_id: Mapping[str, int], vocab_size: int, d_model: int, scale: float = 1.0
) -> torch.Tensor:
    """Fixed encodings (vocab_size, d_model) float32: zero rows except place-value tokens.

    For ``_d_p_`` with d > 0 and ``u = log10(d·10^p) = p + log10(d)``:
    ``E[2k] = scale·sin(2π·u / T_k)``, ``E[2k+1] = scale·cos(2π·u / T_k)`` with periods ``T_k``
    geometric from 64 down to 0.25 (decades). Digit 0 gets the zero vector.
    """
    enc = torch.zeros(vocab_size, d_model, dtype=torch.float64)
    half = d_model // 2
    if half == 0:
        return enc.float()
    periods = torch.logspace(math.log10(64.0), math.log10(0.25), half, dtype=torch.float64)
    for token, idx in token_to_id.items():
        parsed = parse_token(token)
        if parsed is None or parsed[0] == 0 or idx >= vocab_size:
            continue
        digit, place = parsed
        angle = 2 * math.pi * (place + math.log10(digit)) / periods
        enc[idx, 0 : 2 * half : 2] = torch.sin(angle) * scale
        enc[idx, 1 : 2 * half : 2] = torch.cos(angle) * scale
    return enc.float()


class RTConfig(T5Config):
    """A T5 config plus RT's settings. Its own ``model_type``, so ``AutoModel`` refuses the
    folder instead of loading a plain T5 without the numeric encoding.

    Args:
        rt_token_ids: ``{"_d_p_": id}`` of the place-value tokens (the numeric encoding's rows).
        rt_encoding_scale: amplitude of the numeric encoding.
        **kwargs: ``T5Config`` fields.
    """

    model_type = "ntl-rt-t5"

    def __init__(
        self, rt_token_ids: Mapping[str, int] | None = None, rt_encoding_scale: float = 1.0, **kwargs: Any
    ) -> None:
        self.rt_token_ids = {str(k): int(v) for k, v in (rt_token_ids or {}).items()}
        self.rt_encoding_scale = float(rt_encoding_scale)
        super().__init__(**kwargs)


class RTT5(NumberT5):
    """T5 whose token embeddings get the fixed RT numeric encoding added (encoder and decoder).

    The model's ``forward`` is T5's (``loss`` = CE when ``labels`` are given), so it trains
    through ``ntl.integrations.hf.NTLTrainer`` like the token arms, with NTL over the
    place-value tokens (:func:`rt_number_vocab`).

    Shapes: ``embed(ids (B, T)) -> (B, T, d_model)``; the encoding table (V, d_model) is a
    buffer rebuilt from the config, saved with the weights.
    """

    config_class = RTConfig

    def __init__(self, config: RTConfig) -> None:
        super().__init__(config)
        encoding = numeric_encoding(
            config.rt_token_ids, int(config.vocab_size), int(config.d_model), config.rt_encoding_scale
        )
        self.register_buffer("numeric_encoding", encoding)

    def embed(self, ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        return self.shared(ids) + self.numeric_encoding[ids].to(self.shared.weight.dtype)
