"""The Hugging Face Trainer glue: causal label shift, num_items_in_batch, gradient accumulation,
CE/NTL logging."""

from __future__ import annotations

import pytest
import torch

from ntl import CrossEntropyWithNTL, NumberVocab
from ntl.integrations.hf import (
    NTLLogCallback,
    NTLLossFunc,
    NTLTrainer,
    decoder_inputs_from_labels,
    make_compute_loss_func,
    shift_labels,
)
from ntl.lab.data.collate import Collator, EncodedDataset, encode, restrict_tokenizer
from ntl.lab.models import build_model, model_vocab_size
from ntl.numbers import load_tokenizer, split_digits
from tests.helpers import TOKENIZERS

# Micro-batches of 2: the first has 1 number-target token, the second 6 (different shares).
RECORDS = [
    {"module": "m", "question": "What is 2 + 2?", "answer": "4"},
    {"module": "m", "question": "Spell the word one.", "answer": "one"},
    {"module": "m", "question": "What is 123 * 456?", "answer": "56088"},
    {"module": "m", "question": "Say hi and a digit.", "answer": "hi 7"},
]


@pytest.fixture(scope="module")
def tok():
    base = split_digits(load_tokenizer(TOKENIZERS / "t5-small"))
    return restrict_tokenizer(base, [r[k] for r in RECORDS for k in ("question", "answer")])


def _vocab(tok, model):
    return NumberVocab.from_tokenizer(tok, vocab_size=model.config.vocab_size)


# ---------------------------------------------------------------------- the loss function
def test_shift_labels():
    labels = torch.tensor([[-100, 5, 6, 7]])
    assert shift_labels(labels).tolist() == [[5, 6, 7, -100]]


def test_causal_glue_equals_manual_shift():
    torch.manual_seed(0)
    vocab = NumberVocab.from_vocab({str(i): i for i in range(10)} | {"a": 10, "b": 11})
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
    logits = torch.randn(2, 5, 12, requires_grad=True)
    labels = torch.tensor([[-100, 3, 10, 7, 1], [-100, -100, 11, 9, -100]])
    got = NTLLossFunc(loss, causal=True)({"logits": logits}, labels)
    want = loss(logits[:, :-1], labels[:, 1:]).total
    torch.testing.assert_close(got, want)
    # seq2seq: no shift
    got = NTLLossFunc(loss, causal=False)({"logits": logits}, labels)
    torch.testing.assert_close(got, loss(logits, labels).total)


def test_loss_func_honours_shift_labels():
    """Targets already aligned (HF's shift_labels, e.g. a padding-free collator) replace the
    shift, in the loss and in the item counts."""
    torch.manual_seed(0)
    vocab = NumberVocab.from_vocab({str(i): i for i in range(10)} | {"a": 10, "b": 11})
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
    func = NTLLossFunc(loss, causal=True)
    logits = torch.randn(2, 5, 12)
    labels = torch.tensor([[-100, 3, 10, 7, 1], [-100, -100, 11, 9, -100]])
    aligned = torch.tensor([[3, -100, 7, 1, -100], [-100, 11, 9, 4, -100]])
    got = func({"logits": logits}, labels, shift_labels=aligned)
    torch.testing.assert_close(got, loss(logits, aligned).total)
    assert [int(n) for n in func.count_items(labels, aligned)] == [6, 5]
    assert func.running_sums is None  # no gradient: not a training call


