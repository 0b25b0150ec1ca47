"""NumberVocab on every real tokenizer, the digit-splitting helper, coverage, `ntl vocab`."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from ntl import NumberVocab
from ntl.numbers import number_value, split_digits, strip_marker
from tests.helpers import TOKENIZERS

# (folder, digits-mode count, numbers-mode count, sampled {token: value} in numbers mode)
EXPECTED = [
    ("t5-small", 19, 619, {"▁7": 7, "7": 7, "▁130": 130, "3.5": 3.5}),
    ("gpt2", 20, 1691, {"Ġ7": 7, "7": 7, "Ġ130": 130, "45": 45}),
    ("llama2", 10, 10, {"7": 7, "0": 0}),
    ("llama3", 10, 1110, {"0": 0, "999": 999, "007": 7, "130": 130}),
    ("qwen2", 10, 10, {"9": 9}),
    ("phi-3-mini", 10, 10, {"3": 3}),
    ("granite-docling", 10, 1110, {"999": 999, "42": 42}),
    ("mistral-v3", 10, 10, {"5": 5}),
    ("bert-base-uncased", 20, 937, {"##5": 5, "000": 0, "10": 10}),
]


@pytest.mark.parametrize(("name", "n_digits", "n_numbers", "samples"), EXPECTED)
def test_number_tokens_of_real_tokenizers(load_tok, name, n_digits, n_numbers, samples):
    tok = load_tok(name)
    vocab_map = tok.get_vocab()
    digits = NumberVocab.from_tokenizer(tok, mode="digits")
    numbers = NumberVocab.from_tokenizer(tok, mode="numbers")
    assert digits.num_number_tokens == n_digits
    assert numbers.num_number_tokens == n_numbers
    assert digits.vocab_size == numbers.vocab_size == len(tok)
    # digits mode: exactly the values 0..9, each marker form included
    assert sorted(set(digits.number_values.tolist())) == list(range(10))
    for token, value in samples.items():
        assert numbers.values[vocab_map[token]].item() == value, token
    # ids sorted, values consistent, digit counts positive on numbers only
    ids = numbers.number_ids
    assert torch.all(ids[1:] > ids[:-1])
    assert torch.equal(numbers.values[ids], numbers.number_values)
    assert (numbers.digit_counts[ids] > 0).all()
    assert numbers.digit_counts.sum() == numbers.digit_counts[ids].sum()
    # non-numbers are NaN
    assert torch.isnan(numbers.values).sum() == len(tok) - n_numbers


def test_llama3_numbers_mode_has_0_to_999(load_tok):
    vocab = NumberVocab.from_tokenizer(load_tok("llama3"), mode="numbers")
    assert set(vocab.number_values.tolist()) == {float(i) for i in range(1000)}
    ids = load_tok("llama3").get_vocab()
    assert vocab.digit_counts[ids["007"]] == 3 and vocab.digit_counts[ids["7"]] == 1


@pytest.mark.parametrize(
    ("token", "mode", "value"),
    [
        ("7", "digits", 7.0), ("▁7", "digits", 7.0), ("Ġ7", "digits", 7.0), (" 7", "digits", 7.0),
        ("12", "digits", None), ("12", "numbers", 12.0), ("3.5", "numbers", 3.5),
        ("٣", "digits", None), ("٣", "numbers", None), ("³", "numbers", None),
        ("inf", "numbers", None), ("nan", "numbers", None), ("1e3", "numbers", None),
        ("1_000", "numbers", None), ("-5", "numbers", None), (".5", "numbers", None),
        ("5.", "numbers", None), ("1,000", "numbers", None), ("", "numbers", None),
    ],
)
def test_number_value_rules(token, mode, value):
    assert number_value(token, mode) == value


def test_strip_marker():
    assert strip_marker("▁130") == "130" and strip_marker("Ġ7") == "7" and strip_marker("##45") == "45"


def test_model_vocab_may_be_larger_but_not_smaller(load_tok):
    tok = load_tok("qwen2")
    vocab = NumberVocab.from_tokenizer(tok, vocab_size=151_936)
    assert vocab.vocab_size == 151_936 and vocab.values.shape == (151_936,)
    assert torch.isnan(vocab.values[151_646:]).all()
    with pytest.raises(ValueError, match="151000"):
        NumberVocab.from_tokenizer(tok, vocab_size=151_000)


def test_does_not_mutate_tokenizer(load_tok):
    tok = load_tok("t5-small")
    before = len(tok)
    NumberVocab.from_tokenizer(tok)
    split = split_digits(tok)
    assert len(tok) == before
    assert tok.tokenize("12345") == ["▁", "123", "45"]
    assert split.tokenize("12345") == ["▁", "1", "2", "3", "4", "5"]


@pytest.mark.parametrize("name", ["t5-small", "gpt2", "llama3", "granite-docling", "mistral-v3"])
def test_split_digits_round_trips_and_covers_every_digit(load_tok, name):
    text = "12345 + 678 = 13023.5 and -0.25"
    tok = split_digits(load_tok(name))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    vocab = NumberVocab.from_tokenizer(tok, mode="digits")
    assert vocab.coverage([text]) == 1.0


def test_coverage_reports_missed_digits(load_tok):
    tok = load_tok("t5-small")
    # '▁' '123' '45' '▁+' '▁6' '78' -> only '▁6' is a digit token: 1 of 8 digits
    assert NumberVocab.from_tokenizer(tok, mode="digits").coverage(["12345 + 678"]) == pytest.approx(1 / 8)
    assert NumberVocab.from_tokenizer(tok, mode="numbers").coverage(["12345 + 678"]) == 1.0
    assert math.isnan(NumberVocab.from_tokenizer(tok).coverage(["no digits"]))


def test_other_tokenizer_kinds(load_tok):
    import sentencepiece as spm
    from tokenizers import Tokenizer

    from tests.helpers import TOKENIZERS

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZERS / "mistral-v3" / "tokenizer.model"))
    assert NumberVocab.from_tokenizer(sp).num_number_tokens == 10
    raw = Tokenizer.from_file(str(TOKENIZERS / "gpt2" / "tokenizer.json"))
    assert NumberVocab.from_tokenizer(raw).num_number_tokens == 20
    mapping = NumberVocab.from_vocab({"a": 0, "▁3": 1, "4": 2, "44": 3}, mode="numbers")
    assert mapping.number_values.tolist() == [3.0, 4.0, 44.0]
    with pytest.raises(ValueError, match="needs a tokenizer"):
        mapping.coverage(["3"])


def test_unknown_mode_errors():
    with pytest.raises(ValueError, match="'words'"):
        NumberVocab.from_vocab({"a": 0}, mode="words")


def test_a_vocabulary_without_number_tokens_fails_at_once(tmp_path):
    """Not first when the loss is built: NumberVocab itself refuses, naming the fix that works."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from ntl.numbers import NoNumberTokens

    # No digit in the vocabulary: neither mode nor split_digits (which adds no tokens) can help.
    for mode in ("digits", "numbers"):
        with pytest.raises(NoNumberTokens, match="needs a tokenizer whose vocabulary has the digits") as err:
            NumberVocab.from_vocab({"a": 0, "b": 1}, mode=mode)
        assert f"no number tokens in mode={mode!r}" in str(err.value)
        assert "try mode=" not in str(err.value)
    # Multi-digit tokens only: numbers mode finds them.
    with pytest.raises(NoNumberTokens, match="Use mode='numbers': 2 of its tokens"):
        NumberVocab.from_vocab({"a": 0, "12": 1, "345": 2})
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(NoNumberTokens, match="split_digits cannot add tokens"):
        NumberVocab.from_tokenizer(tok)
    digits = NumberVocab.from_vocab({"a": 0, "1": 1, "2": 2})
    with pytest.raises(NoNumberTokens, match="None of the given token ids"):
        digits.restricted([0])
    assert digits.restricted([1]).num_number_tokens == 1


