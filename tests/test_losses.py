"""The Number Token Loss functions and modules: math, gradients, reductions, dtypes, errors."""

from __future__ import annotations

import copy
import doctest

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from ntl import CrossEntropyWithNTL, NumberTokenLoss, NumberVocab
from ntl.losses import functional as F
from tests.helpers import on_devices

ALL = ["was", "mse", "mae", "huber", "number-level"]
REDUCTIONS = ["mean", "sum", "none"]


def toy_vocab(values=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9), extra=("a", "b", ".", "-", "c")):
    """Number tokens first (ids 0..K-1), then words; mode 'numbers' to allow any decimal."""
    # Duplicate values become distinct tokens with space markers ('5', '▁5'), as in real vocabularies.
    tokens = ["▁" * list(values[:i]).count(v) + str(v) for i, v in enumerate(values)] + list(extra)
    mapping = {t: i for i, t in enumerate(tokens)}
    return NumberVocab.from_vocab(mapping, mode="numbers"), mapping


def digit_batch(vocab, b=3, t=7, seed=0, dtype=torch.float64, frac_number=0.6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, vocab.vocab_size, generator=g, dtype=dtype)
    labels = torch.randint(0, vocab.vocab_size, (b, t), generator=g)
    number = torch.rand(b, t, generator=g) < frac_number
    ids = vocab.number_ids[torch.randint(0, vocab.num_number_tokens, (b, t), generator=g)]
    labels = torch.where(number, ids, labels)
    labels[0, -1] = -100
    return logits, labels


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(name, reduction):
    vocab, _ = toy_vocab()
    logits, labels = digit_batch(vocab, b=2, t=5)
    logits.requires_grad_(True)
    fn = F.LOSSES[name]

    def f(x):
        return fn(x, labels, vocab, reduction=reduction)

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["was", "mse"])
def test_gradcheck_reweigh_weights_and_soft_targets(name):
    vocab, _ = toy_vocab()
    logits, labels = digit_batch(vocab, b=2, t=5)
    weights = torch.rand(2, 5, dtype=torch.float64)
    logits.requires_grad_(True)
    fn = F.LOSSES[name]
    assert torch.autograd.gradcheck(
        lambda x: fn(x, labels, vocab, reweigh=True, loss_weights=weights), (logits,))
    soft = torch.softmax(torch.randn(2, 5, 10, dtype=torch.float64), -1)
    assert torch.autograd.gradcheck(
        lambda x: F.wasserstein(x, labels, vocab, target_probs=soft), (logits,))


# ---------------------------------------------------------------- Wasserstein math
@pytest.mark.parametrize(
    "values",
    [tuple(range(10)), (0, 0.5, 3, 10, 250, 999), (1, 1, 2, 5, 5, 5, 7.5), (3,)],
    ids=["digits", "uneven", "duplicates", "single"],
)
def test_soft_target_w1_equals_scipy(values):
    vocab, _ = toy_vocab(values)
    k = len(values)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, vocab.vocab_size, generator=g, dtype=torch.float64)
    labels = vocab.number_ids[torch.randint(0, k, (4, 6), generator=g)]
    q = torch.softmax(3 * torch.randn(4, 6, k, generator=g, dtype=torch.float64), -1)
    got = F.wasserstein(logits, labels, vocab, target_probs=q, reduction="none")
    p = torch.softmax(logits[..., vocab.number_ids], -1)
    v = vocab.number_values.double().numpy()
    for i in range(4):
        for j in range(6):
            want = wasserstein_distance(v, v, p[i, j].numpy(), q[i, j].numpy())
            assert abs(got[i, j].item() - want) < 1e-6


def test_soft_target_equals_one_hot_form():
    vocab, _ = toy_vocab((0, 2, 2, 7, 30))
    logits, labels = digit_batch(vocab, frac_number=1.0)
    labels[0, -1] = vocab.number_ids[0]
    col = torch.searchsorted(vocab.number_ids, labels)
    one_hot = torch.nn.functional.one_hot(col, vocab.num_number_tokens).double()
    soft = F.wasserstein(logits, labels, vocab, target_probs=one_hot, reduction="none")
    hard = F.wasserstein(logits, labels, vocab, reduction="none")
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["was", "mse", "mae", "huber", "number-level"])
def test_dirac_zero_at_target_and_increasing_with_distance(name):
    vocab, _ = toy_vocab()
    target = 4
    labels = torch.full((1, 1), target)
    losses = []
    for pred in range(10):
        logits = torch.full((1, 1, vocab.vocab_size), -60.0, dtype=torch.float64)
        logits[0, 0, pred] = 60.0
        losses.append(F.LOSSES[name](logits, labels, vocab).item())
    assert losses[target] < 1e-12
    by_distance = {}
    for pred, loss in enumerate(losses):
        by_distance.setdefault(abs(pred - target), []).append(loss)
    distances = sorted(by_distance)
    for near, far in zip(distances, distances[1:]):
        assert max(by_distance[near]) < min(by_distance[far]), (name, near, far, losses)