def test_num_items_in_batch_reproduces_one_big_batch():
    """Two micro-batches with different number-token counts, normalised by the whole batch's
    counts (what NTLTrainer passes), give the big batch's loss and gradient."""
    torch.manual_seed(0)
    vocab = NumberVocab.from_vocab({str(i): i for i in range(10)} | {"a": 10, "b": 11})
    func = NTLLossFunc(CrossEntropyWithNTL(vocab, ntl="mse", lam=0.5), causal=True)
    logits = torch.randn(4, 6, 12, requires_grad=True)
    labels = torch.tensor(
        [
            [-100, 1, 10, 11, 10, -100],
            [-100, -100, 11, 10, -100, -100],
            [-100, 3, 4, 5, 6, 7],
            [-100, 2, 11, 9, 8, 10],
        ]
    )
    full = func({"logits": logits}, labels)
    (g_full,) = torch.autograd.grad(full, logits)

    ce_items = sum(func.count_items(labels[i : i + 2])[0] for i in (0, 2))
    number_items = sum(func.count_items(labels[i : i + 2])[1] for i in (0, 2))
    assert func.count_items(labels[:2])[1] != func.count_items(labels[2:])[1]
    parts = [
        func(
            {"logits": logits[i : i + 2]},
            labels[i : i + 2],
            num_items_in_batch=ce_items,
            num_number_items=number_items,
        )
        for i in (0, 2)
    ]
    total = parts[0] + parts[1]
    (g_acc,) = torch.autograd.grad(total, logits)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(g_acc, g_full)
    # num_items_in_batch counts shifted labels (what Trainer counts for causal LMs)
    assert int(ce_items) == int((shift_labels(labels) != -100).sum())


def test_plain_trainer_estimate_is_exact_without_accumulation():
    torch.manual_seed(1)
    vocab = NumberVocab.from_vocab({str(i): i for i in range(10)} | {"a": 10})
    func = NTLLossFunc(CrossEntropyWithNTL(vocab, ntl="was", lam=0.3), causal=False)
    logits = torch.randn(2, 4, 11)
    labels = torch.tensor([[1, 10, 3, -100], [10, 10, 5, 6]])
    n_items = (labels != -100).sum()
    torch.testing.assert_close(func({"logits": logits}, labels, num_items_in_batch=n_items),
                               func({"logits": logits}, labels))


def test_glue_rejects_mismatched_vocab_and_missing_labels():
    vocab = NumberVocab.from_vocab({str(i): i for i in range(10)})
    func = make_compute_loss_func(vocab, causal=False)
    with pytest.raises(ValueError, match="vocab_size"):
        func({"logits": torch.randn(1, 2, 12)}, torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        func({"logits": torch.randn(1, 2, 10)}, None)
    with pytest.raises(TypeError, match="causal"):
        NTLLossFunc(CrossEntropyWithNTL(vocab), causal=None)


def test_decoder_inputs_from_labels(tok):
    model = build_model("t5-micro", model_vocab_size(tok), tokenizer=tok, seed=0)
    labels = torch.tensor([[5, 6, 1, -100]])
    assert decoder_inputs_from_labels(model, labels).tolist() == [[0, 5, 6, 1]]


# ---------------------------------------------------------------------- through the Trainer
def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(tmp_path),
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    base.update(kw)
    return TrainingArguments(**base)


def _train_once(tmp_path, tok, arch, batch, accum, plain=False):
    model = build_model(arch, model_vocab_size(tok), tokenizer=tok, seed=0)
    causal = arch.startswith("llama")
    ds = EncodedDataset(encode(RECORDS, tok, causal=causal))
    vocab = _vocab(tok, model)
    args = _args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accum)
    if plain:
        from transformers import Trainer

        func = make_compute_loss_func(vocab, ntl="was", lam=1.0, causal=causal)
        collate = Collator(tok.pad_token_id)

        def collate_with_decoder(features):
            batch_ = collate(features)
            if not causal:
                batch_["decoder_input_ids"] = decoder_inputs_from_labels(model, batch_["labels"])
            return batch_

        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate_with_decoder,
                          compute_loss_func=func)
    else:
        trainer = NTLTrainer(
            model=model,
            args=args,
            train_dataset=ds,
            data_collator=Collator(tok.pad_token_id),
            ntl_loss=CrossEntropyWithNTL(vocab, ntl="was", lam=1.0),
        )
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer


