"""The report of a text-regression experiment (``task`` diamonds or synthetic): every arm under
every decoding, scored by its error, beside two yardsticks.

For each arm × decoding × split (``eval/`` holds the greedy answers, ``eval-<decoding>/`` the
others; an arm that decodes only greedily has its greedy answers stand for every decoding):

- per-seed regression metrics (:mod:`ntl.lab.regression_metrics`, an invalid answer scored as
  the training median) and their mean over seeds;
- the MAE's 95% interval from a two-way bootstrap over seeds and questions
  (:func:`ntl.lab.aggregate.seeds_by_questions_bootstrap` of the per-question absolute errors),
  so it holds both the seed and the test-sample variance;
- paired differences of the MAE, on the same questions and seeds: against CE decoded greedily
  (what the loss and the decoding together change) and against the same arm decoded greedily
  (what the decoding alone changes).

Yardsticks: always answering the training median, and scikit-learn's gradient-boosted trees on
the raw columns (:mod:`ntl.lab.gbm_yardstick`), fitted once on the same training rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["REFERENCE", "collect_regression", "plot_regression", "regression_markdown"]

#: The row every arm is compared with: CE, decoded greedily.
REFERENCE: tuple[str, str] = ("ce", "greedy")
#: Metrics shown per arm x decoding (means over seeds), after the MAE.
_SHOWN = ("rmse", "r2", "mape", "spearman", "invalid_rate")


def _rows(path: Path) -> list[dict[str, Any]]:
    from ntl.lab.file_checks import read_jsonl

    return read_jsonl(path, "evaluate the run again (ntl eval)")


def _answer_file(seed_dir: Path, decoding: str, split: str, greedy_only: bool) -> tuple[Path, bool]:
    """The answers of ``decoding`` on ``split`` and whether greedy answers stand in for them."""
    if decoding == "greedy" or greedy_only:
        return seed_dir / "eval" / f"{split}.jsonl", decoding != "greedy"
    return seed_dir / f"eval-{decoding}" / f"{split}.jsonl", False


def collect_regression(
    runs: Mapping[str, Mapping[int, Path]],
    splits: Sequence[str],
    decodings: Sequence[str],
    *,
    fallback: float,
    lam: float = 0.3,
    n_boot: int = 1000,
    yardstick_paths: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Regression results of an experiment (see the module docstring).

    Args:
        runs: ``{arm: {seed: seed_dir}}`` (:func:`ntl.lab.report.discover_runs`).
        splits: the splits to report (those an arm x decoding lacks are left out of its cells).
        decodings: decoding names besides ``"greedy"`` (``"median-of-8"``, ...).
        fallback: the training median, the prediction an invalid answer is scored as.
        lam: the profile's λ (to resolve arm names).
        n_boot: bootstrap replicates.
        yardstick_paths: ``{split: jsonl path}`` of the task, to fit the GBM yardstick on
            (``None``: no GBM row).

    Returns:
        ``{"fallback", "decodings": ["greedy", ...], "splits", "cells": {arm: {decoding: {split:
        {"seeds", "stand_in", "per_seed": [METRICS], "mean": {metric: value}, "mae": AGG,
        "vs_reference": AGG | None, "vs_greedy": AGG | None}}}}, "median_baseline": {split:
        METRICS}, "gbm": {split: METRICS} | None}``; AGG as
        :func:`ntl.lab.aggregate.seeds_by_questions_bootstrap` returns.
    """
    from ntl.lab.aggregate import seeds_by_questions_bootstrap
    from ntl.lab.arms import resolve_arm
    from ntl.lab.regression_metrics import (
        absolute_errors,
        regression_metrics,
        regression_metrics_from_records,
    )

    all_decodings = ["greedy", *[d for d in decodings if d != "greedy"]]
    errors: dict[tuple[str, str, str], dict[int, np.ndarray]] = {}
    questions: dict[str, list[str]] = {}
    cells: dict[str, Any] = {}
    targets: dict[str, list[str]] = {}
    for arm, seeds in runs.items():
        greedy_only = resolve_arm(arm, lam).greedy_only
        for decoding in all_decodings:
            for split in splits:
                per_seed, seed_ids, stand_in = [], [], False
                for seed, seed_dir in sorted(seeds.items()):
                    path, stand_in = _answer_file(Path(seed_dir), decoding, split, greedy_only)
                    if not path.is_file():
                        continue
                    rows = _rows(path)
                    qs = [str(r["question"]) for r in rows]
                    if questions.setdefault(split, qs) != qs:
                        raise ValueError(f"{path} holds other questions than the first arm's {split}; "
                                         "paired differences need every arm on the same questions")
                    targets.setdefault(split, [str(r["answer"]) for r in rows])
                    errors.setdefault((arm, decoding, split), {})[seed] = absolute_errors(
                        rows, fallback=fallback)
                    per_seed.append(regression_metrics_from_records(rows, fallback=fallback, n_boot=0))
                    seed_ids.append(seed)
                if not per_seed:
                    continue
                matrix = np.stack([errors[(arm, decoding, split)][s] for s in seed_ids])
                cells.setdefault(arm, {}).setdefault(decoding, {})[split] = {
                    "seeds": seed_ids,
                    "stand_in": stand_in,
                    "per_seed": per_seed,
                    "mean": {m: float(np.mean([p[m]["value"] for p in per_seed]))
                             for m in ("mae", *_SHOWN)},
                    "mae": seeds_by_questions_bootstrap(matrix, n_boot=n_boot, seed=0),
                }

    # a decoding shows on a split only where some arm was decoded that way (not only stood in for)
    real = {(d, sp) for by_d in cells.values() for d, by_s in by_d.items()
            for sp, c in by_s.items() if not c["stand_in"]}
    for by_d in cells.values():
        for d, by_s in by_d.items():
            for sp in [sp for sp, c in by_s.items() if c["stand_in"] and (d, sp) not in real]:
                del by_s[sp]

    def paired(a: tuple[str, str, str], b: tuple[str, str, str]) -> dict[str, Any] | None:
        if a == b or a not in errors or b not in errors:
            return None
        common = sorted(set(errors[a]) & set(errors[b]))
        if not common:
            return None
        diffs = np.stack([errors[a][s] - errors[b][s] for s in common])
        return seeds_by_questions_bootstrap(diffs, n_boot=n_boot, seed=0)

    for arm, by_decoding in cells.items():
        for decoding, by_split in by_decoding.items():
            for split, cell in by_split.items():
                cell["vs_reference"] = paired((arm, decoding, split), (*REFERENCE, split))
                cell["vs_greedy"] = paired((arm, decoding, split), (arm, "greedy", split))

    median_baseline = {
        split: regression_metrics([fallback] * len(answers), [float(a) for a in answers],
                                  fallback=fallback, n_boot=n_boot)
        for split, answers in targets.items()
    }
    gbm = None
    if yardstick_paths is not None:
        from ntl.lab.gbm_yardstick import gbm_yardstick

        gbm = gbm_yardstick(yardstick_paths, splits=list(targets), n_boot=n_boot)["metrics"]
    return {"fallback": fallback, "decodings": all_decodings, "splits": list(targets),
            "cells": cells, "median_baseline": median_baseline, "gbm": gbm,
            "curve": _curve(runs, fallback, errors)}


