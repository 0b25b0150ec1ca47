"""Where the NTL-WAS gradient points, beside cross-entropy's, on a trained model's own logits.

Usage: ``python -m ntl.lab.gradient_probe RUN_DIR [--checkpoint checkpoint-1000] [--lam 0.3]``.

For a softmax ``q`` over the digit tokens and a target digit ``y``, NTL-WAS is
``sum_j q_j·|v_j − y|`` and its gradient on the logit of digit ``j`` is ``q_j·(d_j − E_q[d])``
with ``d_j = |v_j − y|``: every digit *closer to the target than the current expected distance*
is pushed **up**, not only the target. Cross-entropy pushes every non-target token down. While
the model is unsure (``E_q[d]`` large) the WAS term therefore spends part of its step raising the
target's neighbours, which exact match does not reward; once the model is confident
(``E_q[d]`` small) it agrees with CE.

:func:`probe` measures that on real positions: it runs a trained arm on questions of a split,
takes the gradients of CE and of NTL-WAS on the logits at every position whose label is a digit
(autograd, no training), and summarises them by the model's confidence in the target digit:
the cosine between the two gradients, the size of ``λ·∇WAS`` against ``∇CE``, the share of the
WAS step that raises non-target digits, and how often the summed ``∇(CE + λ·WAS)`` raises a
non-target digit at all (CE alone never does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Bins of the model's probability of the target digit (softmax over the digits), left-closed.
CONFIDENCE_BINS: tuple[float, ...] = (0.0, 0.2, 0.5, 0.9, 1.0000001)


def gradient_statistics(
    logits: Any, labels: Any, digit_ids: Sequence[int], digit_values: Sequence[float], lam: float
) -> dict[str, Any]:
    """Per-position gradient statistics of CE and NTL-WAS on ``logits`` (B, T, V) for ``labels``
    (B, T; -100 ignored), at the positions whose label is one of ``digit_ids``.

    NTL-WAS is taken over the softmax of the ``digit_ids`` logits (the lab's default: the number
    tokens that occur as labels), with distances ``|v_j − v_y|`` on ``digit_values``.

    Returns ``{"q_target", "cosine", "norm_ratio", "nontarget_raise_share",
    "total_raises_nontarget"}``, each a float64 numpy array with one entry per digit position:
    the target's probability among the digits, cos(∇CE, ∇WAS) over the whole vocabulary,
    ``λ·‖∇WAS‖ / ‖∇CE‖``, the share of the WAS descent step's increases that go to non-target
    digits, and whether ``−∇(CE + λ·WAS)`` increases some non-target digit's logit.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    z = logits.detach().double().requires_grad_(True)
    ids = torch.as_tensor(list(digit_ids), dtype=torch.long)
    values = torch.as_tensor(list(digit_values), dtype=torch.float64)
    flat_labels = labels.reshape(-1)
    lookup = {int(t): k for k, t in enumerate(ids.tolist())}
    pos = [i for i, t in enumerate(flat_labels.tolist()) if t in lookup]
    flat = z.reshape(-1, z.shape[-1])[pos]  # (N, V)
    target_k = torch.as_tensor([lookup[int(flat_labels[i])] for i in pos], dtype=torch.long)
    ce = F.cross_entropy(flat, ids[target_k], reduction="sum")
    q = torch.softmax(flat[:, ids], dim=-1)  # (N, K)
    dist = (values[None, :] - values[target_k][:, None]).abs()
    was = (q * dist).sum()
    (g_ce,) = torch.autograd.grad(ce, z, retain_graph=True)
    (g_was,) = torch.autograd.grad(was, z)
    g_ce = g_ce.reshape(-1, z.shape[-1])[pos]
    g_was = g_was.reshape(-1, z.shape[-1])[pos]
    cosine = F.cosine_similarity(g_ce, g_was, dim=-1)
    ratio = lam * g_was.norm(dim=-1) / g_ce.norm(dim=-1).clamp_min(1e-300)
    is_target = F.one_hot(target_k, len(ids)).bool()
    raise_was = (-g_was[:, ids]).clamp_min(0.0)  # how much each digit's logit goes up
    share = raise_was.masked_fill(is_target, 0.0).sum(-1) / raise_was.sum(-1).clamp_min(1e-300)
    total = -(g_ce + lam * g_was)[:, ids]
    raises_other = (total.masked_fill(is_target, 0.0) > 1e-12).any(-1)
    q_target = q.gather(1, target_k[:, None]).squeeze(1)
    return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in {
        "q_target": q_target, "cosine": cosine, "norm_ratio": ratio,
        "nontarget_raise_share": share, "total_raises_nontarget": raises_other.double(),
    }.items()}