def _ntl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ntl.cli", *args], capture_output=True, text=True)


def test_vocab_command(tmp_path):
    out = _ntl("vocab", "--tokenizer", str(TOKENIZERS / "llama3"), "--mode", "numbers")
    assert out.returncode == 0, out.stderr
    assert "number tokens  1110" in out.stdout and "0 .. 999" in out.stdout
    assert "coverage       100.0%" in out.stdout


def _word_level(tmp_path, words: list[str]) -> str:
    """A tokenizer.json whose vocabulary is ``words`` (plus [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_vocab_command_without_number_tokens(tmp_path):
    path = _word_level(tmp_path, ["hello", "world"])
    for mode in ("digits", "numbers"):
        out = _ntl("vocab", "--tokenizer", path, "--mode", mode)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert f"{path} has no number tokens in --mode {mode}" in out.stderr
        # Neither the other mode nor a digit split can add number tokens: no advice that fails,
        # and command-line options, not Python calls.
        assert "try --mode" not in out.stderr and "split_digits(" not in out.stderr
        assert "--split-digits cannot add tokens" in out.stderr


def test_vocab_command_with_multi_digit_tokens_only(tmp_path):
    out = _ntl("vocab", "--tokenizer", _word_level(tmp_path, ["12", "345", "+"]))
    assert out.returncode == 2 and "try --mode numbers (2 of its tokens" in out.stderr, out.stderr


def _hint(*args: str) -> str:
    out = _ntl("vocab", "--tokenizer", str(TOKENIZERS / "t5-small"), *args)
    assert out.returncode == 0, out.stderr
    return "".join(line for line in out.stdout.splitlines() if line.startswith("hint"))


def test_vocab_command_hints_only_options_not_given():
    """t5-small writes digits inside multi-digit pieces: the hint names only what may still help."""
    assert "try --split-digits or --mode numbers" in _hint()
    numbers = _hint("--mode", "numbers")  # 94.7%: the split pieces such as '13023.5;'
    assert "try --split-digits" in numbers and "--mode numbers" not in numbers
    assert _hint("--split-digits") == ""  # 100%


def test_import_needs_only_torch():
    code = (
        "import sys, ntl; from ntl.losses import functional; "
        "bad = [m for m in ('transformers', 'tokenizers', 'sentencepiece') if m in sys.modules]; "
        "assert not bad, bad"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_split_digits_survives_save_and_reload(load_tok, tmp_path):
    from transformers import AutoTokenizer

    split_digits(load_tok("t5-small")).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.tokenize("12345") == ["▁", "1", "2", "3", "4", "5"]
    assert reloaded.pad_token == "<pad>" and reloaded.eos_token == "</s>"


# ---------------------------------------------------------------------- loading and warnings
def test_load_tokenizer_takes_paths_files_and_objects(tmp_path):
    from tokenizers import Tokenizer

    from ntl.numbers import load_tokenizer

    folder = load_tokenizer(TOKENIZERS / "llama2")
    file = load_tokenizer(str(TOKENIZERS / "llama2" / "tokenizer.json"))
    assert folder.tokenize("2048") == file.tokenize("2048")
    raw = Tokenizer.from_file(str(TOKENIZERS / "llama2" / "tokenizer.json"))
    mapping = folder.get_vocab()
    sizes = {NumberVocab.from_tokenizer(t).num_number_tokens for t in (folder, raw, mapping)}
    assert sizes == {10}
    assert NumberVocab.from_tokenizer(TOKENIZERS / "llama2").num_number_tokens == 10


@pytest.mark.parametrize("spec, expect", [
    ("/nonexistent/tok", "no such file or folder"),
    ("surely-not-cached/xyz", "not a hub name in the local Hugging Face cache"),
    ("/etc/hostname", "is not a tokenizer file"),
])
def test_load_tokenizer_errors_are_one_line(spec, expect):
    from ntl.numbers import TokenizerLoadError, TokenizerNotFound, load_tokenizer

    with pytest.raises((TokenizerNotFound, TokenizerLoadError)) as err:
        load_tokenizer(spec)
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_names_do_not_resolve_to_the_test_fixtures(monkeypatch):
    """The library finds no tokenizer by a bare fixture name, wherever it runs."""
    from ntl.numbers import TokenizerNotFound, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(TokenizerNotFound):
        load_tokenizer("llama2")


def test_lab_resolves_profile_names_in_one_place(monkeypatch, tmp_path):
    from ntl.lab import tokenization

    monkeypatch.setenv(tokenization.TOKENIZERS_ENV, str(TOKENIZERS))
    assert tokenization.resolve_tokenizer("t5-small") == str(TOKENIZERS / "t5-small")
    assert tokenization.load_named_tokenizer("t5-small").tokenize("7")[-1].endswith("7")
    assert tokenization.resolve_tokenizer(str(tmp_path)) == str(tmp_path)  # a path stays a path


def test_digits_mode_warns_once_when_multi_digit_tokens_hide_digits(load_tok):
    import warnings

    from ntl.numbers import NumberCoverageWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            NumberVocab.from_tokenizer(load_tok("llama3"), mode="digits")
    hits = [w for w in caught if issubclass(w.category, NumberCoverageWarning)]
    assert len(hits) == 1
    text = str(hits[0].message)
    assert "mode='numbers'" in text and "split_digits" in text and "'204'" in text
    with warnings.catch_warnings():  # full coverage: silent
        warnings.simplefilter("error", NumberCoverageWarning)
        NumberVocab.from_tokenizer(load_tok("llama2"), mode="digits")
        NumberVocab.from_tokenizer(load_tok("llama3"), mode="numbers")
        NumberVocab.from_tokenizer(split_digits(load_tok("llama3")), mode="digits")


def test_unknown_loss_options_fail_at_construction():
    from ntl import CrossEntropyWithNTL, NumberTokenLoss

    vocab = NumberVocab.from_vocab({str(i): i for i in range(10)} | {"a": 10})
    with pytest.raises(TypeError, match="'foo'.*reweigh"):
        CrossEntropyWithNTL(vocab, foo=1)
    with pytest.raises(TypeError, match="squash_factor"):
        NumberTokenLoss(vocab, "mse", squash_factor=2.0)
    CrossEntropyWithNTL(vocab, ntl="huber", huber_delta=0.5, reweigh=True)  # known options pass


def test_vocab_size_hint_is_correct():
    """A model with fewer logits than the tokenizer has ids: the hint must not suggest a size that
    NumberVocab then rejects."""
    from ntl import CrossEntropyWithNTL

    mapping = {str(i): i for i in range(10)} | {f"w{i}": i for i in range(10, 32000)}
    loss = CrossEntropyWithNTL(NumberVocab.from_vocab(mapping))
    with pytest.raises(ValueError) as err:
        loss(torch.randn(4, 31000), torch.tensor([1, 2, 3, 4]))
    assert "resize_token_embeddings" in str(err.value)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        NumberVocab.from_vocab(mapping, vocab_size=31000)
    with pytest.raises(ValueError, match="vocab_size=32064"):
        loss(torch.randn(4, 32064), torch.tensor([1, 2, 3, 4]))
    ok = CrossEntropyWithNTL(NumberVocab.from_vocab(mapping, vocab_size=32064))
    assert torch.isfinite(ok(torch.randn(4, 32064), torch.tensor([1, 2, 3, 4])).total)
