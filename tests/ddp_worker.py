"""A few SGD steps of a tiny Llama with CE + λ·NTL, on one process or under torchrun (DDP).

Under ``torchrun --nproc_per_node 2`` every process takes its share of each global batch, the
loss is the fused logits-free path with ``num_items_in_batch`` / ``num_number_items`` counted over
the *global* batch (all-reduced), and DDP averages the gradients, so the run must match one
process on the whole batch. Launched by tests/test_ddp.py::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py --out DIR

Without torchrun (``WORLD_SIZE`` unset) `train` runs the single-process reference with the plain
path (materialized logits + `CrossEntropyWithNTL`). Writes ``DIR/result_<world>.pt``: the global
loss per step and the final weights.
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import torch
from torch import nn

VOCAB = 64
GLOBAL_BATCH, SEQ, STEPS, LR = 4, 12, 3, 0.5


def number_vocab():
    from ntl import NumberVocab

    tok = {f"w{i}": i for i in range(VOCAB - 10)}
    tok.update({str(d): VOCAB - 10 + d for d in range(10)})
    return NumberVocab.from_vocab(tok, vocab_size=VOCAB)


def build_model() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config)


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (input_ids, labels) on every process; ~40% digits, some ignored labels."""
    g = torch.Generator().manual_seed(100 + step)
    ids = torch.randint(0, VOCAB - 10, (GLOBAL_BATCH, SEQ), generator=g)
    digits = torch.rand(GLOBAL_BATCH, SEQ, generator=g) < 0.4
    ids = torch.where(digits, torch.randint(VOCAB - 10, VOCAB, ids.shape, generator=g), ids)
    labels = ids.clone()
    labels[:, :2] = -100  # a "prompt" that is not trained on
    labels[step % GLOBAL_BATCH, -3:] = -100  # uneven padding across the batch
    return ids, labels


class FusedLoss(nn.Module):
    """Puts the loss inside ``forward`` so DDP sees the model's forward and syncs gradients."""

    def __init__(self, model: nn.Module, vocab) -> None:
        super().__init__()
        self.model = model
        self.vocab = vocab

    def forward(self, input_ids, labels, n_ce, n_num):
        from ntl.integrations.causal_lm import causal_lm_loss

        return causal_lm_loss(self.model, input_ids, labels, self.vocab,
                              num_items_in_batch=n_ce, num_number_items=n_num).total


def train(out: Path) -> None:
    import torch.distributed as dist

    from ntl import CrossEntropyWithNTL
    from ntl.integrations.causal_lm import count_causal_items, shift_labels

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    vocab = number_vocab()
    model = build_model().double()  # float64: the comparison tests the logic, not rounding
    if world > 1:
        dist.init_process_group("gloo")
        net = nn.parallel.DistributedDataParallel(FusedLoss(model, vocab))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    plain = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)
    losses = []
    for step in range(STEPS):
        ids, labels = global_batch(step)
        if world > 1:
            ids, labels = ids[rank::world], labels[rank::world]
            counts = torch.stack(count_causal_items(labels, vocab))
            dist.all_reduce(counts)  # items of the global batch
            loss = net(ids, labels, counts[0], counts[1])
            # DDP averages gradients over processes; the loss is already a global mean.
            (loss * world).backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
        else:
            logits = model(input_ids=ids).logits
            loss = plain(logits, shift_labels(labels)).total
            loss.backward()
            total = loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(total))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"losses": losses, "state": model.state_dict()}, out / f"result_{world}.pt")
    if world > 1:
        # Free DDP's reducer while the gloo group is alive: destroying the group first can hang
        # the worker at exit.
        del net
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for result_<world>.pt")
    train(Path(parser.parse_args().out))
