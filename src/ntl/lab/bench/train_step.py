"""The training-step benchmark: optimizer steps of the quick profile's T5 with CE, CE+NTL (plain)
and CE+NTL (fused), interleaved, as ratios to the CE step (the ``train`` worker)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from ntl.lab.bench.inputs import LAM, plain_ce_ntl, random_labels, synthetic_tokenizer
from ntl.lab.bench.measure import ratios, time_interleaved


def run_train_step(config: dict[str, Any]) -> dict[str, Any]:
    """Time optimizer steps of the quick profile's T5 (``t5-tiny``, vocab 32100, batch 64 × 32
    tokens; ``config["quick"]``: ``t5-micro``, vocab 1000, batch 4 × 8) with CE, CE+NTL (plain)
    and CE+NTL (fused), 30% number labels, AdamW."""
    import torch

    from ntl import NumberVocab
    from ntl.lab.models import build_model
    from ntl.losses import fused
    from ntl.losses.functional import cross_entropy

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    device = config["device"]
    if config["quick"]:
        tok = synthetic_tokenizer(1000)
        vocab_size, batch, seq, spec = 1000, 4, 8, "t5-micro"
    else:
        from ntl.lab.tokenization import load_named_tokenizer
        from ntl.numbers import split_digits

        tok = split_digits(load_named_tokenizer("t5-small"))
        vocab_size, batch, seq, spec = 32100, 64, 32, "t5-tiny"
    vocab = NumberVocab.from_tokenizer(tok, mode="digits", vocab_size=vocab_size)
    model = build_model(spec, vocab_size, seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, vocab_size, (batch, seq), generator=g).to(device)
    labels = random_labels(vocab, batch * seq, 0.3, g).reshape(batch, seq).to(device)
    mask = torch.ones_like(input_ids)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    table = vocab.table(device)
    ce_ntl = plain_ce_ntl(table, "was")

    def step(loss_fn) -> Callable[[], None]:
        def run() -> None:
            logits = model(input_ids=input_ids, attention_mask=mask, labels=None,
                           decoder_input_ids=model._shift_right(labels)).logits
            loss_fn(logits).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    arms = {
        "ce": step(lambda z: cross_entropy(z, labels)),
        "ce+ntl-was plain": step(lambda z: ce_ntl(z, labels).total),
        "ce+ntl-was fused": step(lambda z: fused.cross_entropy_with_ntl(z, labels, table,
                                                                        lam=LAM).total),
    }
    times = time_interleaved(arms, config["steps"], max(config["warmup"], 2), device)
    ratio = ratios(times, "ce")
    return {"config": config, "model": spec, "batch": batch, "seq": seq,
            "vocab": vocab_size,
            "params": sum(p.numel() for p in model.parameters()),
            "arms": {name: {"time_s": statistics.median(ts), "times_s": ts,
                            "time_ratio": ratio[name]} for name, ts in times.items()}}
