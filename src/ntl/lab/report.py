"""Collect the metrics of a run into results.json, report.md and plots (curves.png, accuracy.png).

Reads ``<run>/<arm>/seed<k>/eval/metrics.json`` and ``log_history.json`` (layout in
docs/architecture.md) and writes into ``<run>/``:

* ``results.json``: every seed's metrics as evaluated, plus per-arm aggregates across seeds for
  every split, metric and module: the mean over seeds with a 95% CI. With two or more seeds the
  CI is the t-interval across seeds (``mean ± t₀.₉₇₅,ₖ₋₁·s/√k``, ``"ci": "t"``); with one seed it
  is that seed's bootstrap CI over examples (``"ci": "bootstrap"``).
* ``report.md``: the main table (rows arm × seed plus one aggregate row per arm; columns split ×
  {accuracy, log-MAE, log-R², invalid rate}, each ``value [lo, hi]``), per-module tables, the
  command that produced the report and the machine.
* ``curves.png``: training CE and NTL against step per arm (the ce arm has no NTL curve).
* ``accuracy.png``: accuracy and log-MAE per arm and split with CI bars.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ntl.lab.aggregate import CONFIDENCE as _CONFIDENCE
from ntl.lab.aggregate import aggregate_seeds
from ntl.lab.machine import machine_info
from ntl.lab.metrics import METRIC_NAMES, none_to_nan, write_json

__all__ = [
    "MAIN_METRICS",
    "SPLIT_ORDER",
    "build_report",
    "collect_results",
    "discover_runs",
    "order_arms",
    "aggregate_seeds",
    "METRIC_BOUNDS",
    "main_table",
    "comparison_table",
    "module_tables",
    "render_markdown",
    "collect_curve",
    "curve_tables",
    "plot_curves",
    "plot_accuracy",
    "machine_info",
    "add_arguments",
    "run",
]

#: Splits in report order; others follow alphabetically.
SPLIT_ORDER: tuple[str, ...] = ("valid", "interpolate", "extrapolate", "train")
#: Metrics of the main table, with their column labels.
MAIN_METRICS: dict[str, str] = {
    "exact_match": "EM",
    "paper_accuracy": "paper acc",
    "mae_all": "MAE (all)",
    "log_mae_all": "log-MAE (all)",
    "near_miss_rate": "near miss",
    "invalid_rate": "invalid",
}
#: Natural range of each metric; t-intervals across seeds are clipped to it.
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    "exact_match": (0.0, 1.0),
    "paper_accuracy": (0.0, 1.0),
    "invalid_rate": (0.0, 1.0),
    "mae": (0.0, math.inf),
    "median_ae": (0.0, math.inf),
    "log_mae": (0.0, math.inf),
    "mae_all": (0.0, math.inf),
    "log_mae_all": (0.0, math.inf),
    "near_miss_rate": (0.0, 1.0),
    "r2": (-math.inf, 1.0),
    "log_r2": (-math.inf, 1.0),
}
_SEED_RE = re.compile(r"^seed(\d+)$")


# --------------------------------------------------------------------------------------------
# discovery and aggregation
# --------------------------------------------------------------------------------------------


def order_arms(arms: Sequence[str], preferred: Sequence[str] = ()) -> list[str]:
    """Stable arm order: ``ce`` first, then the order of ``preferred`` (e.g. the experiment's
    arm list), then the rest alphabetically."""
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(set(arms), key=lambda a: (a != "ce", rank.get(a, len(rank)), a))


def _order_splits(splits: Sequence[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return sorted(set(splits), key=lambda s: (rank.get(s, len(rank)), s))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _experiment_info(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "experiment.json"
    if not path.is_file():
        return {}
    try:
        info = _read_json(path)
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _experiment_arms(info: Mapping[str, Any]) -> list[str]:
    for holder in (info, info.get("profile"), info.get("config")):
        if isinstance(holder, Mapping) and isinstance(holder.get("arms"), list):
            return [str(a.get("name", a)) if isinstance(a, Mapping) else str(a)
                    for a in holder["arms"]]
    return []


def _experiment_command(info: Mapping[str, Any]) -> str | None:
    commands = info.get("commands")
    if isinstance(commands, list) and commands:
        return "\n".join(str(c) for c in commands)  # one line per invocation, oldest first
    for key in ("command", "command_line", "cmd", "argv"):
        value = info.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, list) and value:
            return shlex.join(str(v) for v in value)
    return None


def discover_runs(run_dir: Path, preferred: Sequence[str] = ()) -> dict[str, dict[int, Path]]:
    """``{arm: {seed: seed_dir}}`` for every ``<run_dir>/<arm>/seed<k>/`` folder.

    Arms come in :func:`order_arms` order, seeds ascending. A folder counts as an arm when it
    holds at least one ``seed<k>`` folder.
    """
    run_dir = Path(run_dir)
    found: dict[str, dict[int, Path]] = {}
    if not run_dir.is_dir():
        return found
    for arm_dir in run_dir.iterdir():
        if not arm_dir.is_dir():
            continue
        seeds = {}
        for seed_dir in arm_dir.iterdir():
            m = _SEED_RE.match(seed_dir.name)
            if m and seed_dir.is_dir():
                seeds[int(m.group(1))] = seed_dir
        if seeds:
            found[arm_dir.name] = dict(sorted(seeds.items()))
    return {arm: found[arm] for arm in order_arms(list(found), preferred)}


def collect_results(run_dir: Path) -> dict[str, Any]:
    """Read every seed's ``eval/metrics.json`` under ``run_dir`` and aggregate across seeds.

    Returns the content of ``results.json``::

        {"run_dir", "arms": [...], "splits": [...], "seeds": {arm: [k, ...]},
         "per_seed": {arm: {"seed<k>": metrics.json content}},
         "aggregate": {arm: {split: {"overall": {metric: AGG}, "per_module": {module: {metric:
                                                                                     AGG}}}}},
         "ci_method": {arm: "t-interval across seeds" | "bootstrap (one seed)"},
         "missing": ["<arm>/seed<k>", ...]}     # seed folders without eval/metrics.json

    where AGG is :func:`aggregate_seeds`' output.

    Raises:
        FileNotFoundError: no ``eval/metrics.json`` anywhere under ``run_dir``.
    """
    run_dir = Path(run_dir)
    info = _experiment_info(run_dir)
    runs = discover_runs(run_dir, _experiment_arms(info))
    per_seed: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for arm, seeds in runs.items():
        for seed, seed_dir in seeds.items():
            path = seed_dir / "eval" / "metrics.json"
            if path.is_file():
                per_seed.setdefault(arm, {})[f"seed{seed}"] = none_to_nan(_read_json(path))
            else:
                missing.append(f"{arm}/seed{seed}")
    if not per_seed:
        raise FileNotFoundError(
            f"no <arm>/seed<k>/eval/metrics.json under {run_dir} "
            "(run `ntl eval` first, or check the run directory)"
        )
    arms = [a for a in runs if a in per_seed]
    splits = _order_splits([s for arm in arms for m in per_seed[arm].values() for s in m])

    aggregate: dict[str, Any] = {}
    ci_method: dict[str, str] = {}
    for arm in arms:
        seeds = list(per_seed[arm].values())
        ci_method[arm] = "t-interval across seeds" if len(seeds) > 1 else "bootstrap (one seed)"
        aggregate[arm] = {}
        for split in splits:
            present = [m[split] for m in seeds if split in m]
            if not present:
                continue
            overall = {
                name: aggregate_seeds([m["overall"][name] for m in present
                                       if name in m.get("overall", {})],
                                      METRIC_BOUNDS[name])
                for name in METRIC_NAMES
            }
            modules = sorted({mod for m in present for mod in m.get("per_module", {})})
            per_module = {
                mod: {
                    name: aggregate_seeds([m["per_module"][mod][name] for m in present
                                           if name in m.get("per_module", {}).get(mod, {})],
                                          METRIC_BOUNDS[name])
                    for name in METRIC_NAMES
                }
                for mod in modules
            }
            aggregate[arm][split] = {"overall": overall, "per_module": per_module}

    return {
        "run_dir": str(run_dir),
        "arms": arms,
        "splits": splits,
        "seeds": {arm: [int(s[4:]) for s in per_seed[arm]] for arm in arms},
        "confidence": _CONFIDENCE,
        "ci_method": ci_method,
        "per_seed": {arm: per_seed[arm] for arm in arms},
        "aggregate": aggregate,
        "missing": missing,
    }


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------


def _fmt(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not entry:
        return "–"
    v, lo, hi = (entry.get(k) for k in ("value", "lo", "hi"))
    if v is None or not math.isfinite(v):
        return "–"
    text = f"{v:.{digits}f}"
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(results: Mapping[str, Any]) -> str:
    """The main markdown table: one row per arm × seed, then one aggregate row per arm."""
    splits = results["splits"]
    header = ["arm", "seed"] + [f"{split} {label}" for split in splits
                                for label in MAIN_METRICS.values()]
    rows: list[list[str]] = []
    for arm in results["arms"]:
        for seed_name, metrics in results["per_seed"][arm].items():
            row = [arm, seed_name[4:]]
            for split in splits:
                overall = metrics.get(split, {}).get("overall", {})
                row += [_fmt(overall.get(name)) for name in MAIN_METRICS]
            rows.append(row)
        k = len(results["per_seed"][arm])
        row = [f"**{arm}**", f"**mean of {k}**" if k > 1 else "**(1 seed)**"]
        for split in splits:
            overall = results["aggregate"][arm].get(split, {}).get("overall", {})
            row += [_fmt(overall.get(name)) for name in MAIN_METRICS]
        rows.append(row)
    return _table(header, rows)


def comparison_table(results: Mapping[str, Any]) -> str:
    """One row per arm: our aggregate (mean [CI] over seeds) beside the paper's reported numbers.

    Columns: paper accuracy and log-MAE on the splits the paper has no counterpart for
    (``valid``), then on interpolate and extrapolate with the paper's value next to ours ("–"
    where the paper has no such row, see :func:`ntl.lab.paper.paper_row`). Like with like: the
    accuracy column is *paper accuracy* (last number, ``numpy.isclose``), the paper's metric.
    """
    from ntl.lab.paper import paper_row

    splits = results["splits"]
    ours_only = [s for s in splits if s not in ("interpolate", "extrapolate")]
    paired = [s for s in ("interpolate", "extrapolate") if s in splits]
    header = ["arm", "seeds", "paper row"]
    header += [f"{s} {label}" for s in ours_only for label in ("paper acc", "log-MAE")]
    for split in paired:
        header += [f"{split} paper acc", "paper", f"{split} log-MAE", "paper"]
    rows = []
    for arm in results["arms"]:
        found = paper_row(arm)
        row = [arm, str(len(results["per_seed"][arm])), found[0] if found else "–"]
        for split in ours_only:
            overall = results["aggregate"][arm].get(split, {}).get("overall", {})
            row += [_fmt(overall.get("paper_accuracy")), _fmt(overall.get("log_mae"))]
        for split in paired:
            overall = results["aggregate"][arm].get(split, {}).get("overall", {})
            reported = found[1].get(split, {}) if found else {}
            for metric, key in (("paper_accuracy", "acc"), ("log_mae", "log_mae")):
                row.append(_fmt(overall.get(metric)))
                row.append(f"{reported[key]:.3f}" if key in reported else "–")
        rows.append(row)
    return _table(header, rows)


def collect_curve(runs: Mapping[str, Mapping[int, Path]], final_step: int | None,
                  *, n_boot: int = 1000) -> dict[str, Any]:
    """Exact match and paired differences to CE at every intermediate checkpoint that was
    evaluated (``<seed_dir>/eval-checkpoint-<step>/<split>.jsonl``) and at the end (``eval/``).

    Returns ``{}`` when no run has an evaluated intermediate checkpoint, else ``{"points":
    [{"step": step or "end", "split": split, "em": {arm: AGG}, "paired": collect_paired(...)}]}``
    in step order, one point per (step, split) evaluated at every checkpoint.
    """
    from ntl.lab.paired import collect_paired

    steps: set[int] = set()
    for seeds in runs.values():
        for seed_dir in seeds.values():
            for folder in seed_dir.glob("eval-checkpoint-*"):
                if folder.name.rsplit("-", 1)[-1].isdigit():
                    steps.add(int(folder.name.rsplit("-", 1)[-1]))
    steps.discard(final_step if final_step is not None else -1)
    if not steps:
        return {}
    # the splits evaluated along training: those of the first intermediate checkpoint
    splits = sorted({p.stem for seeds in runs.values() for d in seeds.values()
                     for p in (d / f"eval-checkpoint-{min(steps)}").glob("*.jsonl")})
    points = []
    for step in [*sorted(steps), None]:
        eval_dir = "eval" if step is None else f"eval-checkpoint-{step}"
        for split in splits:
            em: dict[str, Any] = {}
            for arm, seeds in runs.items():
                values = []
                for seed_dir in seeds.values():
                    path = seed_dir / eval_dir / "metrics.json"
                    if path.is_file():
                        metrics = none_to_nan(_read_json(path))
                        if split in metrics:
                            values.append(metrics[split]["overall"]["exact_match"])
                if values:
                    em[arm] = aggregate_seeds(values, METRIC_BOUNDS["exact_match"])
            points.append({"step": "end" if step is None else step, "split": split, "em": em,
                           "paired": collect_paired(runs, [split], n_boot=n_boot, eval_dir=eval_dir)})
    return {"points": points}


def curve_tables(curve: Mapping[str, Any]) -> str:
    """Markdown for :func:`collect_curve`: per split, exact match per arm at each point, then
    the paired Δ EM and Δ log-MAE (all) to CE at each point."""
    from ntl.lab.paired import signed_cell

    parts = []
    for split in dict.fromkeys(p["split"] for p in curve["points"]):
        points = [p for p in curve["points"] if p["split"] == split]
        arms = list(dict.fromkeys(a for p in points for a in p["em"]))
        header = ["arm"] + [f"EM @ {p['step']}" for p in points]
        rows = [[a] + [_fmt(p["em"].get(a), 3) for p in points] for a in arms]
        parts.append(f"**{split}: exact match along training**\n\n{_table(header, rows)}")
        compared = [a for a in arms if any(a in p["paired"] for p in points)]
        if compared:
            header = ["arm"] + [f"{lbl} @ {p['step']}" for lbl in ("Δ EM", "Δ log-MAE")
                                for p in points]
            rows = [[a] + [signed_cell(p["paired"].get(a, {}).get("splits", {}).get(split, {}).get(m))
                           for m in ("exact_match", "log_mae_all") for p in points] for a in compared]
            parts.append(f"**{split}: paired with CE along training**\n\n{_table(header, rows)}")
    return "\n\n".join(parts)


def module_tables(results: Mapping[str, Any]) -> str:
    """Per-module markdown tables (one per split): strict exact match, paper accuracy and
    log-MAE per arm, aggregated."""
    parts = []
    for split in results["splits"]:
        arms = [a for a in results["arms"] if split in results["aggregate"][a]]
        modules = sorted({mod for a in arms
                          for mod in results["aggregate"][a][split]["per_module"]})
        if not modules:
            continue
        header = ["module"] + [f"{a} {lbl}" for a in arms for lbl in ("EM", "paper acc", "log-MAE")]
        rows = []
        for mod in modules:
            row = [mod]
            for a in arms:
                m = results["aggregate"][a][split]["per_module"].get(mod, {})
                row += [_fmt(m.get("exact_match")), _fmt(m.get("paper_accuracy")),
                        _fmt(m.get("log_mae"))]
            rows.append(row)
        parts.append(f"### {split}\n\n{_table(header, rows)}")
    return "\n\n".join(parts)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The full report.md text for ``results`` (as returned by :func:`collect_results`)."""
    run_dir = results["run_dir"]
    lines = [f"# Report: {Path(run_dir).name}", ""]
    lines.append(f"Produced by: `{results['produced_by']}`  ")
    if results.get("experiment_command"):
        commands = results["experiment_command"].splitlines()
        label = "Experiment command" + ("s" if len(commands) > 1 else "")
        lines.append(f"{label}: " + "; then ".join(f"`{c}`" for c in commands) + "  ")
    mach = results["machine"]
    lines.append(
        f"Machine (report): {mach['platform']}, {mach['cpu_count']} CPUs, "
        f"Python {mach['python']}, torch {mach['torch']}  "
    )
    if results.get("experiment_machine"):
        lines.append(f"Machine (experiment): {results['experiment_machine']}  ")
    lines.append("")
    methods = sorted(set(results["ci_method"].values()))
    lines.append(
        "Cells: `value [lo, hi]`, 95% CIs. Seed rows: bootstrap percentile interval over "
        "examples (resampled with replacement). Aggregate rows: "
        + ("mean over seeds with a t-interval across seeds"
           if methods == ["t-interval across seeds"] else
           "the one seed's bootstrap interval" if methods == ["bootstrap (one seed)"] else
           "mean with a t-interval across seeds for arms with several seeds, the bootstrap "
           "interval for arms with one seed")
        + " (t-intervals clipped to the metric's range, e.g. accuracy in [0, 1])"
        + ". EM = strict exact match of the one parsed number (invalid counts as wrong); "
        "paper acc = the paper's accuracy: the last number in the text, read leniently, "
        "numpy.isclose to the target (rtol 1e-5: forgives a last-digit error on long answers); "
        "MAE (all) and log-MAE (all, on sign(x)·log10(|x|+1)) over every question, an invalid "
        "answer scored as predicting 0; near miss = share of questions answered off by exactly "
        "one unit in the target's last place (|pred − target| = 1 for integers); invalid = "
        "share of answers that are not a single number (counted, never dropped)."
    )
    if results.get("split_entropy"):
        lines += ["", "Split entropies (the generator's difficulty, ~log10 of the number of "
                  "possible problems; test splits scaled with the training range):", ""]
        entropy = results["split_entropy"]
        for split, modules in ((s, entropy[s]) for s in _order_splits(list(entropy))):
            parts = []
            for module, entry in modules.items():
                lo, hi = entry["entropy"]
                text = f"{module} {lo:g}" + (f"-{hi:g}" if hi != lo else "")
                if "terms" in entry:
                    text += f" ({entry['terms'][0]}-{entry['terms'][1]} terms)"
                parts.append(text)
            lines.append(f"- {split}: " + "; ".join(parts))
    if results.get("missing"):
        lines += ["", "Not evaluated (no eval/metrics.json): "
                  + ", ".join(f"`{m}`" for m in results["missing"])]
    if results.get("regression"):
        from ntl.lab.regression_report import regression_markdown

        lines += ["", "## Numbers as measurements", "", regression_markdown(results["regression"]), "",
                  "![MAE per arm and decoding](measurements.png)"]
    lines += ["", "## Main results", "", main_table(results), ""]
    from ntl.lab.paper import PAPER_SETUP

    if not results.get("regression"):  # the paper's table is of the mathematics modules
        lines += ["## Beside the paper", "",
                  f"Ours: the aggregate rows above. Paper: its main table ({PAPER_SETUP}).", "",
                  comparison_table(results), ""]
    if results.get("paired"):
        from ntl.lab.paired import paired_table, per_seed_table

        lines += ["## Paired with CE", "",
                  "Each arm minus its CE baseline on the same questions, same seed (same initial "
                  "weights or base model, same data order), every question counted: mean over "
                  "seeds and questions [95% bootstrap interval resampling seeds and questions "
                  "together, so it holds both the seed and the test-sample variance]. Δ EM and "
                  "Δ paper acc > 0, Δ MAE, Δ log-MAE and Δ invalid < 0 favour the arm; Δ near "
                  "miss > 0 means more answers off by one unit in the last place.", "",
                  paired_table(results["paired"], results["splits"]), "",
                  "Per seed, with the paired bootstrap interval over examples:", "",
                  per_seed_table(results["paired"], results["splits"]), "",
                  "![paired differences](paired.png)", ""]
    if results.get("curve"):
        lines += ["## Along training", "",
                  "Every arm evaluated at its intermediate checkpoints (same steps for every arm) "
                  "and at the end: exact match (mean over seeds), then each arm's paired "
                  "difference to CE at each point [95% bootstrap over seeds and questions].", "",
                  curve_tables(results["curve"]), ""]
    modules = module_tables(results)
    if modules:
        lines += ["## Per module (aggregate over seeds)", "", modules, ""]
    lines += ["## Plots", "", "![training curves](curves.png)", "",
              "![accuracy and log-MAE](accuracy.png)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, entry in enumerate(history):
        y = entry.get(key)
        if isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(float(entry.get("step", i)))
            ys.append(float(y))
    return xs, ys


def _arm_colors(n: int) -> list[Any]:
    """``n`` distinct colours: matplotlib's tab10 up to 10 arms, tab20 beyond (no repeats to 20)."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def plot_curves(histories: Mapping[str, Mapping[int, list[dict[str, Any]]]], path: Path) -> None:
    """Training CE (left) and NTL (right) against step, one colour per arm, one line per seed.

    ``histories`` is ``{arm: {seed: log_history}}``. The NTL panel shows only arms whose
    loss has an NTL term (``ntl`` in the name; ``ce`` and ``rt`` log it as a monitor) and that
    logged it.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_ce, ax_ntl = fig.subplots(1, 2)
    colors = _arm_colors(len(histories))
    for (arm, seeds), color in zip(histories.items(), colors):
        for j, hist in enumerate(seeds.values()):
            label = arm if j == 0 else None
            xs, ys = _series(hist, "ce")
            if not xs and arm == "ce":
                xs, ys = _series(hist, "loss")
            if xs:
                ax_ce.plot(xs, ys, color=color, alpha=0.8, lw=1.2, label=label)
            if "ntl" in arm:  # ce, rt, ce:decoder... log NTL only as a monitor: not their loss
                xs, ys = _series(hist, "ntl")
                if xs:
                    ax_ntl.plot(xs, ys, color=color, alpha=0.8, lw=1.2, label=label)
    for ax, title in ((ax_ce, "cross-entropy (training)"), (ax_ntl, "NTL (training)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path, dpi=110)


def plot_accuracy(results: Mapping[str, Any], path: Path) -> None:
    """Grouped bars per split: accuracy (left) and log-MAE (right) per arm, with CI bars."""
    from matplotlib.figure import Figure

    splits, arms = results["splits"], results["arms"]
    fig = Figure(figsize=(max(8, 2.2 * len(splits) * 2), 4), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(arms), 1)
    colors = _arm_colors(len(arms))
    for ax, metric, title in ((axes[0], "exact_match", "accuracy (exact match)"),
                              (axes[1], "log_mae", "log-MAE (lower is better)")):
        for i, arm in enumerate(arms):
            xs, ys, err_lo, err_hi = [], [], [], []
            for s, split in enumerate(splits):
                agg = results["aggregate"][arm].get(split, {}).get("overall", {}).get(metric)
                if not agg or not math.isfinite(agg["value"]):
                    continue
                v, lo, hi = agg["value"], agg["lo"], agg["hi"]
                xs.append(s - 0.4 + width * (i + 0.5))
                ys.append(v)
                err_lo.append(max(v - lo, 0.0) if math.isfinite(lo) else 0.0)
                err_hi.append(max(hi - v, 0.0) if math.isfinite(hi) else 0.0)
            ax.bar(xs, ys, width=width * 0.95, yerr=[err_lo, err_hi], capsize=3,
                   color=colors[i], label=arm)
        ax.set_xticks(range(len(splits)), splits)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7 if len(arms) > 6 else 8, ncol=2 if len(arms) > 6 else 1)
    fig.suptitle("mean over seeds, 95% CI (t across seeds; bootstrap for one seed)",
                 fontsize=9)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def _split_entropy(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The per-split entropies recorded in the experiment's data ``spec.json`` (if any)."""
    train = (info.get("data") or {}).get("train")
    spec = Path(train).parent / "spec.json" if train else None
    if spec is None or not spec.is_file():
        return None
    return _read_json(spec).get("entropy")


def _regression_results(info: Mapping[str, Any], runs: Mapping[str, Mapping[int, Path]],
                        splits: Sequence[str]) -> dict[str, Any] | None:
    """:func:`ntl.lab.regression_report.collect_regression` for an experiment on a
    text-regression task (``None`` for mathematics, or without the data's ``spec.json``)."""
    from ntl.lab.data.tasks import is_regression_task, train_median

    profile = info.get("profile") or {}
    data = info.get("data") or {}
    if not is_regression_task(profile.get("task", "mathematics")) or "train" not in data:
        return None
    fallback = train_median(data["train"])
    if fallback is None:
        return None
    from ntl.lab.config import Profile, decodings_of
    from ntl.lab.regression_report import collect_regression

    yardstick = data if all(Path(p).is_file() for p in data.values()) else None
    return collect_regression(
        runs, [s for s in ("valid", "test", "extrapolate") if s in splits],
        [d.name for d in decodings_of(Profile.from_dict(profile))],
        fallback=fallback, lam=float(profile.get("lam", 0.3)),
        n_boot=int(profile.get("n_boot", 1000)), yardstick_paths=yardstick)


def build_report(run_dir: Path, *, plots: bool = True) -> str:
    """Write results.json, report.md, curves.png and accuracy.png into ``run_dir``.

    Args:
        run_dir: ``runs/<name>`` (layout in docs/architecture.md).
        plots: write the PNG plots (matplotlib, Agg).

    Returns:
        The main results table and the table beside the paper's numbers, as markdown (what
        ``ntl report`` and ``ntl experiment`` print).

    Raises:
        FileNotFoundError: no evaluated seed under ``run_dir``.
    """
    run_dir = Path(run_dir)
    from ntl.lab.paired import collect_paired, plot_paired

    results = collect_results(run_dir)
    info = _experiment_info(run_dir)
    runs = discover_runs(run_dir, results["arms"])
    results["paired"] = collect_paired({a: runs[a] for a in results["arms"] if a in runs}, results["splits"])
    final_step = (info.get("profile") or {}).get("max_steps")
    results["curve"] = collect_curve({a: runs[a] for a in results["arms"] if a in runs}, final_step)
    results["split_entropy"] = _split_entropy(info)
    results["regression"] = _regression_results(info, {a: runs[a] for a in results["arms"] if a in runs},
                                                results["splits"])
    results["produced_by"] = f"ntl report {shlex.quote(str(run_dir))}"
    results["experiment_command"] = _experiment_command(info)
    results["machine"] = machine_info()
    exp_machine = info.get("machine")
    if exp_machine:
        results["experiment_machine"] = (
            ", ".join(f"{k}: {v}" for k, v in exp_machine.items())
            if isinstance(exp_machine, Mapping) else str(exp_machine)
        )
    # results.json: metadata first, data after
    ordered = {k: results[k] for k in ("produced_by", "experiment_command", "machine")}
    ordered.update(results)
    write_json(run_dir / "results.json", ordered)
    (run_dir / "report.md").write_text(render_markdown(results), encoding="utf-8")
    if plots:
        histories: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for arm in results["arms"]:
            for seed, seed_dir in runs.get(arm, {}).items():
                path = seed_dir / "log_history.json"
                if path.is_file():
                    hist = _read_json(path)
                    if isinstance(hist, list):
                        histories.setdefault(arm, {})[seed] = hist
        plot_curves(histories, run_dir / "curves.png")
        plot_accuracy(results, run_dir / "accuracy.png")
        if results.get("regression"):
            from ntl.lab.regression_report import plot_regression

            plot_regression(results["regression"], run_dir / "measurements.png")
        if results["paired"]:
            plot_paired({Path(run_dir).name: results["paired"]}, results["splits"], run_dir / "paired.png")
    if results.get("regression"):
        from ntl.lab.regression_report import regression_markdown

        return regression_markdown(results["regression"])
    return f"{main_table(results)}\n\nBeside the paper:\n\n{comparison_table(results)}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ntl report``."""
    parser.add_argument("run_dir", type=Path,
                        help="run directory runs/<name> holding <arm>/seed<k>/eval/metrics.json")
    parser.add_argument("--no-plots", action="store_true",
                        help="skip curves.png and accuracy.png (no matplotlib needed)")


def run(args: argparse.Namespace) -> int:
    """``ntl report RUN_DIR``: write the report files and print the main table."""
    try:
        table = build_report(args.run_dir, plots=not args.no_plots)
    except FileNotFoundError as exc:
        print(f"ntl report: {exc}", file=sys.stderr)
        return 1
    print(table)
    written = ["results.json", "report.md"] + ([] if args.no_plots else
                                               ["curves.png", "accuracy.png", "paired.png"])
    if not args.no_plots and (Path(args.run_dir) / "measurements.png").is_file():
        written.append("measurements.png")
    print(f"\nwrote {', '.join(str(Path(args.run_dir) / w) for w in written)}")
    return 0