def summarise(stats: dict[str, Any], bins: Sequence[float] = CONFIDENCE_BINS) -> list[dict[str, Any]]:
    """Means of :func:`gradient_statistics` per bin of ``q_target`` (and one row for all)."""
    import numpy as np

    rows = []
    q = stats["q_target"]
    edges = list(zip(bins[:-1], bins[1:])) + [(bins[0], bins[-1])]
    for i, (lo, hi) in enumerate(edges):
        sel = (q >= lo) & (q < hi)
        label = "all" if i == len(edges) - 1 else f"{lo:.1f}-{min(hi, 1.0):.1f}"
        row: dict[str, Any] = {"p(target)": label, "positions": int(sel.sum())}
        for key in ("cosine", "norm_ratio", "nontarget_raise_share", "total_raises_nontarget"):
            row[key] = float(np.mean(stats[key][sel])) if sel.any() else float("nan")
        rows.append(row)
    return rows


def probe(
    run_dir: str | os.PathLike[str],
    *,
    checkpoint: str | None = None,
    split: str = "valid",
    data_file: str | os.PathLike[str] | None = None,
    n_examples: int = 256,
    lam: float = 0.3,
) -> list[dict[str, Any]]:
    """Run :func:`gradient_statistics` on the model of a trained arm folder (``final/`` or a
    ``checkpoint``) over the first ``n_examples`` questions of ``split`` of its training data
    (or of ``data_file``, e.g. the target task's questions for a pretrained base); return
    :func:`summarise`'s rows."""
    import torch

    from ntl.lab.arms import resolve_arm
    from ntl.lab.data.mathematics import load_split
    from ntl.lab.tokenization import load_prepared_tokenizer
    from ntl.numbers import NumberVocab

    run = Path(run_dir)
    cfg = json.loads((run / "train_config.json").read_text())
    profile_dict = cfg["profile"]
    from ntl.lab.config import Profile

    profile = Profile.from_dict(profile_dict)
    recipe = resolve_arm(cfg["arm"], float(profile.lam))
    tokenizer = load_prepared_tokenizer(cfg["tokenizer"])
    model = recipe.load_model(run / (checkpoint or "final")).eval()
    records = load_split(data_file or cfg["data"][split])[:n_examples]
    features = recipe.features(records, tokenizer, profile, with_targets=True)
    batch = recipe.collator(tokenizer)(features)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"]).logits
    vocab = NumberVocab.from_tokenizer(tokenizer, mode="digits", vocab_size=logits.shape[-1])
    vocab = vocab.restricted({t for f in features for t in f["labels"] if t >= 0})
    stats = gradient_statistics(logits, batch["labels"], vocab.number_ids.tolist(),
                                vocab.number_values.tolist(), lam)
    return summarise(stats)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`probe` as a markdown table."""
    header = ["p(target)", "positions", "cos(∇CE, ∇WAS)", "λ‖∇WAS‖/‖∇CE‖",
              "WAS step raising other digits", "CE+λWAS raises another digit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append(f"| {r['p(target)']} | {r['positions']} | {r['cosine']:.2f} | {r['norm_ratio']:.2f} "
                     f"| {r['nontarget_raise_share']:.0%} | {r['total_raises_nontarget']:.0%} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ntl.lab.gradient_probe",
        description="CE and NTL-WAS gradients on a trained arm's logits, by the model's confidence "
        "in the target digit (no training; a few seconds on a CPU).",
    )
    parser.add_argument("run_dir", help="a trained arm folder, runs/<name>/<arm>/seed<k> or a base")
    parser.add_argument("--checkpoint", default=None, help="checkpoint-<step> instead of final/")
    parser.add_argument("--split", default="valid", help="data split to read questions from")
    parser.add_argument("--data-file", default=None,
                        help="a jsonl split to read questions from instead (e.g. the target task's "
                        "valid.jsonl when probing a pretrained base)")
    parser.add_argument("--n-examples", type=int, default=256, help="questions (one batch)")
    parser.add_argument("--lam", type=float, default=0.3, help="λ of CE + λ·NTL-WAS")
    args = parser.parse_args(argv)
    try:
        rows = probe(args.run_dir, checkpoint=args.checkpoint, split=args.split,
                     data_file=args.data_file, n_examples=args.n_examples, lam=args.lam)
    except (FileNotFoundError, KeyError) as exc:
        print(f"gradient_probe: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
