"""Edge cases of the losses: large logits, long numbers, decimal tokens, non-finite logits in
rows that do not count, fp16 outputs, split backward in bf16."""

from __future__ import annotations

import pytest
import torch

from ntl import CrossEntropyWithNTL, NumberVocab
from ntl.lab.bench.worker import spawn
from ntl.losses import functional as F
from ntl.losses import fused
from ntl.losses.linear import linear_cross_entropy_with_ntl
from tests.helpers import V, digit_vocab, on_devices


def _labels(vocab: NumberVocab, n: int, seed: int = 0) -> torch.Tensor:
    """(n,) labels, about 40% number tokens, a few ignored."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 40, (n,), generator=g)
    is_num = torch.rand(n, generator=g) < 0.4
    nums = vocab.number_ids[torch.randint(0, vocab.number_ids.numel(), (n,), generator=g)]
    labels = torch.where(is_num, nums, labels)
    labels[::11] = -100
    return labels


# ---------------------------------------------------------------- large logits: chunked fix-up
def test_linear_path_large_logits_equal_materialized():
    """With logits of std ~30 most rows have CE > 69 nats (exact recomputation): the logits-free
    path still equals CE + NTL on materialized logits, values and gradients."""
    vocab = digit_vocab()
    g = torch.Generator().manual_seed(1)
    n, d = 200, 16
    hidden = (8 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    weight = torch.randn(V, d, generator=g, dtype=torch.float64).requires_grad_(True)
    labels = _labels(vocab, n)
    logits = hidden @ weight.t()
    ce_tok = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert (ce_tok > 69).float().mean() > 0.3
    ref = fused.cross_entropy_with_ntl(logits, labels, vocab, fused=False)
    ref_grads = torch.autograd.grad(ref.total, (hidden, weight))
    out = linear_cross_entropy_with_ntl(hidden, weight, labels, vocab, chunk_size=7)
    grads = torch.autograd.grad(out.total, (hidden, weight))
    torch.testing.assert_close(out.ce, ref.ce)
    torch.testing.assert_close(out.ntl, ref.ntl)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_linear_path_large_logits_memory_is_one_chunk():
    """Peak memory added (fresh process, RSS) by the logits-free path when most rows need the
    exact-CE fix-up: a few chunks, never a sizable share of the (N, V) logits."""
    res = spawn("linear-memory", {"batch": 1, "seq": 1024, "vocab": 32000, "hidden_dim": 32,
                                  "fraction": 0.3, "scale": 4.0, "path": "linear",
                                  "chunk_size": 32, "threads": 1})
    assert res["rows_ce_above_69"] > 0.5
    assert res["peak_bytes"] is not None
    # logits: 131 MB; one chunk 4 MB, dW 4 MB. An unchunked fix-up adds ~150 MB.
    assert res["peak_bytes"] < res["logits_bytes"] / 8, res


# ---------------------------------------------------------------- number-level: long numbers
@pytest.mark.parametrize("digits", [39, 60, 400])
def test_number_level_long_digit_runs_stay_finite(digits):
    vocab = digit_vocab()
    g = torch.Generator().manual_seed(0)
    run = 40 + torch.randint(1, 10, (digits,), generator=g)
    labels = torch.cat([torch.tensor([3, 51]), run, torch.tensor([5, 40 + 7, 6])])[None]
    logits = torch.randn(1, labels.shape[1], V, generator=g, dtype=torch.float64)
    low = logits.float().requires_grad_(True)
    out = F.number_level(low, labels, vocab)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(low.grad).all()
    if digits < 300:  # float64 still holds 10**e: the same loss as the float64 computation
        torch.testing.assert_close(out.double(), F.number_level(logits, labels, vocab),
                                   rtol=1e-5, atol=1e-6)


def test_number_level_adjacent_8_digit_tokens(load_tok):
    """GPT-2 ``numbers`` mode: five adjacent 8-digit tokens (40 digits) stay finite."""
    tok = load_tok("gpt2")
    vocab = NumberVocab.from_tokenizer(tok, mode="numbers")
    eight = [int(i) for i, n in zip(vocab.number_ids, vocab.digit_counts[vocab.number_ids])
             if n == 8]
    assert eight, "GPT-2 has 8-digit tokens"
    labels = torch.tensor([eight[:1] * 5])
    logits = torch.randn(1, 5, vocab.vocab_size, requires_grad=True)
    out = F.number_level(logits, labels, vocab)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- number-level: decimal tokens
def test_number_level_places_decimal_tokens(load_tok):
    """T5 ``numbers`` mode: ``13.5`` -> ``['▁1', '3.5']`` is 13.5 (not 103.5)."""
    tok = load_tok("t5-small")
    vocab = NumberVocab.from_tokenizer(tok, mode="numbers")
    ids13 = tok("13.5", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids13) == ["▁1", "3.5"]
    labels = torch.tensor([ids13])
    start, span, scale, sign = F.number_spans(labels, vocab.table())
    values = vocab.values[labels[0]].double()
    assert start.tolist() == [[True, False]] and span[0, 0] == span[0, 1]
    assert float((values * scale[0]).sum()) == pytest.approx(13.5)


def _decimal_vocab() -> NumberVocab:
    tok = {f"t{i}": i for i in range(40)}
    tok.update({str(d): 40 + d for d in range(10)})
    tok.update({".": 50, "-": 51, "3.5": 52, "12.25": 53, "0.5": 54})
    return NumberVocab.from_vocab(tok, mode="numbers", vocab_size=V)


@pytest.mark.parametrize("pieces,numbers", [
    (["1", "3.5"], [13.5]),
    (["1", "3.5", "7"], [13.57]),
    (["1", "12.25", "5"], [112.255]),
    (["3.5", "12.25"], [3.5, 12.25]),  # a second point starts a new number
    (["1", ".", "5", "3.5"], [1.5, 3.5]),
    (["3.5", ".", "2"], [3.5, 2.0]),
    (["-", "0.5", "t1", "7"], [-0.5, 7.0]),
])
def test_number_spans_with_decimal_tokens(pieces, numbers):
    vocab = _decimal_vocab()
    ids = {**{f"t{i}": i for i in range(40)}, **{str(d): 40 + d for d in range(10)},
           ".": 50, "-": 51, "3.5": 52, "12.25": 53, "0.5": 54}
    labels = torch.tensor([[ids[p] for p in pieces]])
    start, span, scale, sign = F.number_spans(labels, vocab.table())
    values = torch.nan_to_num(vocab.values[labels[0]].double())
    got = []
    for s in sorted(set(span[0].tolist()) - {0}):
        in_span = span[0] == s
        first = int(torch.nonzero(in_span)[0])
        got.append(float((values * scale[0])[in_span].sum()) * float(sign[0, first]))
    assert got == pytest.approx(numbers)
    assert int(start.sum()) == len(numbers)


def test_number_level_decimal_token_loss_is_zero_at_the_target():
    vocab = _decimal_vocab()
    labels = torch.tensor([[41, 52, 10]])  # "1" "3.5" t10 -> 13.5
    logits = torch.full((1, 3, V), -30.0)
    logits[0, torch.arange(3), labels[0]] = 30.0
    assert float(F.number_level(logits, labels, vocab)) < 1e-6
    wrong = logits.clone()
    wrong[0, 1, 52], wrong[0, 1, 43] = -30.0, 30.0  # predicts "1" "3" = 13
    torch.testing.assert_close(F.number_level(wrong, labels, vocab),
                               torch.tensor(0.5 / (0.5 + 13.5 + 1.0)))


# ---------------------------------------------------------------- rows that do not count
def _poisoned(kind: str, vocab: NumberVocab):
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([[41, 5, -100, 47, 12, 49]])
    logits = torch.randn(1, 6, V, generator=g)
    keep = torch.tensor([0, 3, 5])  # the number rows
    if kind == "nan-ignored":
        logits[0, 2] = float("nan")
    elif kind == "inf-non-number":
        logits[0, 1, 3] = float("inf")
    elif kind == "numbers-minus-inf-ignored":
        logits[0, 2, vocab.number_ids] = float("-inf")
    else:  # number logits all -inf at a non-number row
        logits[0, 4, vocab.number_ids] = float("-inf")
    return logits, labels, keep


@pytest.mark.parametrize("kind", ["nan-ignored", "inf-non-number", "numbers-minus-inf-ignored",
                                  "numbers-minus-inf-non-number"])
@pytest.mark.parametrize("name", ["was", "mse", "huber", "number-level"])
@pytest.mark.parametrize("reweigh", [False, True])
def test_rows_that_do_not_count_cannot_poison_the_loss(kind, name, reweigh):
    vocab = digit_vocab()
    logits, labels, keep = _poisoned(kind, vocab)
    logits.requires_grad_(True)
    out = F.LOSSES[name](logits, labels, vocab, reweigh=reweigh)
    # The same loss with finite logits in the rows that do not count.
    clean = torch.zeros_like(logits.detach())
    clean[:, keep] = logits.detach()[:, keep]
    ref = F.LOSSES[name](clean, labels, vocab, reweigh=reweigh)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref)
    out.backward()
    assert torch.isfinite(logits.grad).all()
    others = torch.ones(logits.shape[1], dtype=torch.bool)
    others[keep] = False
    assert (logits.grad[0, others] == 0).all()  # rows that do not count: exactly 0


def _ce_ntl(path: str, x: torch.Tensor, labels: torch.Tensor, vocab, reweigh: bool):
    """CE + NTL of logits ``x`` by ``path``; ``x`` may be hidden states for ``linear``."""
    opts = dict(ntl="was", lam=0.3, reweigh=reweigh)
    if path == "linear":
        eye = torch.eye(V, dtype=x.dtype, device=x.device)
        return linear_cross_entropy_with_ntl(x, eye, labels, vocab, chunk_size=3, **opts)
    return CrossEntropyWithNTL(vocab, fused=path == "fused", **opts).to(x.device)(x, labels)


@on_devices
@pytest.mark.parametrize("path", ["fused", "autograd", "linear"])
@pytest.mark.parametrize("reweigh", [False, True])
def test_nonfinite_logits_at_ignored_rows_get_a_zero_gradient(path, reweigh, device):
    """NaN / inf logits where the label is ignored: the loss is as with clean logits, those
    rows' gradient is exactly 0, and a head in front stays finite (torch's CE gives NaN)."""
    vocab = digit_vocab()
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([[41, 5, -100, 47, -100, 12, 49, -100]], device=device)
    ignored = labels[0] == -100
    poison = torch.zeros(1, 8, V)
    poison[0, 2] = float("nan")
    poison[0, 4, 7] = float("inf")
    poison[0, 7, vocab.number_ids] = float("-inf")
    hidden = torch.randn(1, 8, 16, generator=g, device="cpu").to(device)
    head = torch.nn.Linear(16, V, bias=False).to(device)
    clean = head(hidden).detach()
    ref = _ce_ntl(path, clean, labels, vocab, reweigh)

    logits = (head(hidden) + poison.to(device)) if path != "linear" else None
    x = (logits if logits is not None else clean + poison.to(device)).detach().requires_grad_(True)
    out = _ce_ntl(path, x, labels, vocab, reweigh)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    out.total.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[0, ignored] == 0).all()
    if logits is not None:  # through the head: its weight gradient stays finite
        head.zero_grad()
        _ce_ntl(path, head(hidden) + poison.to(device), labels, vocab, reweigh).total.backward()
        assert torch.isfinite(head.weight.grad).all()


@on_devices
def test_nan_hidden_state_at_an_ignored_row_keeps_the_weight_gradient_finite(device):
    """The logits-free path: a NaN hidden state where the label is ignored (e.g. a fully
    masked padding row) reaches neither dW nor the other rows' dh."""
    vocab = digit_vocab()
    g = torch.Generator().manual_seed(8)
    labels = torch.tensor([41, 5, -100, 47, 12, -100], device=device)
    hidden = torch.randn(6, 16, generator=g).to(device)
    hidden[2] = float("nan")
    hidden.requires_grad_(True)
    weight = torch.randn(V, 16, generator=g).to(device).requires_grad_(True)
    out = linear_cross_entropy_with_ntl(hidden, weight, labels, vocab, chunk_size=4)
    out.total.backward()
    assert torch.isfinite(out.total)
    assert torch.isfinite(weight.grad).all()
    assert torch.isfinite(hidden.grad).all() and (hidden.grad[labels == -100] == 0).all()