def _curve(runs: Mapping[str, Mapping[int, Path]], fallback: float,
           end: Mapping[tuple[str, str, str], Mapping[int, np.ndarray]]) -> dict[str, Any]:
    """Greedy MAE at every evaluated checkpoint (``eval-checkpoint-<step>/``) and at the end
    (``end``: the greedy per-question errors of the final models, ``{(arm, "greedy", split):
    {seed: errors}}``), per split evaluated along training: ``{split: {arm: {step | "end":
    {"mean", "seeds"}}}}``, the mean over the seeds evaluated there."""
    import re

    from ntl.lab.regression_metrics import absolute_errors

    out: dict[str, Any] = {}
    for arm, seeds in runs.items():
        points: dict[tuple[str, Any], list[float]] = {}
        for seed_dir in seeds.values():
            for folder in Path(seed_dir).glob("eval-checkpoint-*"):
                match = re.fullmatch(r"eval-checkpoint-(\d+)", folder.name)
                if not match:
                    continue
                for path in folder.glob("*.jsonl"):
                    points.setdefault((path.stem, int(match[1])), []).append(
                        float(absolute_errors(_rows(path), fallback=fallback).mean()))
        for split in {split for split, _ in points}:
            final = end.get((arm, "greedy", split), {})
            if final:
                points[(split, "end")] = [float(e.mean()) for e in final.values()]
        for (split, step), values in points.items():
            out.setdefault(split, {}).setdefault(arm, {})[step] = {
                "mean": float(np.mean(values)), "seeds": len(values)}
    return out


