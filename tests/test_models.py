"""Models from config (T5 and Llama-style), and tokenization/collation of question-answer records."""

from __future__ import annotations

import pytest
import torch

from ntl.lab.data.collate import (
    IGNORE_INDEX,
    Collator,
    EncodedDataset,
    encode_causal,
    encode_seq2seq,
    epoch_order,
    restrict_tokenizer,
)
from ntl.lab.models import (
    MODEL_SIZES,
    build_model,
    count_parameters,
    is_encoder_decoder,
    model_spec,
    model_vocab_size,
)
from ntl.numbers import load_tokenizer, split_digits
from tests.conftest import TOKENIZERS

RECORDS = [
    {"module": "m", "question": "What is -12.5 + 3?", "answer": "-9.5"},
    {"module": "m", "question": "Let x = 3. Solve 2*x - 4 = 0 for x.", "answer": "2"},
    {"module": "m", "question": "Round 123.456 to the nearest integer.", "answer": "123"},
]


@pytest.fixture(scope="module")
def t5_tok():
    return split_digits(load_tokenizer(TOKENIZERS / "t5-small"))


@pytest.fixture(scope="module")
def small_tok(t5_tok):
    return restrict_tokenizer(t5_tok, [r["question"] for r in RECORDS] + [r["answer"] for r in RECORDS])


def test_named_sizes_and_overrides():
    assert {"t5-tiny", "t5-small", "t5-base", "llama-tiny"} <= set(MODEL_SIZES)
    spec = model_spec("t5-tiny", dropout=0.2)
    assert spec.d_model == 128 and spec.num_layers == 3 and spec.dropout == 0.2
    assert model_spec("t5-base").d_model == 768
    with pytest.raises(KeyError, match="known sizes"):
        model_spec("t5-huge")


@pytest.mark.parametrize("name", ["t5-micro", "llama-micro"])
def test_build_model_vocab_ties_and_seed(name, small_tok):
    vocab_size = model_vocab_size(small_tok)
    assert vocab_size % 8 == 0 and vocab_size >= len(small_tok)
    a = build_model(name, vocab_size, tokenizer=small_tok, seed=3)
    b = build_model(name, vocab_size, tokenizer=small_tok, seed=3)
    c = build_model(name, vocab_size, tokenizer=small_tok, seed=4)
    assert a.config.vocab_size == vocab_size
    assert a.get_output_embeddings().weight.data_ptr() == a.get_input_embeddings().weight.data_ptr()
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert is_encoder_decoder(a) == name.startswith("t5")
    counts = count_parameters(a)
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]
    assert counts["embedding"] == vocab_size * model_spec(name).d_model


def test_t5_tiny_parameter_count(t5_tok):
    model = build_model("t5-tiny", model_vocab_size(t5_tok), tokenizer=t5_tok, seed=0)
    counts = count_parameters(model)
    assert 1.3e6 < counts["non_embedding"] < 1.5e6  # d=128, 3+3 layers
    assert counts["embedding"] == 32104 * 128  # the 32k embedding dominates


def test_build_model_rejects_small_vocab(small_tok):
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_model("t5-micro", len(small_tok) - 1, tokenizer=small_tok)


def test_restrict_tokenizer_keeps_segmentation(t5_tok, small_tok):
    assert len(small_tok) < 400
    for text in [r["question"] for r in RECORDS] + ["-0.000123", "13023.5"]:
        full = t5_tok.convert_ids_to_tokens(t5_tok(text)["input_ids"])
        small = small_tok.convert_ids_to_tokens(small_tok(text)["input_ids"])
        assert full == small
        assert small_tok.decode(small_tok(text)["input_ids"], skip_special_tokens=True) == text
    assert small_tok.eos_token == "</s>" and small_tok.pad_token == "<pad>"
    for d in "0123456789":
        assert d in small_tok.get_vocab()


def test_restrict_tokenizer_rejects_bpe():
    with pytest.raises(TypeError, match="Unigram"):
        restrict_tokenizer(load_tokenizer(TOKENIZERS / "gpt2"), ["12"])


def test_encode_seq2seq_and_causal(small_tok):
    eos = small_tok.eos_token_id
    s2s = encode_seq2seq(RECORDS, small_tok)
    assert s2s[0]["input_ids"][-1] == eos and s2s[0]["labels"][-1] == eos
    answer_ids = small_tok("-9.5", add_special_tokens=False)["input_ids"]
    assert s2s[0]["labels"] == answer_ids + [eos]

    causal = encode_causal(RECORDS, small_tok)
    q_ids = small_tok(RECORDS[0]["question"], add_special_tokens=False)["input_ids"]
    assert causal[0]["input_ids"] == q_ids + [eos] + answer_ids + [eos]
    assert causal[0]["labels"] == [IGNORE_INDEX] * (len(q_ids) + 1) + answer_ids + [eos]
    prompts = encode_causal(RECORDS, small_tok, with_labels=False)
    assert prompts[0] == {"input_ids": q_ids + [eos]}


def test_collator_padding_sides():
    feats = [{"input_ids": [5, 6, 7], "labels": [1, 2]}, {"input_ids": [8], "labels": [3, 4, 5]}]
    right = Collator(pad_token_id=0)(feats)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[1, 2, -100], [3, 4, 5]]
    left = Collator(pad_token_id=0, padding_side="left")(feats)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_epoch_order_is_seeded_and_covers_epochs():
    a, b, c = epoch_order(10, 25, seed=1), epoch_order(10, 25, seed=1), epoch_order(10, 25, seed=2)
    assert a == b and a != c and len(a) == 25
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))
    ds = EncodedDataset([{"input_ids": [i]} for i in range(10)], a)
    assert len(ds) == 25 and ds[3] == {"input_ids": [a[3]]}
