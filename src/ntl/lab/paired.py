"""Paired comparisons of each arm with its cross-entropy baseline, on the same examples.

For every arm that has a baseline (``ce`` for token arms and the baselines, ``ce:<variant>`` for
``<arm>:<variant>``), every seed both have and every evaluated split, the difference
``metric(arm) − metric(baseline)`` is computed on the *same* questions with a paired bootstrap
over examples (:func:`ntl.lab.metrics.paired_difference`); across seeds, the mean difference gets a
two-way bootstrap interval that resamples seeds and questions together
(:func:`ntl.lab.aggregate.seeds_by_questions_bootstrap`), so it holds both the seed and the
test-sample variance (the Student-t interval across seeds is kept beside it as ``t_lo``/``t_hi``).
Same seed means the same initial weights (or the same base model) and the same data order, so the
pairing removes most seed-to-seed noise.

Every compared metric counts every question (an invalid answer is scored as predicting 0, see
:data:`ntl.lab.metrics.INVALID_SCORED_AS`), so both arms are always compared on the same set.
Sign convention: a positive difference in exact match, paper accuracy or near-miss rate favours
the arm; a *negative* difference in MAE, log-MAE or invalid rate favours it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Metrics compared, with their labels (Δ = arm − baseline). Each is a mean of per-question
#: scores over every question of the split (invalid answers included).
PAIRED_METRICS: dict[str, str] = {
    "exact_match": "Δ EM",
    "paper_accuracy": "Δ paper acc",
    "mae_all": "Δ MAE",
    "log_mae_all": "Δ log-MAE",
    "invalid_rate": "Δ invalid",
    "near_miss_rate": "Δ near miss",
}

#: Metrics where a negative difference favours the arm.
LOWER_IS_BETTER = frozenset({"mae_all", "log_mae_all", "invalid_rate"})


def baseline_of(arm: str) -> str | None:
    """The CE arm ``arm`` is compared with (``None`` for a CE arm itself)."""
    base, _, variant = arm.partition(":")
    if base == "ce":
        return None
    return f"ce:{variant}" if variant else "ce"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def collect_paired(
    runs: Mapping[str, Mapping[int, Path]],
    splits: Sequence[str],
    *,
    n_boot: int = 1000,
    eval_dir: str = "eval",
) -> dict[str, Any]:
    """Paired differences for every arm of ``runs`` (``{arm: {seed: seed_dir}}``), read from
    ``<seed_dir>/<eval_dir>/<split>.jsonl`` (``eval_dir="eval-checkpoint-1000"`` compares the
    arms at step 1000).

    Returns:
        ``{arm: {"baseline": name, "splits": {split: {metric: AGG}}}}`` where AGG is the mean
        difference over seeds and questions with a two-way bootstrap interval over seeds and
        questions (:func:`ntl.lab.aggregate.seeds_by_questions_bootstrap`: ``value``, ``lo``,
        ``hi``), the Student-t interval across the seeds' differences (``t_lo``, ``t_hi``), and
        ``"per_seed": {seed: {"value", "lo", "hi"}}`` (bootstrap over questions). Arms whose
        baseline was not run, and seeds or splits missing on either side, are left out.
    """
    import numpy as np

    from ntl.lab.aggregate import aggregate_seeds, seeds_by_questions_bootstrap
    from ntl.lab.metrics import paired_difference, question_scores

    out: dict[str, Any] = {}
    for arm, seeds in runs.items():
        base = baseline_of(arm)
        if base is None or base not in runs:
            continue
        per_split: dict[str, Any] = {}
        for split in splits:
            per_seed: dict[int, dict[str, dict[str, float]]] = {}
            diffs: dict[str, list[np.ndarray]] = {m: [] for m in PAIRED_METRICS}
            for seed, seed_dir in sorted(seeds.items()):
                base_dir = runs[base].get(seed)
                a = seed_dir / eval_dir / f"{split}.jsonl"
                b = (base_dir or Path()) / eval_dir / f"{split}.jsonl"
                if base_dir is None or not a.is_file() or not b.is_file():
                    continue
                ra, rb = _read_jsonl(a), _read_jsonl(b)
                per_seed[seed] = paired_difference(
                    ra, rb, metrics=tuple(PAIRED_METRICS), n_boot=n_boot, seed=seed
                )
                sa, sb = question_scores(ra), question_scores(rb)
                for m in PAIRED_METRICS:
                    diffs[m].append(sa[m] - sb[m])
            if not per_seed:
                continue
            cells: dict[str, Any] = {}
            for metric in PAIRED_METRICS:
                t = aggregate_seeds([d[metric] for d in per_seed.values()])
                two_way = seeds_by_questions_bootstrap(np.stack(diffs[metric]), n_boot=2 * n_boot)
                cells[metric] = {
                    **two_way,
                    "t_lo": t["lo"],
                    "t_hi": t["hi"],
                    "per_seed": {str(s): d[metric] for s, d in per_seed.items()},
                }
            per_split[split] = cells
        if per_split:
            out[arm] = {"baseline": base, "splits": per_split}
    return out


def signed_cell(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not entry or not isinstance(entry.get("value"), (int, float)) or not math.isfinite(entry["value"]):
        return "–"
    text = f"{entry['value']:+.{digits}f}"
    lo, hi = entry.get("lo"), entry.get("hi")
    finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi))
    if finite:
        text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text


def paired_table(paired: Mapping[str, Any], splits: Sequence[str]) -> str:
    """Markdown: for each split, one row per arm with the mean paired difference [95% two-way
    bootstrap interval over seeds and questions] of each metric in :data:`PAIRED_METRICS`."""
    splits = [s for s in splits if any(s in p["splits"] for p in paired.values())]
    blocks = []
    for split in splits:
        header = ["arm", "vs", "seeds"] + list(PAIRED_METRICS.values())
        lines = [f"**{split}**", "", "| " + " | ".join(header) + " |",
                 "|" + "|".join("---" for _ in header) + "|"]
        for arm, entry in paired.items():
            cell = entry["splits"].get(split)
            if not cell:
                continue
            n = max(m.get("n_seeds", 0) for m in cell.values())
            row = [arm, entry["baseline"], str(n)] + [signed_cell(cell.get(m)) for m in PAIRED_METRICS]
            lines.append("| " + " | ".join(row) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def per_seed_table(paired: Mapping[str, Any], splits: Sequence[str]) -> str:
    """Markdown: one row per arm × seed with the paired-bootstrap interval of each difference."""
    splits = [s for s in splits if any(s in p["splits"] for p in paired.values())]
    header = ["arm", "seed"] + [f"{s} {lbl}" for s in splits for lbl in PAIRED_METRICS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for arm, entry in paired.items():
        seeds = sorted({s for sp in entry["splits"].values() for m in sp.values() for s in m["per_seed"]},
                       key=int)
        for seed in seeds:
            row = [arm, seed]
            for split in splits:
                cell = entry["splits"].get(split, {})
                row += [signed_cell(cell.get(metric, {}).get("per_seed", {}).get(seed))
                        for metric in PAIRED_METRICS]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_paired(regimes: Mapping[str, Mapping[str, Any]], splits: Sequence[str], path: Path) -> None:
    """One panel per metric × split: mean paired difference to CE per arm with its 95%
    t-interval (bar) and the seeds' values (dots), one colour per regime (``{label: paired}``);
    the dashed line is "no difference"."""
    from matplotlib.figure import Figure

    arms = list(dict.fromkeys(a for paired in regimes.values() for a in paired))
    splits = [s for s in splits
              if any(s in p["splits"] for paired in regimes.values() for p in paired.values())]
    fig = Figure(figsize=(3.6 * max(len(splits), 1), 1.0 + len(PAIRED_METRICS) * (0.8 + 0.3 * len(arms))),
                 layout="constrained")
    axes = fig.subplots(len(PAIRED_METRICS), max(len(splits), 1), squeeze=False, sharey=True)
    offsets = {label: (i - (len(regimes) - 1) / 2) * 0.25 for i, label in enumerate(regimes)}
    for r, (metric, label) in enumerate(PAIRED_METRICS.items()):
        for c, split in enumerate(splits):
            ax = axes[r][c]
            ax.axvline(0.0, color="0.4", ls="--", lw=1)
            for k, (regime, paired) in enumerate(regimes.items()):
                for i, arm in enumerate(arms):
                    cell = paired.get(arm, {}).get("splits", {}).get(split, {}).get(metric)
                    if not cell or not math.isfinite(cell.get("value", math.nan)):
                        continue
                    y = i + offsets[regime]
                    v, lo, hi = cell["value"], cell["lo"], cell["hi"]
                    if math.isfinite(lo) and math.isfinite(hi):
                        ax.plot([lo, hi], [y, y], color=f"C{k}", lw=2)
                    first = (i, r, c) == (0, 0, 0)
                    ax.plot([v], [y], "o", color=f"C{k}", ms=5, label=regime if first else None)
                    seeds = [d["value"] for d in cell["per_seed"].values()
                             if isinstance(d.get("value"), (int, float))]
                    ax.plot(seeds, [y] * len(seeds), "|", color=f"C{k}", ms=7, alpha=0.6)
            ax.set_yticks(range(len(arms)), arms)  # shared y: only the first column shows them
            hint = " (<0: arm better)" if metric in LOWER_IS_BETTER else ""
            ax.set_title(f"{split}: {label}{hint}", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()  # shared: first arm on top in every panel
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("arm − CE on the same questions: mean over seeds, 95% bootstrap interval over seeds "
                 "and questions (bar), seeds (ticks)",
                 fontsize=9)
    fig.savefig(path, dpi=110)