def test_known_values():
    vocab, _ = toy_vocab()
    logits = torch.full((1, 1, vocab.vocab_size), -1e4, dtype=torch.float64)
    logits[0, 0, 2] = 0.0
    logits[0, 0, 8] = 0.0  # half on 2, half on 8 -> expected value 5
    labels = torch.tensor([[5]])
    assert F.wasserstein(logits, labels, vocab).item() == pytest.approx(3.0)
    assert F.expectation(logits, labels, vocab, ntl="mse").item() == pytest.approx(0.0, abs=1e-12)
    labels = torch.tensor([[2]])
    assert F.wasserstein(logits, labels, vocab).item() == pytest.approx(3.0)
    assert F.expectation(logits, labels, vocab, ntl="mse").item() == pytest.approx(9.0)
    assert F.expectation(logits, labels, vocab, ntl="mae").item() == pytest.approx(3.0)
    assert F.expectation(logits, labels, vocab, ntl="huber").item() == pytest.approx(2.5)


def test_squash_factor_scales_distances():
    vocab, _ = toy_vocab()
    logits = torch.full((1, 1, vocab.vocab_size), -1e4, dtype=torch.float64)
    labels = torch.tensor([[0]])
    out = {}
    for pred in (0, 1, 9):
        logits.fill_(-1e4)
        logits[0, 0, pred] = 0
        out[pred] = F.wasserstein(logits, labels, vocab, squash_factor=3.0).item()
    assert out == pytest.approx({0: 0.0, 1: 1.0, 9: 3.0})
    with pytest.raises(ValueError, match="0.5"):
        F.wasserstein(logits, labels, vocab, squash_factor=0.5)


# ---------------------------------------------------------------- number level
def test_number_level_composes_place_values_sign_and_point():
    vocab, m = toy_vocab()
    seq = ["a", "-", "1", "2", ".", "5", "a", "3", "b", "4", ".", "2", ".", "7"]
    labels = torch.tensor([[m[s] for s in seq]])
    table = vocab.table()
    start, span_id, scale, sign = F.number_spans(labels, table)
    assert start[0].nonzero().flatten().tolist() == [2, 7, 9, 13]
    assert scale[0].tolist() == [0, 0, 10, 1, 0, 0.1, 0, 1, 0, 1, 0, 0.1, 0, 1]
    assert sign[0, 2].item() == -1 and sign[0, 7].item() == 1
    # Dirac prediction of the right digits everywhere -> 0; one wrong digit -> known value
    logits = torch.full((1, len(seq), vocab.vocab_size), -60.0, dtype=torch.float64)
    logits[0, torch.arange(len(seq)), labels[0]] = 60.0
    assert F.number_level(logits, labels, vocab).item() < 1e-12
    logits[0, 2, m["1"]] = -60.0  # predict 3 for the leading '1': -12.5 -> -32.5
    logits[0, 2, m["3"]] = 60.0
    per = F.number_level(logits, labels, vocab, reduction="none")
    # -32.5 for -12.5: d = 20, d / (d + 12.5 + 1)
    assert per[0, 2].item() == pytest.approx(20 / 33.5)
    assert per[0, 7].item() < 1e-12


def test_number_level_multi_digit_chunks():
    vocab, m = toy_vocab(values=(0, 1, 2, 12, 345, 45))
    labels = torch.tensor([[m["12"], m["345"], m["a"], m["1"], m["."], m["45"]]])
    _, _, scale, _ = F.number_spans(labels, vocab.table())
    assert scale[0].tolist() == [1000, 1, 0, 1, 0, 0.01]


