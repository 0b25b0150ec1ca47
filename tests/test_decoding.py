"""ntl.decoding: median/mean of sampled numbers, invalid samples, expected digits, and tiny models
whose next-token distribution is set by hand, so what decoding must return is known."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ntl.decoding import (
    Decoding,
    aggregate_numbers,
    answer_from_samples,
    answers_from_texts,
    expected_digits,
    expected_number,
    generate_numbers,
)
from ntl.parsing import format_number, number_parts, parse_number

# ------------------------------------------------------------------------------ parsing


def test_the_lab_scores_with_the_library_parser():
    from ntl.lab.metrics import parse_number as lab_parse

    assert lab_parse is parse_number  # one parser: decoding and scoring read numbers alike


def test_number_parts_and_format_round_trip():
    parts = number_parts("-1,234.50e-2")
    assert (parts.sign, parts.int_digits, parts.frac_digits, parts.exponent) == (-1.0, "1234", "50", -2)
    assert parts.value == pytest.approx(-12.345)
    assert number_parts(".5").int_digits == "" and number_parts("7").frac_digits == ""
    assert number_parts("1 2") is None
    for x in (326.0, -12.0, 0.5, 1e-05, 3.141592653589793, 1.5e20, -0.0):
        text = format_number(x)
        assert "e" not in text and parse_number(text) == x
    assert format_number(326.0) == "326" and format_number(1e-05) == "0.00001"
    with pytest.raises(ValueError, match="finite"):
        format_number(math.nan)


# ------------------------------------------------------------------------------ aggregation


def test_median_and_mean_skip_and_count_invalid():
    values = [3.0, None, 1.0, 10.0, math.nan, 2.0]
    assert aggregate_numbers(values, "median") == (2.5, 2)  # valid 1, 2, 3, 10 -> (2 + 3) / 2
    assert aggregate_numbers(values, "mean") == (4.0, 2)  # 16 / 4
    assert aggregate_numbers([7.0, 1.0, 4.0], "median") == (4.0, 0)
    assert aggregate_numbers([None, None], "median") == (None, 2)
    with pytest.raises(ValueError, match="'median' or 'mean'"):
        aggregate_numbers([1.0], "mode")


def test_answer_from_samples_parses_and_aggregates():
    ans = answer_from_samples(["12", "oops", "15", "9", "1,000"], "median")
    assert ans.sample_values == (12.0, None, 15.0, 9.0, 1000.0)
    assert ans.value == 13.5 and ans.text == "13.5" and ans.n_invalid == 1 and ans.valid
    mean = answer_from_samples(["12", "oops", "15", "9"], "mean")
    assert mean.value == 12.0 and mean.text == "12"
    bad = answer_from_samples(["x", "3/4"], "median")
    assert bad.value is None and not bad.valid and bad.n_invalid == 2 and bad.text == "x"
    single = answer_from_samples(["The answer is -3."])
    assert single.value == -3.0 and single.text == "The answer is -3."
    with pytest.raises(ValueError, match="pass how="):
        answer_from_samples(["1", "2"])


def test_answers_group_k_consecutive_texts():
    texts = ["1", "2", "3", "10", "x", "30"]
    answers = answers_from_texts(texts, k=3, how="median")
    assert [a.value for a in answers] == [2.0, 20.0]
    assert [a.n_invalid for a in answers] == [0, 1]
    assert [len(a.samples) for a in answers] == [3, 3]
    with pytest.raises(ValueError, match="groups of k=4"):
        answers_from_texts(texts, k=4, how="median")


def test_decoding_options():
    assert Decoding("greedy", k=5).k == 1
    assert Decoding("median-of-k", k=8).name == "median-of-8"
    assert Decoding("mean-of-k", k=4, source="beams").name == "mean-of-4-beams"
    assert Decoding("median-of-k", k=8, temperature=0.7).name == "median-of-8-t0.7"
    assert Decoding("beam", k=4).generate_kwargs() == {"do_sample": False, "num_beams": 4,
                                                        "early_stopping": True}
    kw = Decoding("median-of-k", k=8).generate_kwargs()
    assert kw["do_sample"] and kw["num_return_sequences"] == 8 and kw["top_k"] == 0
    for bad, match in [({"method": "median"}, "unknown decoding"), ({"k": 0}, "k=0"),
                       ({"source": "topk"}, "source"), ({"temperature": 0.0}, "temperature")]:
        with pytest.raises(ValueError, match=match):
            Decoding(**{"method": "median-of-k", **bad})


# ------------------------------------------------------------------------------ expected digits


def test_expected_digits_is_the_mean_over_digit_tokens_only():
    # ids 0-1 words, 2-11 digits 0-9; a second token for 9 at id 12
    number_ids = torch.tensor(list(range(2, 12)) + [12])
    number_values = torch.tensor([float(d) for d in range(10)] + [9.0])
    logits = torch.full((2, 13), -1e9)
    logits[0, 0] = 5.0  # a word: excluded from the digit softmax
    logits[0, 2 + 3] = logits[0, 2 + 6] = 0.0  # 3 and 6 equally likely
    logits[1, 2 + 9] = logits[1, 12] = math.log(1.0)  # 9 under two ids
    logits[1, 2 + 0] = math.log(2.0)  # 0 twice as likely as each
    got = expected_digits(logits, number_ids, number_values)
    assert got.dtype == torch.float64 and got.shape == (2,)
    assert got.tolist() == pytest.approx([4.5, 4.5])  # (3 + 6)/2; (2·0 + 9 + 9)/4


def test_expected_number_places_each_digit():
    assert expected_number(number_parts("12"), [1.5, 2.0]) == pytest.approx(17.0)
    assert expected_number(number_parts("-3.25"), [3.0, 2.5, 5.0]) == pytest.approx(-3.3)
    assert expected_number(number_parts(".5"), [4.0]) == pytest.approx(0.4)
    assert expected_number(number_parts("2e3"), [2.5]) == pytest.approx(2500.0)
    with pytest.raises(ValueError, match="2 expected digits for a number with 3"):
        expected_number(number_parts("123"), [1.0, 2.0])


# ---------------------------------------------- tiny models with a known distribution

VOCAB = {"<pad>": 0, "</s>": 1, "x": 2, **{str(d): 3 + d for d in range(10)}, "-": 13, ".": 14,
         "<unk>": 15}


def _digit(d: int) -> int:
    return VOCAB[str(d)]


@pytest.fixture(scope="module")
def tokenizer():
    """Character-level tokenizer: every digit is one token, and decoding joins tokens as they are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def _log_probs(probs: dict[int, float]) -> torch.Tensor:
    logits = torch.full((len(VOCAB),), -1e4)
    for idx, p in probs.items():
        logits[idx] = math.log(p)
    return logits