# ---------------------------------------------------------------- output dtype
@pytest.mark.parametrize("name", ["mse", "was", "number-level"])
def test_fp16_logits_return_float32_without_overflow(name):
    tok = {f"t{i}": i for i in range(40)}
    tok.update({"0": 40, "1": 41, "7": 42, "5000": 43})
    vocab = NumberVocab.from_vocab(tok, mode="numbers", vocab_size=V)
    labels = torch.tensor([[43, 3]])
    logits = torch.zeros(1, 2, V)
    logits[0, 0, 40] = 8.0  # predicts 0 for 5000: MSE ~ 2.5e7
    half = F.LOSSES[name](logits.half(), labels, vocab)
    full = F.LOSSES[name](logits, labels, vocab)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    torch.testing.assert_close(half, full, rtol=2e-3, atol=1e-3)
    module = CrossEntropyWithNTL(vocab, ntl=name, lam=0.3)(logits.half(), labels)
    assert module.total.dtype == torch.float32 and torch.isfinite(module.total)


# ---------------------------------------------------------------- split backward in bf16
@pytest.mark.parametrize("reweigh", [False, True])
@pytest.mark.parametrize("part", ["ce", "ntl"])
def test_fused_split_backward_bf16_is_as_precise_as_autograd(part, reweigh):
    vocab = digit_vocab()
    g = torch.Generator().manual_seed(5)
    labels = _labels(vocab, 512).reshape(8, 64)
    logits = (3 * torch.randn(8, 64, V, generator=g)).bfloat16()

    def grad_of(impl: bool, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        out = fused.cross_entropy_with_ntl(x, labels, vocab, ntl="was", lam=0.3, fused=impl,
                                           reweigh=reweigh)
        getattr(out, part).backward()
        return x.grad.float()

    exact = grad_of(False, logits.double())
    fused_err = (grad_of(True, logits) - exact).norm() / exact.norm()
    autograd_err = (grad_of(False, logits) - exact).norm() / exact.norm()
    assert fused_err <= 2 * autograd_err + 1e-3, (float(fused_err), float(autograd_err))


def test_second_backward_advice_is_followable():
    vocab = digit_vocab()
    labels = _labels(vocab, 20).reshape(2, 10)
    logits = torch.randn(2, 10, V, requires_grad=True)
    out = CrossEntropyWithNTL(vocab)(logits, labels)
    out.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"CrossEntropyWithNTL\(vocab, \.\.\., fused=False\)"):
        out.total.backward()
    first = logits.grad.clone()
    logits.grad = None
    plain = CrossEntropyWithNTL(vocab, fused=False)(logits, labels)
    plain.total.backward(retain_graph=True)
    plain.total.backward()  # the advice works: twice through one graph
    torch.testing.assert_close(logits.grad, 2 * first)
    (g,) = torch.autograd.grad(CrossEntropyWithNTL(vocab, fused=False)(logits, labels).total,
                               logits, create_graph=True)
    assert g.requires_grad  # and higher-order gradients
