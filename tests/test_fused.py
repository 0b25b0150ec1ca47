"""The fused CE+NTL paths against the plain functional losses: values and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ntl import CrossEntropyWithNTL, NumberVocab
from ntl.losses import functional, fused
from tests.vocabs import V, digit_vocab


def _multidigit_vocab() -> NumberVocab:
    """Numbers-mode vocabulary with uneven values (0..9, 10, 25, 100, 999), as Llama-3's."""
    tok = {f"t{i}": i for i in range(40)}
    for i, n in enumerate(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "25", "100",
                           "999"]):
        tok[n] = 40 + i
    return NumberVocab.from_vocab(tok, mode="numbers", vocab_size=V)


VOCABS = {"digits": digit_vocab(), "numbers": _multidigit_vocab()}


def _labels(vocab: NumberVocab, b: int = 3, t: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (b, t), generator=g)
    ids = vocab.number_ids
    labels[1, :4] = ids[torch.randint(0, ids.numel(), (4,), generator=g)]
    labels[0, :3] = -100
    return labels


def _reference(logits, labels, vocab, *, ntl, lam, reduction="mean", num_items_in_batch=None,
               num_number_items=None, **opts) -> fused.FusedOutput:
    """CE (torch, in the logits' dtype) + λ·NTL (functional): the unfused definition."""
    ntl_value = functional.get_loss(ntl)(logits, labels, vocab, reduction=reduction,
                                         num_items_in_batch=num_number_items, **opts)
    flat, target = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if reduction == "none":
        ce = F.cross_entropy(flat, target, reduction="none").reshape(labels.shape)
    elif num_items_in_batch is not None:
        ce = F.cross_entropy(flat, target, reduction="sum") / num_items_in_batch
    else:
        ce = F.cross_entropy(flat, target, reduction=reduction)
    return fused.FusedOutput(ce + lam * ntl_value, ce, ntl_value)


def _run(fn, logits, weights):
    """Outputs of ``fn(x)`` and the gradient of sum_i <out_i, weights_i> w.r.t. x."""
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x)
    loss = sum((o * w).sum() for o, w in zip(out, weights) if w is not None)
    loss.backward()
    return [o.detach() for o in out], x.grad


# Which outputs receive a gradient: total only (the usual case), or ce/ntl separately too.
UPSTREAM = {"total": (1.0, None, None), "ce": (None, 1.0, None), "ntl": (None, None, 1.0),
            "mix": (0.7, -1.3, 2.0)}


@pytest.mark.parametrize(
    "ntl,reweigh,reduction,upstream",
    [c for c in itertools.product(fused.FUSED_LOSSES, [False, True], functional.REDUCTIONS,
                                  UPSTREAM) if c[3] in ("total", "mix") or c[2] == "mean"],
)
def test_fused_matches_functional(ntl, reweigh, reduction, upstream):
    vocab = VOCABS["digits"]
    labels = _labels(vocab)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, V, dtype=torch.float64, generator=g) * 3
    loss_weights = torch.rand(3, 7, dtype=torch.float64, generator=g)
    opts = dict(reweigh=reweigh, loss_weights=loss_weights)
    if ntl == "huber":
        opts["huber_delta"] = 0.7
    shape = () if reduction != "none" else labels.shape
    weights = [None if s is None else torch.full(shape, s, dtype=torch.float64) *
               (1 + torch.rand(shape, dtype=torch.float64, generator=g))
               for s in UPSTREAM[upstream]]
    ref, ref_grad = _run(lambda x: _reference(x, labels, vocab, ntl=ntl, lam=0.3,
                                              reduction=reduction, **opts), logits, weights)
    out, grad = _run(lambda x: fused.cross_entropy_with_ntl(
        x, labels, vocab, ntl=ntl, lam=0.3, reduction=reduction, chunk_size=4, **opts),
        logits, weights)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ntl,squash", [(n, None) for n in fused.FUSED_LOSSES] + [("was", 5.0)])
