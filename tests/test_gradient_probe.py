"""The gradient probe: CE vs NTL-WAS gradients on logits, against hand-computed values."""

import pytest
import torch

from ntl.lab.gradient_probe import gradient_statistics, markdown, summarise


def _uniform_case(lam: float) -> dict:
    # one position, ten digit tokens 0..9 (ids 0..9), uniform logits, target digit 4
    logits = torch.zeros(1, 1, 10)
    labels = torch.tensor([[4]])
    return gradient_statistics(logits, labels, list(range(10)), [float(v) for v in range(10)], lam)


def test_was_raises_the_targets_neighbours_while_the_model_is_unsure():
    """Uniform q, target 4: d = |v - 4|, E[d] = 2.5; the WAS gradient q_j (d_j - E[d]) raises the
    digits 2..6 by 0.05, 0.15, 0.25, 0.15, 0.05, so 0.40 of 0.65 goes to non-target digits."""
    stats = _uniform_case(0.3)
    assert stats["q_target"].tolist() == pytest.approx([0.1])
    assert stats["nontarget_raise_share"].tolist() == pytest.approx([0.40 / 0.65])
    # CE pushes each other digit down by p_j = 0.1; 0.3 * 0.1 * (2.5 - d_j) < 0.1 for every d_j
    assert stats["total_raises_nontarget"].tolist() == [0.0]
    # at λ = 1 the digits at distance 1 go up: 0.1 * (2.5 - 1) = 0.15 > 0.1
    assert _uniform_case(1.0)["total_raises_nontarget"].tolist() == [1.0]
    # gradients by hand: CE = q - onehot, WAS = q (d - 2.5)
    d = torch.tensor([4, 3, 2, 1, 0, 1, 2, 3, 4, 5], dtype=torch.float64)
    g_ce = torch.full((10,), 0.1, dtype=torch.float64)
    g_ce[4] -= 1.0
    g_was = 0.1 * (d - 2.5)
    cos = torch.nn.functional.cosine_similarity(g_ce, g_was, dim=0).item()
    assert stats["cosine"].tolist() == pytest.approx([cos])
    assert stats["norm_ratio"].tolist() == pytest.approx([0.3 * g_was.norm().item() / g_ce.norm().item()])


def test_a_confident_model_gets_a_was_step_along_ce():
    logits = torch.full((1, 2, 12), -8.0)
    logits[0, 0, 7] = 8.0  # confident and right: target 7
    logits[0, 1, 3] = 8.0
    labels = torch.tensor([[7, -100]])  # the second position is ignored
    stats = gradient_statistics(logits, labels, list(range(10)), [float(v) for v in range(10)], 0.3)
    assert stats["q_target"].shape == (1,) and stats["q_target"][0] > 0.99
    assert stats["cosine"][0] > 0.95 and stats["nontarget_raise_share"][0] == pytest.approx(0.0)
    rows = summarise(stats)
    assert rows[-1]["p(target)"] == "all" and rows[-1]["positions"] == 1
    assert rows[3]["positions"] == 1 and rows[0]["positions"] == 0
    assert "| 0.9-1.0 | 1 |" in markdown(rows)
