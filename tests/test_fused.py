"""The fused CE+NTL paths against the plain functional losses: values and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ntl import (
    CrossEntropyWithNTL,
    LinearCrossEntropyWithNTL,
    LossOutput,
    NumberTokenLoss,
    NumberVocab,
)
from ntl.integrations.causal_lm import causal_lm_loss, count_causal_items, shift_labels
from ntl.losses import functional, fused
from ntl.losses.combined import FUSED_LOSSES
from ntl.losses.linear import linear_cross_entropy_with_ntl
from tests.helpers import V, digit_vocab, on_devices


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
               num_number_items=None, **opts) -> LossOutput:
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
    return LossOutput(ce + lam * ntl_value, ce, ntl_value)


def _weighted_sum(out, weights) -> torch.Tensor:
    """sum_i <out_i, weights_i> over the outputs that get a weight (on the outputs' device)."""
    return sum((o * (w.to(o.device) if isinstance(w, torch.Tensor) else w)).sum()
               for o, w in zip(out, weights) if w is not None)


def _run(fn, logits, weights):
    """Outputs of ``fn(x)`` and the gradient of sum_i <out_i, weights_i> w.r.t. x."""
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x)
    loss = _weighted_sum(out, weights)
    loss.backward()
    return [o.detach() for o in out], x.grad


# Which outputs receive a gradient: total only (the usual case), or ce/ntl separately too.
UPSTREAM = {"total": (1.0, None, None), "ce": (None, 1.0, None), "ntl": (None, None, 1.0),
            "mix": (0.7, -1.3, 2.0)}


@on_devices
@pytest.mark.parametrize(
    "ntl,reweigh,reduction,upstream",
    [c for c in itertools.product(FUSED_LOSSES, [False, True], functional.REDUCTIONS,
                                  UPSTREAM) if c[3] in ("total", "mix") or c[2] == "mean"],
)
def test_fused_matches_functional(ntl, reweigh, reduction, upstream, device):
    vocab = VOCABS["digits"]
    labels = _labels(vocab).to(device)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 7, V, dtype=torch.float64, generator=g) * 3).to(device)
    loss_weights = torch.rand(3, 7, dtype=torch.float64, generator=g).to(device)
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


@pytest.mark.parametrize("ntl,squash", [(n, None) for n in FUSED_LOSSES] + [("was", 5.0)])
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


@on_devices
def test_gradient_accumulation_equals_one_big_batch(device):
    vocab = VOCABS["digits"]
    labels = _labels(vocab, b=4, t=8, seed=6).to(device)
    logits = torch.randn(4, 8, V, dtype=torch.float64, device=device, requires_grad=True)
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


@on_devices
def test_no_number_targets_gives_exact_zero(device):
    vocab = VOCABS["digits"]
    labels = torch.randint(0, 40, (2, 5))
    labels[0, 0] = -100
    labels = labels.to(device)
    x = torch.randn(2, 5, V, device=device, requires_grad=True)
    out = fused.cross_entropy_with_ntl(x, labels, vocab, reweigh=True)
    assert out.ntl.item() == 0.0 and out.ntl.requires_grad
    out.total.backward()
    assert torch.isfinite(x.grad).all()
    ref = F.cross_entropy(x.detach().reshape(-1, V), labels.reshape(-1))
    torch.testing.assert_close(out.ce, ref)


@on_devices
def test_all_ignored_like_torch(device):
    """Every label ignored: CE is NaN as in torch (0/0), NTL is 0, the gradient is 0."""
    vocab = VOCABS["digits"]
    labels = torch.full((2, 3), -100, device=device)
    x = torch.randn(2, 3, V, device=device, requires_grad=True)
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


@on_devices
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype, device):
    """bf16/fp16 logits: float32 math inside, gradient in the logits' dtype."""
    vocab = VOCABS["digits"]
    labels = _labels(vocab, b=4, t=16, seed=2).to(device)
    logits = (torch.randn(4, 16, V) * 2).to(dtype).to(device)
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
def _linear_case(dtype=torch.float64, n=(3, 7), d=6, seed=0, device="cpu"):
    vocab = VOCABS["digits"]
    labels = _labels(vocab, *n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*n, d, generator=g, dtype=torch.float64).to(dtype)
    weight = (torch.randn(V, d, generator=g, dtype=torch.float64) / d**0.5).to(dtype)
    bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    return vocab, *(t.to(device) for t in (labels, hidden, weight, bias))


def _grads_of(fn, *tensors, weights=(1.0, None, None)):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    _weighted_sum(out, weights).backward()
    return [o.detach() for o in out], [t.grad for t in leaves]


@on_devices
@pytest.mark.parametrize("ntl,reweigh", [("was", False), ("was", True), ("mse", False),
                                         ("huber", True)])
