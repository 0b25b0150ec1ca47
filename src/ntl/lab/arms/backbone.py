"""What the baselines (xVal, RT, regression head) share: a T5 backbone of the profile's size
and seed, the tokens their decoders never generate, and the device their models run on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ntl.lab.config import Profile


def backbone_config(profile: Profile, tokenizer: Any, arm: str) -> dict[str, Any]:
    """``T5Config`` keyword arguments for ``profile.model`` (a T5 size) with the vocabulary of
    ``tokenizer`` (rounded up to a multiple of 8, as for the token arms)."""
    from ntl.lab.models import model_spec, model_vocab_size, special_token_ids, t5_config_kwargs

    spec = model_spec(profile.model, dropout=profile.dropout)
    if not spec.is_encoder_decoder:
        raise ValueError(f"arm {arm!r} needs a T5 (encoder-decoder) model, got {profile.model!r}")
    ids = special_token_ids(tokenizer)
    return t5_config_kwargs(spec, model_vocab_size(tokenizer), pad=ids["pad"], eos=ids["eos"])


def prediction_setup(
    recipe: Any, model: Any, tokenizer: Any, questions: Sequence[str], max_source_length: int
) -> tuple[list[dict[str, Any]], Any, Any]:
    """What an encoding arm's generation loop starts from: the questions' features, the model's
    device and the logits filter that bans tokens the answer never holds."""
    profile = Profile(max_source_length=max_source_length)
    feats = recipe.features([{"question": q} for q in questions], tokenizer, profile, False)
    device = next(model.parameters()).device
    return feats, device, logits_filter(banned_ids(tokenizer, model.config.vocab_size), device)


def banned_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """Ids a baseline's decoder never picks: the embedding's padding rows and plain digit tokens
    (every digit of the training text is inside a number, which these arms never spell with
    digits)."""
    from ntl.numbers import number_value

    banned = set(range(len(tokenizer), vocab_size))
    for token, idx in tokenizer.get_vocab().items():
        if number_value(token, "digits") is not None:
            banned.add(int(idx))
    return sorted(banned)


def logits_filter(banned: list[int], device: Any) -> Any:
    """A (B, V) -> (B, V) function that sets the ``banned`` ids' logits to -inf."""
    import torch

    index = torch.tensor(banned, dtype=torch.long, device=device)

    def apply(logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, index, float("-inf")) if index.numel() else logits

    return apply


def device() -> Any:
    """The GPU when there is one, else the CPU (a ``torch.device``)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_eval(cls: Any, folder: Any) -> Any:
    """``cls.from_pretrained(folder)`` (after checking its files) in eval mode on :func:`device`."""
    import torch

    from ntl.lab.file_checks import check_model_folder

    check_model_folder(folder)
    model = cls.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    return model.to(device()).eval()


def seeded(seed: int, build: Any) -> Any:
    """``build()`` right after ``torch.manual_seed(seed)``, so a seed gives the same weights."""
    import torch

    torch.manual_seed(seed)
    model = build()
    model.train()
    return model
