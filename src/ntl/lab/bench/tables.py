"""The markdown of ``ntl bench``: the loss-path, logits-free, training-step and memory tables."""

from __future__ import annotations

from typing import Any

from ntl.lab.bench.shapes import Shape


def fmt_bytes(n: int | None) -> str:
    """Bytes as MiB with a thousands separator; ``n/a`` for None."""
    return "n/a" if n is None else f"{n / 2**20:,.1f}"


def fmt_ratio(x: float | None) -> str:
    """A ratio to two decimals; ``n/a`` for None."""
    return "n/a" if x is None else f"{x:.2f}"


def to_markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables (loss paths, logits-free path, training step)."""
    meta = report["meta"]
    lines = [
        "# ntl bench",
        "",
        f"Machine: {meta['machine']['cpu']} ({meta['machine']['cpu_count']} cores visible, "
        f"{meta['threads']} torch threads), device `{meta['device']}`"
        + (f" ({meta['machine']['gpu']})" if meta["machine"].get("gpu") else "")
        + f"; torch {meta['machine']['torch']}, ntloss {meta['machine'].get('ntloss')}.",
        f"Command: `{meta['command']}`; {meta['repeats']} interleaved rounds after "
        f"{meta['warmup']} warm-up; OMP_WAIT_POLICY {meta.get('omp_wait_policy')}; peak "
        f"memory: {meta['memory_method']}; {meta['elapsed_s'] / 60:.1f} min in all.",
    ]
    if meta.get("note"):
        lines.append(f"Note: {meta['note']}")
    if report["results"]:
        lines += loss_table(report)
    train = report.get("train_step")
    if train:
        lines += train_table(train)
    if report.get("logits_free_step"):
        lines += logits_free_table(report["logits_free_step"])
    if report.get("linear_memory"):
        lines += linear_memory_table(report["linear_memory"])
    return "\n".join(lines) + "\n"


def loss_table(report: dict[str, Any]) -> list[str]:
    """The loss paths on logits, then the logits-free group (when it ran)."""
    lines = [
        "",
        "Forward+backward of the loss on the same logits. **time ×CE** = median over rounds of "
        "time / CE time in the same round; **mem ×CE** = peak memory added by the call (incl. "
        "the gradient it returns) / CE's. CE = token cross-entropy alone (float32 math); "
        "`plain` = functional CE + functional NTL (unfused); `fused` = "
        "`fused.cross_entropy_with_ntl`; `-rw` = reweigh on; `ntloss-rw` = CE + ntloss "
        "NTLoss default (reweigh=True); λ = 0.3.",
        "",
        "| shape | dtype | numbers | case | time ms | time ×CE | peak MiB | mem ×CE |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for res in report["results"]:
        cfg = res["config"]
        for name, c in res["cases"].items():
            if c["group"] != "logits":
                continue
            lines.append(f"| {Shape(**cfg['shape']).label} | {cfg['dtype']} | "
                         f"{cfg['fraction']:.0%} | {name} | {c['time_s'] * 1e3:,.0f} | "
                         f"{fmt_ratio(c['time_ratio'])} | {fmt_bytes(c['peak_bytes'])} | "
                         f"{fmt_ratio(c['mem_ratio'])} |")
    if any("linear-was" in r["cases"] for r in report["results"]):
        lines += [
            "",
            f"Logits-free path (hidden (N, {report['meta']['hidden_dim']}), weight (V, "
            f"{report['meta']['hidden_dim']}); all cases include the output projection and "
            "its gradients). Ratios of `linear-was` to the materialized CE+NTL paths "
            "(`lin-plain-was`: h @ W.T then plain CE + NTL; `lin-fused-was`: h @ W.T then "
            "the fused loss), and of each case to `lin-ce` (h @ W.T then CE).",
            "",
            "| shape | dtype | numbers | case | time ms | time ×lin-ce | peak MiB | mem ×lin-ce "
            "| linear time × plain / fused | linear mem × plain / fused |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for res in report["results"]:
            cfg = res["config"]
            for name, c in res["cases"].items():
                if c["group"] != "linear":
                    continue
                extra = "| |"
                if name == "linear-was":
                    extra = (f"| {fmt_ratio(c.get('time_vs_lin-plain-was'))} / "
                             f"{fmt_ratio(c.get('time_vs_lin-fused-was'))} | "
                             f"{fmt_ratio(c.get('mem_vs_lin-plain-was'))} / "
                             f"{fmt_ratio(c.get('mem_vs_lin-fused-was'))} |")
                lines.append(f"| {Shape(**cfg['shape']).label} | {cfg['dtype']} | "
                             f"{cfg['fraction']:.0%} | {name} | {c['time_s'] * 1e3:,.0f} | "
                             f"{fmt_ratio(c['time_ratio'])} | {fmt_bytes(c['peak_bytes'])} | "
                             f"{fmt_ratio(c['mem_ratio'])} {extra}")
    return lines


def train_table(train: dict[str, Any]) -> list[str]:
    """The T5 training step."""
    lines = [
        "",
        f"Training step (model `{train['model']}`, {train['params']:,} parameters, vocab "
        f"{train['vocab']}, batch {train['batch']} × {train['seq']} tokens, 30% number "
        f"labels, AdamW; {train['config']['steps']} interleaved steps per arm):",
        "",
        "| arm | step ms | time ×CE |",
        "|---|---:|---:|",
    ]
    for name, a in train["arms"].items():
        lines.append(f"| {name} | {a['time_s'] * 1e3:,.1f} | {fmt_ratio(a['time_ratio'])} |")
    return lines


def logits_free_table(res: dict[str, Any]) -> list[str]:
    """The large-vocabulary training step (HF CE, materialized CE+NTL, logits-free CE+NTL)."""
    m = res["model"]
    lines = [
        "",
        f"Training step at a large vocabulary (Llama-style, {m['layers']} layers, hidden "
        f"{m['hidden']}, vocab {m['vocab']:,}, {res['params']:,} parameters; batch {m['batch']} "
        f"× {m['seq']} tokens, 30% number targets; AdamW; fp32 logits would take "
        f"{fmt_bytes(res['logits_bytes'])} MiB). **peak MiB added** = peak memory of one step "
        "(forward, backward, optimizer step) above the model, its optimizer state and the "
        "batch; ratios to Hugging Face's default CE step; losses at the same weights.",
        "",
        "| arm | step s | time ×CE | peak MiB added | mem ×CE | CE | CE + 0.3·NTL |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in res["arms"].items():
        total = "" if a["loss"]["ntl"] is None else f"{a['loss']['total']:.6f}"
        lines.append(f"| {name} | {a['time_s']:,.2f} | {fmt_ratio(a['time_ratio'])} | "
                     f"{fmt_bytes(a['peak_bytes'])} | {fmt_ratio(a['mem_ratio'])} | "
                     f"{a['loss']['ce']:.6f} | {total} |")
    return lines


def linear_memory_table(runs: dict[str, Any]) -> list[str]:
    """The logits-free memory check (materialized, logits-free, logits-free with chunk 64)."""
    cfg = runs["materialized"]["config"]
    lines = [
        "",
        f"Logits-free memory check: (B, T, V) = ({cfg['batch']}, {cfg['seq']}, {cfg['vocab']}), "
        f"d = {cfg['hidden_dim']}, `randn` hidden and weight, {cfg['fraction']:.0%} number "
        f"labels ({runs['linear']['rows_ce_above_69']:.0%} of the rows have CE > 69 nats); "
        "forward+backward of CE + 0.3·NTL-WAS, each in a fresh process.",
        "",
        "| path | peak MiB added | × materialized | loss | time s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, res in runs.items():
        lines.append(f"| {name} | {fmt_bytes(res['peak_bytes'])} | "
                     f"{fmt_ratio(res['mem_vs_materialized'])} | {res['loss']:.6f} | "
                     f"{res['time_s']:.1f} |")
    return lines