@pytest.mark.parametrize("reduction", functional.REDUCTIONS)
def test_linear_equals_materialized_fp32(ntl, reweigh, reduction, device):
    """Logits-free path == materialized fused path == plain reference, fp32, within 1e-5."""
    vocab, labels, hidden, weight, bias = _linear_case(torch.float32, n=(4, 9), d=16,
                                                       device=device)
    kw = dict(ntl=ntl, reweigh=reweigh, reduction=reduction)
    shape = labels.shape if reduction == "none" else ()
    weights = (torch.rand(shape), None, None)
    ref, ref_g = _grads_of(lambda h, w, b: _reference(
        h @ w.t() + b, labels, vocab, lam=0.3, **kw), hidden, weight, bias, weights=weights)
    out, g = _grads_of(lambda h, w, b: linear_cross_entropy_with_ntl(
        h, w, labels, vocab, bias=b, chunk_size=5, **kw), hidden, weight, bias, weights=weights)
    for a, b in zip(out + g, ref + ref_g):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@on_devices
@pytest.mark.parametrize("upstream", ["ce", "ntl", "mix"])
def test_linear_split_backward_recomputes(upstream, device):
    vocab, labels, hidden, weight, _ = _linear_case(device=device)
    weights = UPSTREAM[upstream]
    ref, ref_g = _grads_of(lambda h, w: _reference(h @ w.t(), labels, vocab, ntl="was",
                                                   lam=0.3, reweigh=True),
                           hidden, weight, weights=weights)
    out, g = _grads_of(lambda h, w: linear_cross_entropy_with_ntl(
        h, w, labels, vocab, reweigh=True, chunk_size=4), hidden, weight, weights=weights)
    for a, b in zip(out + g, ref + ref_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@on_devices
def test_linear_bf16_close_to_materialized(device):
    vocab, labels, hidden, weight, _ = _linear_case(torch.bfloat16, n=(4, 16), d=32,
                                                    device=device)
    ref, ref_g = _grads_of(lambda h, w: fused.cross_entropy_with_ntl(h @ w.t(), labels, vocab),
                           hidden, weight)
    out, g = _grads_of(lambda h, w: linear_cross_entropy_with_ntl(
        h, w, labels, vocab, chunk_size=8), hidden, weight)
    assert g[0].dtype == g[1].dtype == torch.bfloat16
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


def test_linear_frozen_weight_and_no_grad():
    vocab, labels, hidden, weight, _ = _linear_case(torch.float32)
    h = hidden.clone().requires_grad_(True)
    out = linear_cross_entropy_with_ntl(h, weight, labels, vocab)
    out.total.backward()
    assert weight.grad is None and h.grad is not None
    with torch.no_grad():
        again = linear_cross_entropy_with_ntl(h, weight, labels, vocab)
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

    out = causal_lm_loss(model, input_ids, labels, vocab, attention_mask=mask)
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    logits = model(input_ids=input_ids, attention_mask=mask).logits
    ref = _reference(logits, shift_labels(labels), vocab, ntl="was", lam=0.3)
    ref.total.backward()
    torch.testing.assert_close(out.total, ref.total.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    n_ce, n_num = count_causal_items(labels, vocab)
    shifted = shift_labels(labels)
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
    lin = linear_cross_entropy_with_ntl(hidden, weight, labels.reshape(-1), vocab)
    torch.testing.assert_close(lin.ce, ref.ce)


# ---------------------------------------------------------------------- module = functions
@on_devices
@pytest.mark.parametrize("reduction", functional.REDUCTIONS)
@pytest.mark.parametrize("impl", [True, False], ids=["fused", "autograd"])
def test_module_reduction_equals_the_functional_losses(reduction, impl, device):
    """CrossEntropyWithNTL(reduction=...) reduces both terms as the functions do (it used to
    hand the keyword to the inner NTL only and return a mean)."""
    vocab = VOCABS["digits"]
    labels = _labels(vocab, b=3, t=9, seed=4).to(device)
    logits = (torch.randn(3, 9, V, dtype=torch.float64) * 2).to(device)
    module = CrossEntropyWithNTL(vocab, ntl="mse", lam=0.4, reduction=reduction,
                                 fused=impl).to(device)
    ref, ref_grad = _run(lambda x: _reference(x, labels, vocab, ntl="mse", lam=0.4,
                                              reduction=reduction), logits, [1.0, None, None])
    out, grad = _run(lambda x: module(x, labels), logits, [1.0, None, None])
    fn = fused.cross_entropy_with_ntl(logits, labels, vocab, ntl="mse", lam=0.4,
                                      reduction=reduction, fused=impl)
    for a, b, c in zip(out, ref, fn):
        assert a.shape == b.shape == ((3, 9) if reduction == "none" else ())
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@on_devices
def test_linear_module_equals_the_function(device):
    vocab, labels, hidden, weight, bias = _linear_case(torch.float64, device=device)
    module = LinearCrossEntropyWithNTL(vocab, ntl="huber", lam=0.6, reduction="sum",
                                       chunk_size=4, huber_delta=0.5).to(device)
    got, g = _grads_of(lambda h, w, b: module(h, w, labels, bias=b), hidden, weight, bias)
    want, g_ref = _grads_of(lambda h, w, b: linear_cross_entropy_with_ntl(
        h, w, labels, vocab, bias=b, ntl="huber", lam=0.6, reduction="sum", huber_delta=0.5),
        hidden, weight, bias)
    for a, b in zip(got + g, want + g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- precision
def _values_0_to_999() -> NumberVocab:
    tok = {str(i): i for i in range(1000)}
    tok["word"] = 1000
    return NumberVocab.from_vocab(tok, mode="numbers")


@on_devices
@pytest.mark.parametrize("ntl", ["was", "mse"])
@pytest.mark.parametrize("tokens", [(500, 499), (999, 0), (7, 3)])
def test_fused_fp32_gradient_is_precise_at_large_logits(ntl, tokens, device):
    """Values 0..999 and a word; logits −50 except 150.3 and 144.3 (two number tokens) and 155
    (the word); label 0. The fused fp32 gradient stays within 1e-6 of float64 (the cancellation
    in q·(d − E_q[d]) cost up to 4e-4 relative, 0.3 for MSE)."""
    vocab = _values_0_to_999()
    x = torch.full((1, 1001), -50.0)
    x[0, tokens[0]], x[0, tokens[1]], x[0, 1000] = 150.3, 144.3, 155.0
    x = x.to(device)
    labels = torch.tensor([0], device=device)

    def grad_of(z: torch.Tensor, impl: bool) -> torch.Tensor:
        z = z.detach().requires_grad_(True)
        fused.cross_entropy_with_ntl(z, labels, vocab, ntl=ntl, lam=0.3, fused=impl).total.backward()
        return z.grad.double()

    exact = grad_of(x.double(), False)  # float64 on the same (float32-rounded) logits
    err = (grad_of(x, True) - exact).norm() / exact.norm()
    assert err < 1e-6, float(err)
    hidden = x.detach().clone().requires_grad_(True)  # the logits-free path, hidden = logits
    linear_cross_entropy_with_ntl(hidden, torch.eye(1001, device=device), labels, vocab,
                                  ntl=ntl, lam=0.3).total.backward()
    assert (hidden.grad.double() - exact).norm() / exact.norm() < 1e-6


# ---------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("lam", ["0.3", None, True, float("nan")])
def test_lam_must_be_a_number(lam):
    vocab = VOCABS["digits"]
    x, labels = torch.randn(2, V), torch.tensor([41, 3])
    error = ValueError if isinstance(lam, float) else TypeError
    with pytest.raises(error, match=rf"lam must be .*{lam!r}|lam must be .*nan"):
        CrossEntropyWithNTL(vocab, lam=lam)
    with pytest.raises(error, match="lam must be"):
        fused.cross_entropy_with_ntl(x, labels, vocab, lam=lam)
    with pytest.raises(error, match="lam must be"):
        linear_cross_entropy_with_ntl(x, torch.eye(V), labels, vocab, lam=lam)
    assert float(CrossEntropyWithNTL(vocab, lam=torch.tensor(0.5)).lam) == 0.5


# ---------------------------------------------------------------------- renamed names
def test_moved_names_still_work_with_a_warning():
    vocab = VOCABS["digits"]
    with pytest.warns(FutureWarning, match="LossOutput"):
        assert fused.FusedOutput is LossOutput
    with pytest.warns(FutureWarning, match="ntl.losses.linear.linear_cross_entropy_with_ntl"):
        assert fused.linear_cross_entropy_with_ntl is linear_cross_entropy_with_ntl
    for name, new in [("causal_lm_loss", causal_lm_loss), ("shift_labels", shift_labels),
                      ("count_causal_items", count_causal_items)]:
        with pytest.warns(FutureWarning, match=f"ntl.integrations.causal_lm.{name}"):
            assert getattr(fused, name) is new
    with pytest.raises(AttributeError):
        fused.no_such_name  # noqa: B018
    with pytest.warns(FutureWarning, match=r"NumberTokenLoss\(ntl='mse'\)"):
        old = NumberTokenLoss(vocab, loss="mse")
    assert old.loss_name == "mse"
    x, labels = torch.randn(3, V), torch.tensor([41, 3, 45])
    with pytest.warns(FutureWarning, match=r"expectation\(ntl='mae'\)"):
        value = functional.expectation(x, labels, vocab, loss="mae")
    torch.testing.assert_close(value, functional.expectation(x, labels, vocab, ntl="mae"))
    with pytest.raises(TypeError, match="old name of ntl="):
        NumberTokenLoss(vocab, "mae", loss="mse")