def _num(value: float, digits: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


def _interval(entry: Mapping[str, Any] | None, digits: int = 0, signed: bool = False) -> str:
    if not entry or not math.isfinite(entry.get("value", math.nan)):
        return "–"
    sign = "+" if signed else ""
    v, lo, hi = entry["value"], entry["lo"], entry["hi"]
    return f"{v:{sign},.{digits}f} [{lo:{sign},.{digits}f}, {hi:{sign},.{digits}f}]"


def regression_markdown(result: Mapping[str, Any]) -> str:
    """Markdown of :func:`collect_regression`'s result: one table per split, then the yardsticks."""
    parts = [
        "Every question counted; an invalid answer is scored as the training median "
        f"({_num(result['fallback'])}). MAE: mean over seeds [95% bootstrap over seeds and "
        "questions]; Δ MAE vs CE greedy and vs the same arm greedy: paired on the same questions "
        "and seeds, mean [95% bootstrap over seeds and questions] (negative = smaller error). "
        "RMSE, R², MAPE, Spearman, invalid: means over seeds. `*`: the arm decodes only "
        "greedily; its greedy answers stand in."
    ]
    header = ["arm", "decoding", "MAE", "Δ MAE vs CE greedy", "Δ MAE vs greedy", "RMSE", "R²",
              "MAPE", "Spearman", "invalid", "seeds"]
    for split in result["splits"]:
        rows = []
        for arm, by_decoding in result["cells"].items():
            for decoding in result["decodings"]:
                cell = by_decoding.get(decoding, {}).get(split)
                if cell is None:
                    continue
                m = cell["mean"]
                rows.append([
                    f"`{arm}`", decoding + ("*" if cell["stand_in"] else ""),
                    _interval(cell["mae"]), _interval(cell["vs_reference"], signed=True),
                    "–" if cell["stand_in"] else _interval(cell["vs_greedy"], signed=True),
                    _num(m["rmse"]), _num(m["r2"], 3), _num(100 * m["mape"], 1) + "%",
                    _num(m["spearman"], 3), _num(m["invalid_rate"], 3), str(len(cell["seeds"])),
                ])
        yard = [("always the training median", result["median_baseline"].get(split))]
        if result.get("gbm"):
            yard.append(("gradient-boosted trees on the columns", result["gbm"].get(split)))
        for label, metrics in yard:
            if metrics:
                rows.append([label, "–", _interval(metrics["mae"]), "–", "–",
                             _num(metrics["rmse"]["value"]), _num(metrics["r2"]["value"], 3),
                             _num(100 * metrics["mape"]["value"], 1) + "%",
                             _num(metrics["spearman"]["value"], 3),
                             _num(metrics["invalid_rate"]["value"], 3), "–"])
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table += ["| " + " | ".join(r) + " |" for r in rows]
        parts.append(f"**{split}**\n\n" + "\n".join(table))
    for split, by_arm in (result.get("curve") or {}).items():
        steps = sorted({s for points in by_arm.values() for s in points if s != "end"})
        header = ["arm", *[f"step {s}" for s in steps], "end"]
        table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for arm, points in by_arm.items():
            cells = [_num(points[s]["mean"]) if s in points else "–" for s in [*steps, "end"]]
            table.append(f"| `{arm}` | " + " | ".join(cells) + " |")
        parts.append(f"**{split}: MAE along training** (greedy, mean over seeds, every question "
                     "counted; the end is the final model)\n\n" + "\n".join(table))
    return "\n\n".join(parts)


def plot_regression(result: Mapping[str, Any], path: Path) -> None:
    """One panel per split: each arm's MAE under each decoding (dot: mean over seeds; bar: 95%
    bootstrap over seeds and questions), with the training median and the gradient-boosted
    trees as vertical lines."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    splits = list(result["splits"])
    arms = list(result["cells"])
    decodings = list(result["decodings"])
    fig = Figure(figsize=(4.2 * max(len(splits), 1), 1.2 + 0.45 * len(arms) * len(decodings)),
                 layout="constrained")
    axes = fig.subplots(1, max(len(splits), 1), squeeze=False, sharey=True)[0]
    step = 0.8 / max(len(decodings), 1)
    labelled: set[str] = set()
    for ax, split in zip(axes, splits):
        for k, decoding in enumerate(decodings):
            for i, arm in enumerate(arms):
                cell = result["cells"][arm].get(decoding, {}).get(split)
                if cell is None:
                    continue
                y = i + (k - (len(decodings) - 1) / 2) * step
                mae = cell["mae"]
                ax.plot([mae["lo"], mae["hi"]], [y, y], color=f"C{k}", lw=2)
                first = decoding not in labelled
                labelled.add(decoding)
                ax.plot([mae["value"]], [y], "o" if not cell["stand_in"] else "x", color=f"C{k}",
                        ms=5, label=decoding if first else None)
        lines = [("training median", result["median_baseline"].get(split), "0.4")]
        if result.get("gbm"):
            lines.append(("gradient-boosted trees", result["gbm"].get(split), "C3"))
        for label, metrics, color in lines:
            if metrics:
                ax.axvline(metrics["mae"]["value"], color=color, ls="--", lw=1,
                           label=label if split == splits[0] else None)
        ax.set_yticks(range(len(arms)), arms)
        ax.set_title(f"{split}: MAE (lower is better)", fontsize=9)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels collide
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center",
                   ncol=len(legend), fontsize=8)
    fig.suptitle("MAE per arm and decoding: mean over seeds, 95% bootstrap over seeds and questions "
                 "(x: greedy answers standing in)", fontsize=9)
    fig.savefig(path, dpi=110)