@pytest.mark.parametrize("arch", ["t5-micro", "llama-micro"])
def test_gradient_accumulation_matches_one_batch(tmp_path, tok, arch):
    one, _ = _train_once(tmp_path / "a", tok, arch, batch=4, accum=1)
    acc, _ = _train_once(tmp_path / "b", tok, arch, batch=2, accum=2)
    for name in one:
        torch.testing.assert_close(acc[name], one[name], atol=2e-6, rtol=1e-5, msg=name)
    # A plain Trainer only knows the label-token count: its NTL term differs under accumulation
    plain, _ = _train_once(tmp_path / "c", tok, arch, batch=2, accum=2, plain=True)
    assert any(not torch.allclose(plain[n], one[n], atol=1e-5) for n in one)


def test_ntl_trainer_logs_ce_and_ntl(tmp_path, tok):
    _, trainer = _train_once(tmp_path, tok, "llama-micro", batch=2, accum=1)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and {"ce", "ntl"} <= set(logs[0])
    assert logs[0]["loss"] == pytest.approx(logs[0]["ce"] + 1.0 * logs[0]["ntl"], rel=1e-5)
    assert trainer.causal is True


def test_ntl_trainer_averages_logs_over_interval(tmp_path, tok):
    model = build_model("t5-micro", model_vocab_size(tok), tokenizer=tok, seed=0)
    ds = EncodedDataset(encode(RECORDS, tok, causal=False), order=[0, 1, 2, 3] * 3)
    trainer = NTLTrainer(
        model=model,
        args=_args(tmp_path, max_steps=6, learning_rate=1e-3, per_device_train_batch_size=2,
                   logging_steps=3),
        train_dataset=ds,
        data_collator=Collator(tok.pad_token_id),
        ntl_loss=CrossEntropyWithNTL(_vocab(tok, model), ntl="mse", lam=0.3),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [3, 6]
    for h in logs:
        assert h["loss"] == pytest.approx(h["ce"] + 0.3 * h["ntl"], rel=1e-5)


def test_plain_trainer_with_log_callback(tmp_path, tok):
    from transformers import Trainer

    model = build_model("llama-micro", model_vocab_size(tok), tokenizer=tok, seed=0)
    func = make_compute_loss_func(_vocab(tok, model), ntl="was", lam=0.3, causal=True)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, max_steps=2, learning_rate=1e-3, per_device_train_batch_size=2),
        train_dataset=EncodedDataset(encode(RECORDS, tok, causal=True)),
        data_collator=Collator(tok.pad_token_id),
        compute_loss_func=func,
        callbacks=[NTLLogCallback(func)],
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all({"ce", "ntl"} <= set(h) for h in logs)
    assert logs[0]["loss"] == pytest.approx(logs[0]["ce"] + 0.3 * logs[0]["ntl"], rel=1e-5)


def test_ntl_trainer_logs_eval_ce_and_ntl(tmp_path, tok):
    model = build_model("llama-micro", model_vocab_size(tok), tokenizer=tok, seed=0)
    ds = EncodedDataset(encode(RECORDS, tok, causal=True))
    eval_ds = EncodedDataset(encode(RECORDS[:3], tok, causal=True))  # batches of 2 and 1
    trainer = NTLTrainer(
        model=model,
        args=_args(tmp_path, per_device_train_batch_size=2, per_device_eval_batch_size=2),
        train_dataset=ds, eval_dataset=eval_ds, data_collator=Collator(tok.pad_token_id),
        ntl_loss=CrossEntropyWithNTL(_vocab(tok, model), ntl="was", lam=0.3),
    )
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_ce", "eval_ntl"} <= set(metrics) and metrics["eval_ntl"] > 0
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_ce"] + 0.3 * metrics["eval_ntl"], rel=1e-5)
    assert trainer.state.log_history[-1]["eval_ntl"] == metrics["eval_ntl"]