def test_fused_multi_digit_tokens_and_squash(ntl, squash):
    vocab = VOCABS["numbers"]
    labels = _labels(vocab, b=2, t=9, seed=3)
    logits = torch.randn(2, 9, V, dtype=torch.float64) * 2
    opts = {"squash_factor": squash} if squash is not None else {}
    ref, ref_grad = _run(lambda x: _reference(x, labels, vocab, ntl=ntl, lam=0.8, reweigh=True,
                                              **opts), logits, [1.0, None, None])
    out, grad = _run(lambda x: fused.cross_entropy_with_ntl(
        x, labels, vocab, ntl=ntl, lam=0.8, reweigh=True, **opts), logits, [1.0, None, None])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


def test_fused_equals_core_module_fp32_with_num_items():
    """The core CrossEntropyWithNTL (float32) with HF's num_items_in_batch semantics."""
    vocab = VOCABS["digits"]
    labels = _labels(vocab, b=4, t=16, seed=5)
    logits = torch.randn(4, 16, V)
    module = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
    n_ce, n_num = module.count_items(labels)
    n_ce, n_num = n_ce + 7, n_num + 3  # as if more micro-batches followed
    weights = [1.0, None, None]
    ref, ref_grad = _run(lambda x: module(x, labels, num_items_in_batch=n_ce,
                                          num_number_items=n_num), logits, weights)
    out, grad = _run(lambda x: fused.cross_entropy_with_ntl(
        x, labels, vocab, num_items_in_batch=n_ce, num_number_items=n_num), logits, weights)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_equals_one_big_batch():
    vocab = VOCABS["digits"]
    labels = _labels(vocab, b=4, t=8, seed=6)
    logits = torch.randn(4, 8, V, dtype=torch.float64, requires_grad=True)
    big = fused.cross_entropy_with_ntl(logits, labels, vocab)
    (g_big,) = torch.autograd.grad(big.total, logits)
    n_ce, n_num = (labels != -100).sum(), functional.count_number_targets(labels, vocab)
    g_acc = torch.zeros_like(logits)
    total = 0.0
    for part in (slice(0, 1), slice(1, 4)):
        x = logits[part].detach().requires_grad_(True)
        out = fused.cross_entropy_with_ntl(x, labels[part], vocab, num_items_in_batch=n_ce,
                                           num_number_items=n_num)
        out.total.backward()
        g_acc[part] = x.grad
        total = total + out.total.detach()
    torch.testing.assert_close(total, big.total.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_acc, g_big, rtol=1e-10, atol=1e-12)


def test_no_number_targets_gives_exact_zero():
    vocab = VOCABS["digits"]
    labels = torch.randint(0, 40, (2, 5))
    labels[0, 0] = -100
    x = torch.randn(2, 5, V, requires_grad=True)
    out = fused.cross_entropy_with_ntl(x, labels, vocab, reweigh=True)
    assert out.ntl.item() == 0.0 and out.ntl.requires_grad
    out.total.backward()
    assert torch.isfinite(x.grad).all()
    ref = F.cross_entropy(x.detach().reshape(-1, V), labels.reshape(-1))
    torch.testing.assert_close(out.ce, ref)


def test_all_ignored_like_torch():
    """Every label ignored: CE is NaN as in torch (0/0), NTL is 0, the gradient is 0."""
    vocab = VOCABS["digits"]
    labels = torch.full((2, 3), -100)
    x = torch.randn(2, 3, V, requires_grad=True)
    out = fused.cross_entropy_with_ntl(x, labels, vocab)
    assert torch.isnan(out.ce) and out.ntl.item() == 0.0
    out.total.backward()
    assert (x.grad == 0).all()
    summed = fused.cross_entropy_with_ntl(x, labels, vocab, num_items_in_batch=0)
    assert summed.total.item() == 0.0


