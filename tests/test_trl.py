"""TRL glue: NTLSFTTrainer runs one forward per step, respects completion-only loss, is exact under
gradient accumulation and logs ce/ntl in training and evaluation. Offline, tiny Llama."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import SFTConfig  # noqa: E402

from ntl import CrossEntropyWithNTL, NumberVocab  # noqa: E402
from ntl.integrations.trl import NTLSFTTrainer  # noqa: E402
from tests.helpers import tokenizer as shared_tokenizer  # noqa: E402

LAM = 0.5
ROWS = [  # prompts full of digits (never trained on), completions with different number counts
    {"prompt": "What is 12 + 30?", "completion": " 42"},
    {"prompt": "Name a colour, then 7 * 6.", "completion": " red 42"},
    {"prompt": "What is 123 * 456?", "completion": " 56088"},
    {"prompt": "Say hi.", "completion": " hi"},
]


@pytest.fixture(scope="module")
def tok():
    import copy

    t = copy.deepcopy(shared_tokenizer("llama2"))
    t.pad_token = t.eos_token
    return t


def _model(tok):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def _trainer(tmp_path, tok, *, batch=4, accum=1, completion_only=True, eval_rows=None, **kw):
    model = _model(tok)
    vocab = NumberVocab.from_tokenizer(tok, vocab_size=model.config.vocab_size)
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=batch,
        per_device_eval_batch_size=2, gradient_accumulation_steps=accum, learning_rate=1.0,
        optim="sgd", weight_decay=0.0, max_grad_norm=0.0, lr_scheduler_type="constant",
        report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
        train_sampling_strategy="sequential", bf16=False, activation_checkpointing=False,
        completion_only_loss=completion_only, **kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # TRL warns on deprecated paths
        return NTLSFTTrainer(
            model=model, args=args, processing_class=tok,
            train_dataset=datasets.Dataset.from_list(ROWS),
            eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows else None,
            ntl_loss=CrossEntropyWithNTL(vocab, ntl="was", lam=LAM),
        )


def _first_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return {k: v.to(trainer.args.device) for k, v in batch.items()}


def test_completion_only_loss_skips_prompt_tokens(tmp_path, tok):
    trainer = _trainer(tmp_path, tok)
    batch = _first_batch(trainer)
    # Labels: -100 on every prompt token (their count from tokenizing the prompt alone) and pad.
    for row, ids, labels, attn in zip(ROWS, batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n_prompt = len(tok(row["prompt"])["input_ids"])
        assert (labels[:n_prompt] == -100).all()
        real = attn.bool()
        real[:n_prompt] = False
        assert torch.equal(labels[real], ids[real])
    # The loss is CE + λ·NTL over the completion tokens only, computed independently here ...
    model = trainer.model.eval()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.detach().requires_grad_(True)
    manual = torch.full_like(batch["input_ids"], -100)
    for i, row in enumerate(ROWS):
        n_prompt = len(tok(row["prompt"])["input_ids"])
        keep = batch["attention_mask"][i].bool()
        keep[:n_prompt] = False
        manual[i, keep] = batch["input_ids"][i, keep]
    loss_fn = trainer.ntl_loss_func.loss
    want = loss_fn(logits[:, :-1], manual[:, 1:]).total
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-6)
    # ... so what the model predicts for prompt tokens (digits included) does not move it:
    want.backward()
    prompt_positions = manual[:, 1:] == -100
    assert logits.grad[:, :-1][prompt_positions].abs().max() == 0
    # Training on whole sequences (prompt digits included) is a different loss.
    full = _trainer(tmp_path / "full", tok, completion_only=False)
    with torch.no_grad():
        assert abs(full.compute_loss(full.model.eval(), _first_batch(full)) - got) > 1e-3


def test_one_forward_per_micro_batch_and_logs(tmp_path, tok):
    trainer = _trainer(tmp_path, tok, batch=2, accum=2, eval_rows=ROWS[:3])
    calls = []
    trainer.model.register_forward_hook(lambda *a: calls.append(1))
    trainer.train()
    assert len(calls) == 2  # 2 micro-batches, no extra forward for the logits
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert {"ce", "ntl", "mean_token_accuracy", "entropy"} <= set(logs[0])
    assert logs[0]["loss"] == pytest.approx(logs[0]["ce"] + LAM * logs[0]["ntl"], rel=1e-5)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_ce", "eval_ntl", "eval_mean_token_accuracy"} <= set(metrics)
    assert metrics["eval_ntl"] > 0
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_ce"] + LAM * metrics["eval_ntl"], rel=1e-5)
    assert trainer.state.log_history[-1]["eval_ntl"] == metrics["eval_ntl"]


def test_gradient_accumulation_equals_one_batch(tmp_path, tok):
    """2 micro-batches of 2 (different shares of number tokens) = 1 batch of 4, to 1e-6."""
    one = _trainer(tmp_path / "one", tok, batch=4, accum=1)
    acc = _trainer(tmp_path / "acc", tok, batch=2, accum=2)
    one.train()
    acc.train()
    a, b = one.model.state_dict(), acc.model.state_dict()
    moved = max((a[n] - _model(tok).state_dict()[n]).abs().max().item() for n in a)
    assert moved > 1e-3  # the step did something
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_rejects_what_it_cannot_honour(tmp_path, tok):
    with pytest.raises(ValueError, match="loss_type"):
        _trainer(tmp_path, tok, loss_type="dft")
