"""Integrations of the Number Token Loss with training frameworks.

- :mod:`ntl.integrations.hf`: Hugging Face ``transformers.Trainer`` (``NTLTrainer``,
  ``make_compute_loss_func``), for seq2seq and causal LMs;
- :mod:`ntl.integrations.trl`: TRL's ``SFTTrainer`` (``NTLSFTTrainer``);
- :mod:`ntl.integrations.causal_lm`: CE + λ·NTL of a decoder-only LM from its final hidden
  states (``causal_lm_loss``, ``shift_labels``, ``count_causal_items``);
- :mod:`ntl.integrations.logits_free`: a patch of a causal LM's forward (``apply_logits_free``)
  that computes that loss inside the model's forward, never building the logits.

Submodules import their framework lazily; ``import ntl.integrations`` needs torch only.
"""