def test_ignore_index_other_value_and_2d_logits():
    vocab = VOCABS["digits"]
    labels = _labels(vocab).reshape(-1)
    labels[labels == -100] = 7777
    x = torch.randn(labels.numel(), V, dtype=torch.float64)
    ref, ref_grad = _run(lambda z: _reference(
        z, torch.where(labels == 7777, -100, labels), vocab, ntl="mse", lam=0.5), x,
        [1.0, None, None])
    out, grad = _run(lambda z: fused.cross_entropy_with_ntl(
        z, labels, vocab, ntl="mse", lam=0.5, ignore_index=7777), x, [1.0, None, None])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_chunk_sizes_agree(chunk_size):
    vocab = VOCABS["digits"]
    labels = _labels(vocab, b=3, t=11, seed=9)
    x = torch.randn(3, 11, V, dtype=torch.float64)
    ref, ref_grad = _run(lambda z: fused.cross_entropy_with_ntl(z, labels, vocab), x,
                         [1.0, None, None])
    out, grad = _run(lambda z: fused.cross_entropy_with_ntl(z, labels, vocab,
                                                            chunk_size=chunk_size), x,
                     [1.0, None, None])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype):
    """bf16/fp16 logits: float32 math inside, gradient in the logits' dtype."""
    vocab = VOCABS["digits"]
    labels = _labels(vocab, b=4, t=16, seed=2)
    logits = (torch.randn(4, 16, V) * 2).to(dtype)
    ref, ref_grad = _run(lambda x: _reference(x.float(), labels, vocab, ntl="was", lam=0.3),
                         logits, [1.0, None, None])
    out, grad = _run(lambda x: fused.cross_entropy_with_ntl(x, labels, vocab, chunk_size=8),
                     logits, [1.0, None, None])
    assert grad.dtype == dtype and out[0].dtype == torch.float32
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-4)


def test_no_grad_and_eval_values():
    vocab = VOCABS["digits"]
    labels = _labels(vocab)
    x = torch.randn(3, 7, V)
    with torch.no_grad():
        out = fused.cross_entropy_with_ntl(x.requires_grad_(True), labels, vocab)
    ref = _reference(x.detach(), labels, vocab, ntl="was", lam=0.3)
    assert out.total.grad_fn is None
    torch.testing.assert_close(out.total, ref.total)


def test_number_level_falls_back_to_plain_path():
    vocab = VOCABS["digits"]
    labels = _labels(vocab)
    x = torch.randn(3, 7, V)
    out = fused.cross_entropy_with_ntl(x, labels, vocab, ntl="number-level")
    ref = CrossEntropyWithNTL(vocab, ntl="number-level")(x, labels)
    torch.testing.assert_close(out.total, ref.total)


def test_errors_are_clear():
    vocab = VOCABS["digits"]
    x = torch.randn(2, 3, V, requires_grad=True)
    bad = torch.full((2, 3), V + 5)
    with pytest.raises(ValueError, match="token ids in"):
        fused.cross_entropy_with_ntl(x, bad, vocab)
    with pytest.raises(ValueError, match="vocab_size"):
        fused.cross_entropy_with_ntl(torch.randn(2, 3, V + 1), torch.zeros(2, 3).long(), vocab)
    with pytest.raises(ValueError, match="lam"):
        fused.cross_entropy_with_ntl(x, torch.zeros(2, 3).long(), vocab, lam=-1)
    out = fused.cross_entropy_with_ntl(x, torch.zeros(2, 3).long(), vocab)
    out.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        out.total.backward()


# ---------------------------------------------------------------------- logits-free path
def _linear_case(dtype=torch.float64, n=(3, 7), d=6, seed=0):
    vocab = VOCABS["digits"]
    labels = _labels(vocab, *n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*n, d, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, d, generator=g, dtype=torch.float64) / d**0.5).to(dtype)
    bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    return vocab, labels, hidden, weight, bias


def _grads_of(fn, *tensors, weights=(1.0, None, None)):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    sum((o * w).sum() for o, w in zip(out, weights) if w is not None).backward()
    return [o.detach() for o in out], [t.grad for t in leaves]


@pytest.mark.parametrize("ntl,reweigh", [("was", False), ("was", True), ("mse", False),
                                         ("huber", True)])
