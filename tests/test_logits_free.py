"""Logits-free CE + NTL inside Hugging Face causal LMs: equal to materialized logits, no logits
built in training, ordinary logits in eval, clear refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from ntl import CrossEntropyWithNTL, LinearCrossEntropyWithNTL, NumberVocab
from ntl.integrations.causal_lm import causal_lm_loss, count_causal_items, shift_labels
from ntl.integrations.logits_free import (
    LogitsFreeOutput,
    apply_logits_free,
    is_logits_free,
    remove_logits_free,
)
from tests.helpers import on_devices

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


def _model(arch: str, device: str = "cpu"):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(arch)).double().to(device)
    model.train()
    return model


def _batch(seed: int = 0, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, 12), generator=g)
    ids[:, 5:9] = torch.randint(V - 10, V, (3, 4), generator=g)  # numbers to predict
    mask = torch.ones_like(ids)
    mask[2, -3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a prompt
    return ids.to(device), mask.to(device), labels.to(device)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


ARCHS = ["llama", "qwen2", "mistral", "phi3", "gpt2", "granite"]


@on_devices
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_free_equals_materialized(arch, device):
    vocab = _vocab()
    ids, mask, labels = _batch(device=device)
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3).to(device)
    ref_model = _model(arch, device)
    logits = ref_model(input_ids=ids, attention_mask=mask).logits
    ref = loss(logits, shift_labels(labels))
    ref.total.backward()

    model = apply_logits_free(_model(arch, device), loss, chunk_size=5)
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


# ---------------------------------------------------------------------- HF's calling conventions
def test_shift_labels_are_honoured():
    """A caller's shift_labels (already aligned targets, as HF's ForCausalLMLoss takes them)
    replace the label shift; labels may then be None."""
    vocab = _vocab()
    ids, mask, labels = _batch(2)
    targets = shift_labels(labels)
    targets[0, 6:8] = -100  # different from shift(labels): e.g. a packed-sequence boundary
    loss = CrossEntropyWithNTL(vocab, ntl="mse", lam=0.5)
    ref_model = _model("llama")
    ref = loss(ref_model(input_ids=ids, attention_mask=mask).logits, targets)
    model = apply_logits_free(_model("llama"), loss)
    for given in (labels, None):
        out = model(input_ids=ids, attention_mask=mask, labels=given, shift_labels=targets)
        torch.testing.assert_close(out.loss, ref.total.detach(), rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(out.ntl, ref.ntl.detach(), rtol=1e-7, atol=1e-8)
    direct = causal_lm_loss(_model("llama"), ids, None, loss, attention_mask=mask,
                            shift_labels=targets)
    torch.testing.assert_close(direct.total, ref.total.detach(), rtol=1e-7, atol=1e-8)


def test_return_dict_false_gives_a_tuple_with_the_loss_first():
    vocab = _vocab()
    ids, mask, labels = _batch()
    model = apply_logits_free(_model("llama"), CrossEntropyWithNTL(vocab))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    as_tuple = model(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 3
    for a, b in zip(as_tuple, (out.loss, out.ce, out.ntl)):
        torch.testing.assert_close(a, b)
    model.config.return_dict = False  # the config's default, as transformers reads it
    assert isinstance(model(input_ids=ids, attention_mask=mask, labels=labels), tuple)
    assert isinstance(model(input_ids=ids, attention_mask=mask, labels=labels,
                            return_dict=True), LogitsFreeOutput)


@pytest.mark.parametrize("arch", ["llama", "granite"])
def test_causal_lm_loss_is_the_patch_s_loss(arch):
    """One helper: causal_lm_loss and the patched forward compute the same loss (Granite's
    logits_scaling included), with a module or a vocabulary and keywords."""
    vocab = _vocab()
    ids, mask, labels = _batch(3)
    loss = LinearCrossEntropyWithNTL(vocab, ntl="huber", lam=0.7, chunk_size=4)
    patched = apply_logits_free(_model(arch), loss)(input_ids=ids, attention_mask=mask,
                                                     labels=labels)
    model = _model(arch)
    direct = causal_lm_loss(model, ids, labels, loss, attention_mask=mask)
    by_vocab = causal_lm_loss(model, ids, labels, vocab, attention_mask=mask, ntl="huber",
                              lam=0.7)
    ref = CrossEntropyWithNTL(vocab, ntl="huber", lam=0.7)(
        model(input_ids=ids, attention_mask=mask).logits, shift_labels(labels))
    for out in (direct, by_vocab):
        torch.testing.assert_close(out.total, patched.loss.detach(), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(out.total, ref.total, rtol=1e-9, atol=1e-10)


def test_peft_modules_to_save_head_is_unwrapped():
    """PEFT with lm_head in modules_to_save: the loss reads the trained copy PEFT's forward
    uses, and equals training the PEFT model on materialized logits."""
    peft = pytest.importorskip("peft")
    vocab = _vocab()
    ids, mask, labels = _batch(4)
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)

    def peft_model():
        config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                 modules_to_save=["lm_head"], init_lora_weights=False)
        model = peft.get_peft_model(_model("llama"), config)
        model.train()
        head = model.get_output_embeddings()
        with torch.no_grad():  # the trained copy differs from the frozen original
            head.modules_to_save["default"].weight.mul_(1.5)
        return model

    ref_model = peft_model()
    ref = loss(ref_model(input_ids=ids, attention_mask=mask).logits, shift_labels(labels))
    ref.total.backward()
    model = apply_logits_free(peft_model(), loss)
    assert is_logits_free(model)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert isinstance(out, LogitsFreeOutput)
    out.loss.backward()
    torch.testing.assert_close(out.loss, ref.total, rtol=1e-7, atol=1e-8)
    want, got = _grads(ref_model), _grads(model)
    assert want.keys() == got.keys() and any("modules_to_save" in k for k in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)
    remove_logits_free(model)
    assert not is_logits_free(model)