def _fixed_model(kind: str, logits: torch.Tensor):
    """A model whose next-token logits are ``logits`` at every step, whatever the input.

    decoder-only (GPT-2): the final layer norm's weight is 0 and its bias e_0, so every hidden
    state is e_0, and column 0 of the (untied) head holds ``logits``. Encoder-decoder (BART): the
    head's weight is 0 and its ``final_logits_bias`` holds ``logits``.
    """
    torch.manual_seed(0)
    if kind == "decoder-only":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(logits), n_positions=32, n_embd=8, n_layer=1, n_head=2,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=1, pad_token_id=0)).eval()
        with torch.no_grad():
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.zero_()
            model.transformer.ln_f.bias[0] = 1.0
            model.lm_head.weight.zero_()
            model.lm_head.weight[:, 0] = logits
        return model
    from transformers import BartConfig, BartForConditionalGeneration

    model = BartForConditionalGeneration(BartConfig(
        vocab_size=len(logits), d_model=8, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8,
        max_position_embeddings=32, pad_token_id=0, eos_token_id=1, bos_token_id=1,
        decoder_start_token_id=0, forced_eos_token_id=None, forced_bos_token_id=None)).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.final_logits_bias[0] = logits
    return model


def _inputs(batch: int) -> dict[str, torch.Tensor]:
    """``batch`` left-padded prompts of different lengths."""
    ids = torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9], [3, 4, 5, 6]][:batch])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


