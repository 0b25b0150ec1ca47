"""A few optimizer steps of NTLTrainer (CE + λ·NTL) on a tiny Llama, on one process or under
torchrun (DDP through the Hugging Face Trainer).

Under ``torchrun --nproc_per_node 2`` every process gets micro-batches of 2 and accumulates 2 of
them, so one optimizer step sees a global batch of 8. The Trainer's data loader (sequential
sampler, sharded by accelerate's ``BatchSamplerShard``) hands the micro-batches out round-robin:
micro-batch ``j`` of the sequential order goes to process ``j % 2``, so step ``k`` trains on the
examples ``8k .. 8k+7``: process 0 on ``8k+{0,1,4,5}``, process 1 on ``8k+{2,3,6,7}``. The
single-process reference (``WORLD_SIZE`` unset) uses micro-batches of 2 and accumulates 4 of
them: the same examples per step, the same micro-batches (so the same padding). Launched by
tests/test_ddp.py::

    PYTHONPATH=src OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 \\
        --master_addr 127.0.0.1 --master_port 29534 tests/ddp_trainer_worker.py --out DIR

Writes ``DIR/trainer_result_<world>.pt`` (rank 0): the logged ``loss``/``ce``/``ntl`` per step and
the final weights. Under torchrun it then trains again with ``average_tokens_across_devices=False``
(each process divides by its own counts, DDP averages the processes' losses) and writes
``DIR/trainer_result_<world>_local.pt``: that run's logged ``ce``/``ntl`` must still add up to its
``loss``. With ``--logits-free`` it trains once with ``NTLTrainer(logits_free=True)`` (the
loss computed inside the DDP-wrapped model's forward, no logits) and writes
``DIR/trainer_result_<world>_lf.pt``.
"""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

import torch

TOKENIZERS = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers"
PER_DEVICE, GLOBAL_BATCH, STEPS, LR, LAM = 2, 8, 3, 1.0, 0.3
WORDS = ["none", "seven", "many", "few"]


def records() -> list[dict[str, str]]:
    """``STEPS * GLOBAL_BATCH`` question/answer records whose answers hold 0 to ~12 digits."""
    out = []
    for i in range(STEPS * GLOBAL_BATCH):
        a, b = 7 + 37 * i, 3 + 11 * i * i
        if i % 5 == 3:  # no number target at all
            answer = WORDS[i % len(WORDS)]
        elif i % 3 == 0:  # number heavy
            answer = f"{a * b} and {a + b}, then {(a * 97 + b) % 10**(1 + i % 6)}"
        else:
            answer = str((a + b) % 10 ** (1 + i % 4))
        out.append({"module": "m", "question": f"What is {a} and {b}?", "answer": answer})
    return out


def tokenizer():
    from ntl.numbers import load_tokenizer

    return load_tokenizer(TOKENIZERS / "llama2")


def build_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=128)
    # float64: the comparison tests the logic, not rounding (CE itself is computed in float32)
    return LlamaForCausalLM(config).double()


def train(out: Path, *, average_tokens: bool = True, logits_free: bool = False) -> dict:
    """Train ``STEPS`` optimizer steps; return (and on rank 0 save) logs and final weights."""
    from transformers import TrainingArguments

    from ntl import CrossEntropyWithNTL, NumberVocab
    from ntl.integrations.hf import NTLTrainer
    from ntl.lab.data.collate import Collator, EncodedDataset, encode, pad_id

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tok = tokenizer()
    model = build_model(len(tok))
    vocab = NumberVocab.from_tokenizer(tok, mode="digits", vocab_size=model.config.vocab_size)
    ds = EncodedDataset(encode(records(), tok, causal=True))
    args = TrainingArguments(
        output_dir=str(out / f"run_{world}_{average_tokens}_{logits_free}"),
        max_steps=STEPS,
        per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=GLOBAL_BATCH // (PER_DEVICE * world),
        learning_rate=LR,
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: it would hide a wrong loss scale
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        ddp_backend="gloo" if world > 1 else None,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
        average_tokens_across_devices=average_tokens,
    )
    trainer = NTLTrainer(model=model, args=args, train_dataset=ds, data_collator=Collator(pad_id(tok)),
                         ntl_loss=CrossEntropyWithNTL(vocab, ntl="was", lam=LAM),
                         logits_free=logits_free)
    head_calls = []  # the logits-free path never runs lm_head: no (B, T, V) logits
    model.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "world": trainer.args.world_size,
        "steps": [h["step"] for h in logs],
        "loss": [h["loss"] for h in logs],
        "ce": [h["ce"] for h in logs],
        "ntl": [h["ntl"] for h in logs],
        "state": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "lm_head_calls": len(head_calls),
    }
    if trainer.args.process_index == 0:
        out.mkdir(parents=True, exist_ok=True)
        suffix = ("" if average_tokens else "_local") + ("_lf" if logits_free else "")
        torch.save(result, out / f"trainer_result_{world}{suffix}.pt")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for trainer_result_<world>[_local].pt")
    parser.add_argument("--logits-free", action="store_true",
                        help="train once with NTLTrainer(logits_free=True) instead")
    cli = parser.parse_args()
    out_dir = Path(cli.out)
    if cli.logits_free:
        train(out_dir, logits_free=True)
    else:
        train(out_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cli.logits_free:
        train(out_dir, average_tokens=False)
        # Free the Trainers' DDP wrappers (held in reference cycles) before the process group:
        # a gloo group destroyed while a DDP reducer still holds it can hang at interpreter exit.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        gc.collect()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
