"""The large-vocabulary training step: a Llama-style model at Llama-3's vocabulary, trained with
Hugging Face's CE, with CE+NTL on materialized logits and with CE+NTL logits-free
(`ntl.integrations.logits_free`); step time and peak memory as ratios to the CE step (the
``logits-free-step`` worker)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from ntl.lab.bench.inputs import LAM, digit_vocab, random_labels
from ntl.lab.bench.measure import Memory, ratios, time_interleaved
from ntl.lab.bench.shapes import torch_dtype

LLAMA_STEP = {"batch": 4, "seq": 1024, "vocab": 128256, "hidden": 256, "layers": 2, "heads": 4,
              "intermediate": 1024}
"""The large-vocabulary training step: a 2-layer Llama with Llama-3's vocabulary size."""
LLAMA_STEP_QUICK = {"batch": 2, "seq": 32, "vocab": 2000, "hidden": 32, "layers": 1, "heads": 2,
                    "intermediate": 64}
LOGITS_FREE_ARMS = ("ce (HF default)", "ce+ntl materialized", "ce+ntl logits-free")


def run_logits_free_step(config: dict[str, Any]) -> dict[str, Any]:
    """Optimizer steps of a Llama-style model at a large vocabulary, three ways.

    ``ce (HF default)``: ``model(input_ids, labels=labels).loss`` (Hugging Face's own causal-LM
    loss on materialized logits); ``ce+ntl materialized``: the model's logits, then
    `ntl.CrossEntropyWithNTL` (fused); ``ce+ntl logits-free``: the same loss computed inside the
    model's forward by `ntl.integrations.logits_free` (no logits). One model and one AdamW
    optimizer; the losses of the three arms are read at the same (initial) weights. Peak memory
    is measured per arm on a full step (forward, backward, ``optimizer.step``) after the
    optimizer state exists, so it counts what the step adds on top of the parameters and the
    optimizer state: the parameter gradients, activations, and the loss path's logits, their
    gradient or its chunk buffers. ``config["steps"]`` timed steps per arm (the first one is
    the memory step), interleaved across arms. ``config["device"]`` places the model and the
    batch; ``config["dtype"]`` (``fp32``, the default, or ``bf16``) is the model's dtype;
    ``config["quick"]`` uses `LLAMA_STEP_QUICK` instead of `LLAMA_STEP`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ntl import CrossEntropyWithNTL
    from ntl.integrations.causal_lm import shift_labels
    from ntl.integrations.logits_free import apply_logits_free

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    device = config["device"]
    spec = LLAMA_STEP_QUICK if config["quick"] else LLAMA_STEP
    b, t, v = spec["batch"], spec["seq"], spec["vocab"]
    vocab = digit_vocab(v)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=v, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"], max_position_embeddings=t,
        tie_word_embeddings=False))
    model.to(device=device, dtype=torch_dtype(config.get("dtype", "fp32")))
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = random_labels(vocab, b * t, 0.3, g).reshape(b, t).to(device)  # 30% number targets
    labels = ids.clone()
    shifted = shift_labels(labels)
    loss = CrossEntropyWithNTL(vocab, ntl="was", lam=LAM)
    apply_logits_free(model, loss)  # moves the loss to the model's device
    hf_forward = type(model).forward  # the unpatched forward: Hugging Face's own loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def hf_ce() -> tuple[Any, ...]:
        out = hf_forward(model, input_ids=ids, labels=labels)
        return out.loss, out.loss, None

    def materialized() -> tuple[Any, ...]:
        out = loss(model(input_ids=ids).logits, shifted)
        return out.total, out.ce, out.ntl

    def logits_free() -> tuple[Any, ...]:
        out = model(input_ids=ids, labels=labels)
        return out.loss, out.ce, out.ntl

    losses = dict(zip(LOGITS_FREE_ARMS, (hf_ce, materialized, logits_free)))
    values: dict[str, dict[str, float | None]] = {}
    for name, fn in losses.items():  # the three losses at the same weights (forward only)
        total, ce, ntl = fn()
        values[name] = {"total": float(total), "ce": float(ce),
                        "ntl": None if ntl is None else float(ntl)}
    total.backward()  # the logits-free arm's: one optimizer step creates the AdamW state
    opt.step()
    opt.zero_grad(set_to_none=True)
    del total, ce, ntl

    def step(fn) -> Callable[[], None]:
        def run() -> None:
            fn()[0].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    arms = {name: step(fn) for name, fn in losses.items()}
    memory = Memory(device)
    peaks: dict[str, int | None] = {}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for name, fn in arms.items():  # first round: peak memory, each step timed as well
        started = time.perf_counter()
        peaks[name] = memory.measure(fn)
        times[name].append(time.perf_counter() - started)
    if config["steps"] > 1:
        more = time_interleaved(arms, config["steps"] - 1, 0, device)
        for name in arms:
            times[name] += more[name]
    ratio = ratios(times, LOGITS_FREE_ARMS[0])
    base_peak = peaks[LOGITS_FREE_ARMS[0]]
    return {"config": config, "model": spec,
            "params": sum(p.numel() for p in model.parameters()),
            "logits_bytes": b * t * v * 4,
            "arms": {name: {"time_s": statistics.median(times[name]), "times_s": times[name],
                            "time_ratio": ratio[name], "peak_bytes": peaks[name],
                            "mem_ratio": (peaks[name] / base_peak
                                          if peaks[name] is not None and base_peak else None),
                            "loss": values[name]} for name in arms}}