@pytest.mark.parametrize("reduction", functional.REDUCTIONS)
def test_linear_equals_materialized_fp32(ntl, reweigh, reduction):
    """Logits-free path == materialized fused path == plain reference, fp32, within 1e-5."""
    vocab, labels, hidden, weight, bias = _linear_case(torch.float32, n=(4, 9), d=16)
    kw = dict(ntl=ntl, reweigh=reweigh, reduction=reduction)
    shape = labels.shape if reduction == "none" else ()
    weights = (torch.rand(shape), None, None)
    ref, ref_g = _grads_of(lambda h, w, b: _reference(
        h @ w.t() + b, labels, vocab, lam=0.3, **kw), hidden, weight, bias, weights=weights)
    out, g = _grads_of(lambda h, w, b: fused.linear_cross_entropy_with_ntl(
        h, w, labels, vocab, bias=b, chunk_size=5, **kw), hidden, weight, bias, weights=weights)
    for a, b in zip(out + g, ref + ref_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("upstream", ["ce", "ntl", "mix"])
def test_linear_split_backward_recomputes(upstream):
    vocab, labels, hidden, weight, _ = _linear_case()
    weights = UPSTREAM[upstream]
    ref, ref_g = _grads_of(lambda h, w: _reference(h @ w.t(), labels, vocab, ntl="was",
                                                   lam=0.3, reweigh=True),
                           hidden, weight, weights=weights)
    out, g = _grads_of(lambda h, w: fused.linear_cross_entropy_with_ntl(
        h, w, labels, vocab, reweigh=True, chunk_size=4), hidden, weight, weights=weights)
    for a, b in zip(out + g, ref + ref_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_linear_bf16_close_to_materialized():
    vocab, labels, hidden, weight, _ = _linear_case(torch.bfloat16, n=(4, 16), d=32)
    ref, ref_g = _grads_of(lambda h, w: fused.cross_entropy_with_ntl(h @ w.t(), labels, vocab),
                           hidden, weight)
    out, g = _grads_of(lambda h, w: fused.linear_cross_entropy_with_ntl(
        h, w, labels, vocab, chunk_size=8), hidden, weight)
    assert g[0].dtype == g[1].dtype == torch.bfloat16
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


def test_linear_frozen_weight_and_no_grad():
    vocab, labels, hidden, weight, _ = _linear_case(torch.float32)
    h = hidden.clone().requires_grad_(True)
    out = fused.linear_cross_entropy_with_ntl(h, weight, labels, vocab)
    out.total.backward()
    assert weight.grad is None and h.grad is not None
    with torch.no_grad():
        again = fused.linear_cross_entropy_with_ntl(h, weight, labels, vocab)
    torch.testing.assert_close(again.total, out.total.detach())


def test_causal_lm_loss_equals_logits_path():
    transformers = pytest.importorskip("transformers")
    vocab = VOCABS["digits"]
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    input_ids = torch.randint(0, V, (2, 10))
    input_ids[:, 3:6] = vocab.number_ids[torch.randint(0, 10, (2, 3))]
    labels = input_ids.clone()
    labels[:, :2] = -100
    mask = torch.ones_like(input_ids)

    out = fused.causal_lm_loss(model, input_ids, labels, vocab, attention_mask=mask)
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logits = model(input_ids=input_ids, attention_mask=mask).logits
    ref = _reference(logits, fused.shift_labels(labels), vocab, ntl="was", lam=0.3)
    ref.total.backward()
    torch.testing.assert_close(out.total, ref.total.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    n_ce, n_num = fused.count_causal_items(labels, vocab)
    shifted = fused.shift_labels(labels)
    assert int(n_ce) == int((shifted != -100).sum())
    assert int(n_num) == int(functional.count_number_targets(shifted, vocab)) >= 6


def test_very_large_ce_is_exact():
    """Where the softmax at the target underflows in float32 (CE > 69), CE is recomputed."""
    vocab = VOCABS["digits"]
    labels = torch.tensor([[3, 45, 7, -100]])
    x = torch.randn(1, 4, V)
    x[0, 0, 3] = -150.0  # p(target) ~ e^-150: 0 in float32
    x[0, 1, 45] = -90.0
    ref = _reference(x, labels, vocab, ntl="was", lam=0.3)
    out = fused.cross_entropy_with_ntl(x, labels, vocab)
    torch.testing.assert_close(out.ce, ref.ce)
    torch.testing.assert_close(out.total, ref.total)
    hidden, weight = x.reshape(4, V), torch.eye(V)
    lin = fused.linear_cross_entropy_with_ntl(hidden, weight, labels.reshape(-1), vocab)
    torch.testing.assert_close(lin.ce, ref.ce)
