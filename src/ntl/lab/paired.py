"""Paired comparisons of each arm with its cross-entropy baseline, on the same examples.

For every arm that has a baseline (``ce`` for token arms and the baselines, ``ce:<variant>`` for
``<arm>:<variant>``), every seed both have and every evaluated split, the difference
``metric(arm) − metric(baseline)`` is computed on the *same* questions with a paired bootstrap
over examples (:func:`ntl.lab.metrics.paired_difference`); across seeds, the mean difference gets a
t-interval (:func:`ntl.lab.aggregate.aggregate_seeds`). Same seed means the same initial weights (or the
same base model) and the same data order, so the pairing removes most seed-to-seed noise.

Sign convention: a positive difference in exact match or paper accuracy favours the arm; a
*negative* difference in log-MAE favours it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Metrics compared, with their labels (Δ = arm − baseline).
PAIRED_METRICS: dict[str, str] = {
    "exact_match": "Δ EM",
    "paper_accuracy": "Δ paper acc",
    "log_mae": "Δ log-MAE",
}


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
    runs: Mapping[str, Mapping[int, Path]], splits: Sequence[str], *, n_boot: int = 1000
) -> dict[str, Any]:
    """Paired differences for every arm of ``runs`` (``{arm: {seed: seed_dir}}``).

    Returns:
        ``{arm: {"baseline": name, "splits": {split: {metric: AGG}}}}`` where AGG is
        :func:`ntl.lab.aggregate.aggregate_seeds` over the seeds (mean, t-interval) plus
        ``"per_seed": {seed: {"value", "lo", "hi"}}`` (paired bootstrap). Arms whose baseline
        was not run, and seeds or splits missing on either side, are left out.
    """
    from ntl.lab.aggregate import aggregate_seeds
    from ntl.lab.metrics import paired_difference

    out: dict[str, Any] = {}
    for arm, seeds in runs.items():
        base = baseline_of(arm)
        if base is None or base not in runs:
            continue
        per_split: dict[str, Any] = {}
        for split in splits:
            per_seed: dict[int, dict[str, dict[str, float]]] = {}
            for seed, seed_dir in seeds.items():
                base_dir = runs[base].get(seed)
                a, b = seed_dir / "eval" / f"{split}.jsonl", (base_dir or Path()) / "eval" / f"{split}.jsonl"
                if base_dir is None or not a.is_file() or not b.is_file():
                    continue
                per_seed[seed] = paired_difference(
                    _read_jsonl(a), _read_jsonl(b), metrics=tuple(PAIRED_METRICS), n_boot=n_boot, seed=seed
                )
            if not per_seed:
                continue
            per_split[split] = {
                metric: {
                    **aggregate_seeds([d[metric] for d in per_seed.values()]),
                    "per_seed": {str(s): d[metric] for s, d in per_seed.items()},
                }
                for metric in PAIRED_METRICS
            }
        if per_split:
            out[arm] = {"baseline": base, "splits": per_split}
    return out


def _signed(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not entry or not isinstance(entry.get("value"), (int, float)) or not math.isfinite(entry["value"]):
        return "–"
    text = f"{entry['value']:+.{digits}f}"
    lo, hi = entry.get("lo"), entry.get("hi")
    finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi))
    if finite:
        text += f" [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return text


def paired_table(paired: Mapping[str, Any], splits: Sequence[str]) -> str:
    """Markdown: one row per arm, for each split the mean paired difference [95% t-interval
    across seeds] of each metric in :data:`PAIRED_METRICS`."""
    splits = [s for s in splits if any(s in p["splits"] for p in paired.values())]
    header = ["arm", "vs", "seeds"] + [f"{s} {lbl}" for s in splits for lbl in PAIRED_METRICS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for arm, entry in paired.items():
        n = max((m.get("n_seeds", 0) for sp in entry["splits"].values() for m in sp.values()), default=0)
        row = [arm, entry["baseline"], str(n)]
        for split in splits:
            cell = entry["splits"].get(split, {})
            row += [_signed(cell.get(metric)) for metric in PAIRED_METRICS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


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
                row += [_signed(cell.get(metric, {}).get("per_seed", {}).get(seed))
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
    fig = Figure(figsize=(3.6 * max(len(splits), 1), 1.0 + 0.42 * len(arms) * len(PAIRED_METRICS)),
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
            hint = " (<0: arm better)" if metric == "log_mae" else ""
            ax.set_title(f"{split}: {label}{hint}", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    axes[0][0].invert_yaxis()  # shared: first arm on top in every panel
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("arm − CE on the same examples: mean over seeds, 95% t-interval (bar), seeds (ticks)",
                 fontsize=9)
    fig.savefig(path, dpi=110)
