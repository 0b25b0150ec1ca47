"""Logits-free CE + NTL inside Hugging Face causal LMs: equal to materialized logits, no logits
built in training, ordinary logits in eval, clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from ntl import CrossEntropyWithNTL, NumberVocab
from ntl.integrations.causal_lm import count_causal_items, shift_labels
from ntl.integrations.logits_free import (
    LogitsFreeOutput,
    apply_logits_free,
    is_logits_free,
    remove_logits_free,
)

transformers = pytest.importorskip("transformers")

V = 96


def _vocab() -> NumberVocab:
    tok = {f"w{i}": i for i in range(V - 10)}
    tok.update({str(d): V - 10 + d for d in range(10)})
    return NumberVocab.from_vocab(tok, vocab_size=V)


def _config(arch: str):
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "mistral":
        return transformers.MistralConfig(**common)
    if arch == "phi3":
        return transformers.Phi3Config(**common)
    if arch == "granite":
        return transformers.GraniteConfig(**common, logits_scaling=4.0)
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=64, pad_token_id=0)
    raise ValueError(arch)


def _model(arch: str):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(arch)).double()
    model.train()
    return model


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, 12), generator=g)
    ids[:, 5:9] = torch.randint(V - 10, V, (3, 4), generator=g)  # numbers to predict
    mask = torch.ones_like(ids)
    mask[2, -3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a prompt
    return ids, mask, labels


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


ARCHS = ["llama", "qwen2", "mistral", "phi3", "gpt2", "granite"]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_free_equals_materialized(arch):
    vocab = _vocab()
    ids, mask, labels = _batch()
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
    ref_model = _model(arch)
    logits = ref_model(input_ids=ids, attention_mask=mask).logits
    ref = loss(logits, shift_labels(labels))
    ref.total.backward()

    model = apply_logits_free(_model(arch), loss, chunk_size=5)
    head_calls = []
    model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert isinstance(out, LogitsFreeOutput) and out.logits is None and not head_calls
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.ce, ref.ce, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.ntl, ref.ntl, rtol=1e-6, atol=1e-6)
    want, got = _grads(ref_model), _grads(model)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)


def test_counts_and_float32_model():
    """float32 model, CE / NTL denominators of a larger accumulated batch."""
    vocab = _vocab()
    ids, mask, labels = _batch(1)
    loss = CrossEntropyWithNTL(vocab, ntl="mse", lam=0.5)
    ref_model = _model("llama").float()
    n_ce, n_num = count_causal_items(labels, vocab)
    ref = loss(ref_model(input_ids=ids, attention_mask=mask).logits, shift_labels(labels),
               num_items_in_batch=n_ce + 7, num_number_items=n_num + 3)
    ref.total.backward()
    model = apply_logits_free(_model("llama").float(), loss)
    out = model(ids, attention_mask=mask, labels=labels, num_items_in_batch=n_ce + 7,
                num_number_items=n_num + 3)
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.total, rtol=1e-5, atol=1e-6)
    want, got = _grads(ref_model), _grads(model)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_eval_no_grad_and_generation_keep_logits():
    vocab = _vocab()
    ids, mask, labels = _batch()
    model = apply_logits_free(_model("llama"), CrossEntropyWithNTL(vocab))
    model.eval()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 12, V) and out.loss is not None  # the model's own CE
    model.train()
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=mask, labels=labels).logits is not None
    model.eval()
    gen = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 7)
    assert is_logits_free(model)
    remove_logits_free(model)
    assert not is_logits_free(model) and "forward" not in model.__dict__


def test_refusals():
    vocab = _vocab()
    with pytest.raises(ValueError, match="number-level"):
        apply_logits_free(_model("llama"), CrossEntropyWithNTL(vocab, ntl="number-level"))
    with pytest.raises(ValueError, match="vocab_size"):
        apply_logits_free(_model("llama"), CrossEntropyWithNTL(
            NumberVocab.from_vocab({"0": 0, "a": 1}, vocab_size=V + 1)))
    gemma = transformers.Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, head_dim=16,
                                      final_logit_softcapping=30.0)
    with pytest.raises(NotImplementedError, match="soft-caps"):
        apply_logits_free(transformers.Gemma2ForCausalLM(gemma), CrossEntropyWithNTL(vocab))
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(TypeError, match="decoder-only"):
        apply_logits_free(t5, CrossEntropyWithNTL(vocab))
    model = _model("llama")
    wrapped = copy.deepcopy(model)
    wrapped.lm_head.weight = torch.nn.Parameter(wrapped.lm_head.weight.detach()[: V // 2])
    apply_logits_free(wrapped, CrossEntropyWithNTL(vocab))  # a shard shows at forward time
    ids, mask, labels = _batch()
    with pytest.raises(RuntimeError, match="whole lm_head weight"):
        wrapped(input_ids=ids, attention_mask=mask, labels=labels)


def test_ntl_trainer_logits_free_equals_materialized(tmp_path):
    """NTLTrainer(logits_free=True): 3 optimizer steps with gradient accumulation log the same
    loss / ce / ntl and end at the same weights as training on materialized logits."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ddp_trainer_worker as w

    free = w.train(tmp_path, logits_free=True)
    materialized = w.train(tmp_path)
    assert free["lm_head_calls"] == 0 < materialized["lm_head_calls"]
    for key in ("loss", "ce", "ntl"):
        torch.testing.assert_close(torch.tensor(free[key]), torch.tensor(materialized[key]),
                                   rtol=1e-6, atol=1e-6, msg=key)
    for name, value in materialized["state"].items():
        torch.testing.assert_close(free["state"][name], value, rtol=1e-6, atol=1e-8, msg=name)