def test_number_level_useful_gradient_at_zero():
    vocab, m = toy_vocab()
    labels = torch.tensor([[m["0"]]])
    logits = torch.zeros(1, 1, vocab.vocab_size, dtype=torch.float64, requires_grad=True)
    F.number_level(logits, labels, vocab).backward()
    assert logits.grad.abs().max() > 1e-3


# ---------------------------------------------------------------- reductions, weights, counting
@pytest.mark.parametrize("name", ALL)
def test_reductions_agree(name):
    vocab, _ = toy_vocab()
    logits, labels = digit_batch(vocab)
    fn = F.LOSSES[name]
    none = fn(logits, labels, vocab, reduction="none")
    assert none.shape == labels.shape
    total = fn(logits, labels, vocab, reduction="sum")
    n = F.ITEM_COUNTERS[name](labels, vocab)
    torch.testing.assert_close(none.sum(), total)
    torch.testing.assert_close(fn(logits, labels, vocab), total / n)
    torch.testing.assert_close(fn(logits, labels, vocab, num_items_in_batch=n * 2), total / n / 2)
    is_num = (labels >= 0) & (labels < 10)
    assert (none[~is_num] == 0).all()


def test_loss_weights_weight_the_mean():
    vocab, _ = toy_vocab()
    logits, labels = digit_batch(vocab)
    w = torch.rand(labels.shape, dtype=torch.float64)
    per = F.wasserstein(logits, labels, vocab, reduction="none")
    is_num = (labels >= 0) & (labels < 10)
    want = (per * w).sum() / (w * is_num).sum()
    torch.testing.assert_close(F.wasserstein(logits, labels, vocab, loss_weights=w), want)


def test_no_number_targets_gives_exact_zero_with_gradient():
    vocab, m = toy_vocab()
    labels = torch.tensor([[m["a"], m["b"], -100]])
    for name in ALL:
        logits = torch.randn(1, 3, vocab.vocab_size, requires_grad=True)
        for kwargs in ({}, {"reweigh": True}, {"num_items_in_batch": 0}):
            out = F.LOSSES[name](logits, labels, vocab, **kwargs)
            assert out.item() == 0.0 and out.requires_grad
            (grad,) = torch.autograd.grad(out, logits)
            assert torch.isfinite(grad).all() and (grad == 0).all()


def test_gradient_accumulation_matches_one_big_batch():
    vocab, _ = toy_vocab()
    logits, labels = digit_batch(vocab, b=8, t=9, seed=3)
    loss_fn = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
    big = logits.clone().requires_grad_(True)
    loss_fn(big, labels).total.backward()

    acc = logits.clone().requires_grad_(True)
    ce_items, ntl_items = loss_fn.count_items(labels)
    for part in range(4):
        rows = slice(2 * part, 2 * part + 2)
        out = loss_fn(acc[rows], labels[rows], num_items_in_batch=ce_items, num_number_items=ntl_items)
        out.total.backward()
    torch.testing.assert_close(acc.grad, big.grad, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("name", ALL)
def test_low_precision_logits(dtype, tol, name):
    vocab, _ = toy_vocab()
    logits, labels = digit_batch(vocab, dtype=torch.float32)
    low = logits.to(dtype).requires_grad_(True)
    ref = F.LOSSES[name](low.detach().float(), labels, vocab)
    out = F.LOSSES[name](low, labels, vocab, reweigh=False)
    assert out.dtype == torch.float32  # losses come back in float32, as HF's loss utilities
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    out.backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()


# ---------------------------------------------------------------- the ntloss package
@pytest.mark.parametrize("name", ["qwen2", "llama2"])
@pytest.mark.parametrize("reweigh", [False, True])
def test_matches_ntloss_package(load_tok, name, reweigh):
    from ntloss import NTLoss, NTLossDotProduct

    tok = load_tok(name)
    vocab = NumberVocab.from_tokenizer(tok, mode="digits")
    assert vocab.num_number_tokens == 10
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 6, len(tok), generator=g)
    labels = torch.randint(0, len(tok), (2, 6), generator=g)
    labels[:, ::2] = vocab.number_ids[torch.randint(0, 10, (2, 3), generator=g)]
    labels[1, 1] = -100
    for ours, theirs in (
        (F.wasserstein(logits, labels, vocab, reweigh=reweigh), NTLoss(copy.deepcopy(tok), reweigh=reweigh)),
        (F.expectation(logits, labels, vocab, ntl="mse", reweigh=reweigh),
         NTLossDotProduct(copy.deepcopy(tok), reweigh=reweigh)),
    ):
        torch.testing.assert_close(ours, theirs(logits, labels), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- modules
def test_module_buffers_move_and_save():
    vocab, _ = toy_vocab()
    module = NumberTokenLoss(vocab, "mse")
    state = module.state_dict()
    assert {"values", "number_ids", "number_values"} <= set(state)
    module = module.to(torch.float64)  # buffers of ids stay integer, values keep working
    logits, labels = digit_batch(vocab)
    torch.testing.assert_close(module(logits, labels), F.expectation(logits, labels, vocab))
    out = CrossEntropyWithNTL(vocab, ntl="was", lam=0.5)(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab.vocab_size), labels.reshape(-1))
    torch.testing.assert_close(out.ce, ce)  # float64 logits -> float64 losses
    torch.testing.assert_close(out.total, out.ce + 0.5 * out.ntl)