KINDS = ["decoder-only", "encoder-decoder"]
# one token per answer: "x" (invalid) 0.4, "1" 0.2, "5" 0.3, "7" 0.1. Among valid answers:
# P(1) = 1/3, P(5) = 1/2, P(7) = 1/6 -> median 5, mean 1/3 + 5/2 + 7/6 = 4, variance 5.
SAMPLED = {VOCAB["x"]: 0.4, _digit(1): 0.2, _digit(5): 0.3, _digit(7): 0.1}


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_median_and_mean_converge_to_the_known_values(kind, tokenizer):
    model = _fixed_model(kind, _log_probs(SAMPLED))
    k = 400
    median = generate_numbers(model, tokenizer, _inputs(3), Decoding("median-of-k", k=k, seed=1),
                              max_new_tokens=1, pad_token_id=0, eos_token_id=1)
    assert len(median) == 3 and all(len(a.samples) == k for a in median)
    for a in median:
        assert set(a.samples) <= {"x", "1", "5", "7"}
        assert a.value == 5.0 and a.text == "5"
        assert abs(a.n_invalid - 0.4 * k) < 5 * math.sqrt(k * 0.4 * 0.6)  # binomial, 5 sd
    mean = generate_numbers(model, tokenizer, _inputs(3), Decoding("mean-of-k", k=k, seed=2),
                            max_new_tokens=1, pad_token_id=0, eos_token_id=1)
    for a in mean:
        n_valid = k - a.n_invalid
        assert abs(a.value - 4.0) < 5 * math.sqrt(5.0 / n_valid)
        assert a.value == pytest.approx(np.mean([v for v in a.sample_values if v is not None]))


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_is_seeded(kind, tokenizer):
    model = _fixed_model(kind, _log_probs(SAMPLED))

    def draw(seed):
        answers = generate_numbers(model, tokenizer, _inputs(2), Decoding("median-of-k", k=16, seed=seed),
                                   max_new_tokens=1, pad_token_id=0, eos_token_id=1)
        return [a.samples for a in answers]

    torch.manual_seed(123)
    before = torch.rand(1)
    assert draw(0) == draw(0) != draw(1)
    torch.manual_seed(123)
    assert torch.rand(1) == before  # the caller's random stream is left alone


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_beams_and_all_invalid(kind, tokenizer):
    model = _fixed_model(kind, _log_probs(SAMPLED))
    common = dict(max_new_tokens=1, pad_token_id=0, eos_token_id=1)
    greedy = generate_numbers(model, tokenizer, _inputs(3), **common)
    assert [(a.text, a.value, a.n_invalid) for a in greedy] == [("x", None, 1)] * 3
    # the 4 best beams of one token are x, 5, 1, 7: valid 1, 5, 7
    beams = generate_numbers(model, tokenizer, _inputs(2), Decoding("median-of-k", k=4, source="beams"),
                             **common)
    assert [sorted(a.samples) for a in beams] == [["1", "5", "7", "x"]] * 2
    assert [a.value for a in beams] == [5.0, 5.0] and [a.n_invalid for a in beams] == [1, 1]
    mean = generate_numbers(model, tokenizer, _inputs(1), Decoding("mean-of-k", k=4, source="beams"),
                            **common)
    assert mean[0].value == pytest.approx(13 / 3)
    only_x = _fixed_model(kind, _log_probs({VOCAB["x"]: 1.0}))
    bad = generate_numbers(only_x, tokenizer, _inputs(2), Decoding("median-of-k", k=5), **common)
    assert [(a.value, a.n_invalid, a.text) for a in bad] == [(None, 5, "x")] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_expected_digits_with_a_known_distribution(kind, tokenizer):
    # greedy writes "55"; given a digit, E[d] = (0.2·1 + 0.45·5 + 0.25·7) / 0.9 = 14/3
    probs = {VOCAB["x"]: 0.1, _digit(1): 0.2, _digit(5): 0.45, _digit(7): 0.25}
    model = _fixed_model(kind, _log_probs(probs))
    answers = generate_numbers(model, tokenizer, _inputs(2), Decoding("expected-digits"),
                               max_new_tokens=2, pad_token_id=0, eos_token_id=1)
    for a in answers:
        assert a.samples == ("55",)
        assert a.value == pytest.approx(14 / 3 * 11)
        assert parse_number(a.text) == a.value


def test_expected_digits_refuses_multi_digit_tokens():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({**VOCAB, "55": 16}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>",
                                  unk_token="<unk>")
    # greedy writes the one token "55": two digits the digit softmax never saw
    logits = torch.cat([_log_probs({VOCAB["x"]: 0.4}), torch.tensor([math.log(0.6)])])
    model = _fixed_model("decoder-only", logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the vocabulary's own coverage warning
        with pytest.raises(ValueError, match="split_digits"):
            generate_numbers(model, tok, _inputs(1), Decoding("expected-digits"), max_new_tokens=1,
                             pad_token_id=0, eos_token_id=1)