# ---------------------------------------------------------------- errors name the bad value
def _inputs():
    vocab, _ = toy_vocab()
    logits, labels = digit_batch(vocab, dtype=torch.float32)
    return vocab, logits, labels


@pytest.mark.parametrize(
    ("mutate", "error", "pattern"),
    [
        (lambda v, x, y: (v, x[0, 0], y), ValueError, r"\(15,\)"),                         # rank
        (lambda v, x, y: (v, x, y[:, :-1]), ValueError, r"\(3, 6\)"),                       # shape
        (lambda v, x, y: (v, x, y.float()), TypeError, "torch.float32"),                    # dtype
        (lambda v, x, y: (v, x.long(), y), TypeError, "torch.int64"),                       # logits dtype
        (lambda v, x, y: (v, x, y.masked_fill(y == y[0, 0], 15)), ValueError, r"\[15"),      # label >= V
        (lambda v, x, y: (v, x, y.masked_fill(y == y[0, 0], -7)), ValueError, r"\[-7"),      # negative label
        (lambda v, x, y: (v, x[..., :-2], y.clamp_max(12)), ValueError, "13"),               # vocab size
    ],
    ids=["rank", "shape", "label-dtype", "logit-dtype", "label-too-big", "label-negative", "vocab-size"],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_raise_naming_the_value(mutate, error, pattern, name):
    vocab, logits, labels = mutate(*_inputs())
    with pytest.raises(error, match=pattern):
        F.LOSSES[name](logits, labels, vocab)


@pytest.mark.parametrize("name", ALL)
def test_bad_options_raise(name):
    vocab, logits, labels = _inputs()
    with pytest.raises(ValueError, match="'avg'"):
        F.LOSSES[name](logits, labels, vocab, reduction="avg")
    w = torch.ones(labels.shape)
    w[0, 0] = -0.5
    with pytest.raises(ValueError, match="-0.5"):
        F.LOSSES[name](logits, labels, vocab, loss_weights=w)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        F.LOSSES[name](logits, labels, vocab, loss_weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="'rmse'"):
        F.expectation(logits, labels, vocab, ntl="rmse")
    with pytest.raises(ValueError, match="'wat'"):
        NumberTokenLoss(vocab, "wat")


def test_soft_target_shape_error():
    vocab, logits, labels = _inputs()
    with pytest.raises(ValueError, match=r"\(3, 7, 10\)"):
        F.wasserstein(logits, labels, vocab, target_probs=torch.ones(3, 7, 4))


def test_flat_logits_accepted():
    vocab, logits, labels = _inputs()
    flat = F.wasserstein(logits.reshape(-1, vocab.vocab_size), labels.reshape(-1), vocab)
    torch.testing.assert_close(flat, F.wasserstein(logits, labels, vocab))
    np.testing.assert_allclose(
        F.number_level(logits.reshape(-1, vocab.vocab_size), labels.reshape(-1), vocab,
                       reduction="none").numpy().reshape(3, 7)[0, 0], 0, atol=1)


def test_soft_wasserstein_gaussian_targets():
    from ntl.losses.functional import gaussian_targets, soft_wasserstein, wasserstein

    vocab = NumberVocab.from_vocab({**{str(i): i for i in range(10)}, "a": 10})
    labels = torch.tensor([4, 10, -100, 9])
    q = gaussian_targets(labels, vocab, sigma=0.5)
    assert q.shape == (4, 10)
    torch.testing.assert_close(q.sum(-1), torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert int(q[0].argmax()) == 4 and q[0, 3] == pytest.approx(q[0, 5].item())  # symmetric bell
    logits = torch.randn(4, 11, generator=torch.Generator().manual_seed(0))
    # a vanishing width is the one-hot target: plain NTL-WAS
    torch.testing.assert_close(soft_wasserstein(logits, labels, vocab, sigma=1e-3),
                               wasserstein(logits, labels, vocab))
    # the loss is minimal (0) when the prediction is the bell itself
    z = torch.full((4, 11), -1e4)
    z[:, :10] = torch.log(q.clamp_min(1e-30))
    z[1:3, :10] = 0.0  # rows that do not count
    assert soft_wasserstein(z, labels, vocab, sigma=0.5).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_targets(labels, vocab, sigma=0.0)


# ---------------------------------------------------------------- reweigh in low precision
def _rounded_grad(fn, logits: torch.Tensor) -> torch.Tensor:
    x = logits.detach().requires_grad_(True)
    fn(x).backward()
    return x.grad.double()


@on_devices
@pytest.mark.parametrize("name", ["was", "mse", "number-level"])
def test_reweigh_bf16_gradient_is_rounded_once(name, device):
    """reweigh=True in bf16 on the autograd path: the number-logit and log-sum-exp partial
    gradients cancel; each rounded to bf16 first, they were 1e-2 off float64, now ~bf16's own
    rounding (2e-3)."""
    tok = {f"t{i}": i for i in range(40)} | {str(d): 40 + d for d in range(10)}
    vocab = NumberVocab.from_vocab(tok)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(40, 50, (8, 64), generator=g)
    labels[:, ::3] = torch.randint(0, 40, (8, 22), generator=g)
    logits = 3 * torch.randn(8, 64, 50, generator=g)
    logits[..., 40:] += 6  # most mass on the number tokens: the partials nearly cancel
    logits, labels = logits.bfloat16().to(device), labels.to(device)

    def fn(x):
        return F.LOSSES[name](x, labels, vocab, reweigh=True)

    exact = _rounded_grad(fn, logits.double())
    err = (_rounded_grad(fn, logits) - exact).norm() / exact.norm()
    assert err < 2.5e-3, float(err)


@on_devices
def test_reweigh_fp16_mse_large_values_no_overflow(device):
    """fp16, NTL-MSE over values 0..9999 with reweigh: partial gradients beyond fp16's range
    used to become inf − inf = NaN where the true gradient is finite."""
    tok = {f"w{i}": i for i in range(10)} | {str(i): 10 + i for i in range(10000)}
    vocab = NumberVocab.from_vocab(tok, mode="numbers")
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([10 + 5000, 10 + 12, 3, 10 + 9999], device=device)
    logits = torch.randn(4, 10010, generator=g) * 2
    logits[:, 10 + 7000] += 8
    logits = logits.half().to(device)

    def fn(x):
        return F.expectation(x, labels, vocab, ntl="mse", reweigh=True)

    exact = _rounded_grad(fn, logits.double())
    got = _rounded_grad(fn, logits)
    in_range = exact.abs() < torch.finfo(torch.float16).max / 2
    assert torch.isfinite(got[in_range]).all()
    err = (got - exact)[in_range].norm() / exact[in_range].norm()
    assert err < 1e-3, float(err)


# ---------------------------------------------------------------- documentation
class _RaiseOnError(doctest.DocTestRunner):
    """Runs docstring examples, which show no outputs: only an exception fails."""

    def report_failure(self, out, test, example, got):  # an output: the examples show none
        pass

    def report_unexpected_exception(self, out, test, example, exc_info):
        raise exc_info[1]


@pytest.mark.parametrize("name", ["wasserstein", "expectation", "number_level",
                                  "cross_entropy_with_ntl", "linear_cross_entropy_with_ntl",
                                  "NumberTokenLoss", "CrossEntropyWithNTL",
                                  "LinearCrossEntropyWithNTL"])
def test_the_examples_in_the_docstrings_run(name):
    import ntl
    import ntl.losses

    obj = getattr(ntl.losses.functional, name, None) or getattr(ntl, name)
    globs = {"torch": torch, "NumberVocab": NumberVocab, name: obj}
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs=globs)
    assert tests and tests[0].examples, f"{name} has no Examples section"
    for test in tests:
        _RaiseOnError().run(test)
