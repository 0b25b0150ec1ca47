"""Experiment profiles: one frozen dataclass value per profile, every field overridable.

- ``quick``: the ``make experiment`` default. Three arms (``ce``, ``ce+ntl-was``, ``ce+ntl-mse``),
  one seed, a T5 with d_model 128 and 3+3 layers (1.38M parameters besides the embedding, which
  the vocabulary restricted to the data's ~160 pieces keeps at ~20k) on one module,
  ``arithmetic__add_or_sub`` at entropy 3-6 (numbers of up to ~4 digits, half of them decimals),
  2000 steps of 64 examples; sized to finish in <= 20 minutes on 2 CPU cores with data
  generation and evaluation (measured figures: docs/benchmarks.md).
- ``small``: three seeds per arm, three arithmetic modules (50k training examples each) at
  entropy 3-6, 3000 steps (~1 hour on 2 CPU cores), from random initialisation.
- ``pretrained``: a pretrained model learning a new task, every arm under its own loss for the
  whole task: per seed a CE *base* is pretrained on other modules (:data:`PRETRAIN_MODULES`,
  cached under ``runs/bases/``, reused by every arm and experiment that shares it), then every
  arm trains the full budget (warm-up, linear decay) on ``arithmetic__add_or_sub`` from that
  base; checkpoints at 1/3 and 2/3 are evaluated too. ``<arm>:scratch`` trains the same budget
  from random initialisation.
- ``ntl-late``: NTL switched on for the last ~3% of training (its share of the summed learning
  rate): per seed a CE base is trained on half of each module's training examples, then every
  arm trains it 500 more steps on the other half at lr 1e-4, constant.
- ``diamonds``: numbers as measurements (``task="diamonds"``): the price of a diamond from its
  columns, six arms (CE, three NTLs, a regression head, xVal) x 3 seeds from random
  initialisation, each evaluated greedily and by the median of 8 samples (``decodings``).
- ``paper``: the paper's T5-base recipe (13 modules, 1.05M steps, batch 32, lr 1e-4, AdamW with
  weight decay 0.01, reduce-on-plateau, beam 4): for a GPU, documented and runnable, not run in CI.

Override any field with ``--set key=value`` (lists comma-separated, ``none`` for None), e.g.
``ntl experiment --profile quick --set max_steps=500 --set modules=arithmetic__mul``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ntl.lab.data.mathematics import TRAIN_MODULES

DEFAULT_ARMS: tuple[str, ...] = ("ce", "ce+ntl-was", "ce+ntl-mse")


@dataclass(frozen=True)
class Profile:
    """Everything an experiment needs: data, tokenizer, model, arms, training and evaluation.

    Data fields map onto :class:`ntl.lab.data.mathematics.DataSpec` (``data_seed`` -> ``seed``).
    Training is counted in optimizer steps (``max_steps`` × ``batch_size`` × ``grad_accum``
    examples), so arms are compared at equal steps on the same examples in the same order.
    ``train_slice`` picks a fraction of each module's training examples (see
    :func:`ntl.lab.data.mathematics.module_slice`). With ``base_steps > 0`` every arm starts from a
    CE base model trained first for ``base_steps`` steps (``base_lr``, ``base_warmup_steps``,
    ``base_lr_scheduler``) on the first ``base_fraction`` of each module; the arms then train
    on the rest. ``ntl_label_tokens`` restricts the NTL softmax to the number tokens that occur
    as training labels (the paper's 10 digits with a digit-split tokenizer).
    With ``base_modules`` the base is *pretrained* instead: on its own data (those modules, all
    of their training examples, the same difficulty and sizes), and the arms then train the
    full ``max_steps`` with their own optimizer shape on all of ``modules``, the target task.
    ``curve_splits`` are evaluated at every checkpoint kept before the end (``save_steps``
    apart; ``save_total_limit=None`` keeps them all), so reports show each arm along training.
    ``task`` picks the data family (:mod:`ntl.lab.data.tasks`): ``mathematics`` (``modules``,
    ``difficulty``, ``entropy``), or a text-regression table, ``diamonds`` or ``synthetic``
    (``n_train`` rows to train on, ``n_valid``/``n_test``/``n_extrapolate`` to evaluate).
    ``decodings`` are evaluated after the greedy evaluation, each on ``decoding_splits``
    (``median-of-k`` and ``mean-of-k`` aggregate ``decoding_k`` samples; see
    :mod:`ntl.decoding`).
    ``threads`` is torch's intra-op thread count per process (``None``: torch's default, one per
    core); ``jobs`` is how many arm x seed runs ``ntl experiment`` trains and evaluates at once,
    in separate processes. Tiny models run best single-threaded, several at a time: a second
    thread gains little, and on a busy machine oversubscribed threads slow training several-fold.
    """

    name: str = "custom"
    description: str = ""
    # ---- data (ntl.lab.data.tasks: mathematics DataSpec, or a regression task's spec)
    task: str = "mathematics"
    modules: tuple[str, ...] = ("arithmetic__add_or_sub",)
    difficulty: str = "train-easy"
    entropy: tuple[float, float] | None = None
    n_train: int = 20_000
    n_valid: int = 1_000
    n_interpolate: int = 1_000
    n_extrapolate: int = 1_000
    n_test: int = 1_000
    data_seed: int = 0
    # ---- tokenizer and model
    tokenizer: str = "t5-small"
    split_digits: bool = True
    restrict_vocab: bool = True
    number_mode: str = "digits"
    ntl_label_tokens: bool = True
    model: str = "t5-tiny"
    dropout: float | None = None
    # ---- arms
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0,)
    lam: float = 0.3
    # ---- warm start: a CE base model per seed, then every arm fine-tunes it
    base_steps: int = 0
    base_modules: tuple[str, ...] = ()
    base_fraction: float = 0.5
    base_lr: float = 1e-3
    base_warmup_steps: int = 200
    base_lr_scheduler: str = "linear"
    train_slice: tuple[float, float] = (0.0, 1.0)
    # ---- training
    max_steps: int = 2_000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 25
    eval_steps: int = 0
    max_source_length: int = 160
    max_target_length: int = 32
    bf16: bool = False
    threads: int | None = None
    jobs: int = 1
    # ---- evaluation
    eval_splits: tuple[str, ...] = ("valid", "interpolate", "extrapolate")
    curve_splits: tuple[str, ...] = ()
    eval_max_examples: int | None = None
    eval_batch_size: int = 256
    num_beams: int = 1
    decodings: tuple[str, ...] = ()
    decoding_k: int = 8
    decoding_splits: tuple[str, ...] = ("test", "extrapolate")
    max_new_tokens: int = 32
    n_boot: int = 1000

    def data_spec_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`ntl.lab.data.mathematics.DataSpec`."""
        return {
            "modules": tuple(self.modules),
            "difficulty": self.difficulty,
            "entropy": tuple(self.entropy) if self.entropy is not None else None,
            "n_train": self.n_train,
            "n_valid": self.n_valid,
            "n_interpolate": self.n_interpolate,
            "n_extrapolate": self.n_extrapolate,
            "seed": self.data_seed,
        }

    def base_data_spec(self) -> Any:
        """The data of a pretrained base (``base_modules``), or ``None`` when the base trains on
        a slice of the arms' own data."""
        if not self.base_modules:
            return None
        from ntl.lab.data.mathematics import DataSpec

        return DataSpec(**{**self.data_spec_kwargs(), "modules": tuple(self.base_modules)})

    def data_spec(self) -> Any:
        """The data of this profile's ``task``: a :class:`ntl.lab.data.mathematics.DataSpec`,
        or for a regression task its spec (``n_train`` rows to train on, ``n_valid``,
        ``n_test`` and ``n_extrapolate`` rows to evaluate, split by ``data_seed``).

        Raises:
            ValueError: an unknown ``task``, or a regression task with ``base_modules``.
        """
        from ntl.lab.data.tasks import is_regression_task

        if not is_regression_task(self.task):
            from ntl.lab.data.mathematics import DataSpec

            return DataSpec(**self.data_spec_kwargs())
        if self.base_modules:
            raise ValueError(f"task {self.task!r} has no pretraining modules; set base_modules=none")
        split = {"n_valid": self.n_valid, "n_test": self.n_test, "n_train": self.n_train,
                 "n_extrapolate": self.n_extrapolate, "seed": self.data_seed}
        if self.task == "diamonds":
            from ntl.lab.data.diamonds import DiamondsSpec

            return DiamondsSpec(**split)
        from ntl.lab.data.synthetic import SyntheticSpec

        # enough rows for the splits below the extrapolation threshold (the top 10%)
        below = self.n_train + self.n_valid + self.n_test
        return SyntheticSpec(n_rows=max(20_000, int(below / 0.9) + 1), **split)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict`; unknown keys raise ``KeyError``."""
        return override(cls(), {k: v for k, v in data.items()})


# ---------------------------------------------------------------------- the profiles
QUICK = Profile(
    name="quick",
    description=(
        "make experiment default: 3 arms x 1 seed, T5 d=128 3+3 layers, arithmetic__add_or_sub "
        "at entropy 3-6, 2000 steps of 64, 2 CPU cores, <= 20 minutes including data and eval"
    ),
    modules=("arithmetic__add_or_sub",),
    difficulty="train-easy",
    entropy=(3.0, 6.0),
    n_train=60_000,
    n_valid=500,
    n_interpolate=500,
    n_extrapolate=500,
    model="t5-tiny",
    arms=DEFAULT_ARMS,
    seeds=(0,),
    max_steps=2_000,
    batch_size=64,
    lr=1e-3,
    warmup_steps=100,
    lr_scheduler="linear",
    save_steps=500,
    logging_steps=25,
    threads=1,
    jobs=3,
    eval_batch_size=250,
    max_new_tokens=24,
)

SMALL = Profile(
    name="small",
    description=(
        "README claims: 3 arms x 3 seeds, T5 d=128 3+3 layers, add_or_sub + add_sub_multiple + "
        "mul at entropy 3-6, 3000 steps of 64, ~1 hour on 2 CPU cores"
    ),
    modules=("arithmetic__add_or_sub", "arithmetic__add_sub_multiple", "arithmetic__mul"),
    difficulty="train-easy",
    entropy=(3.0, 6.0),
    n_train=50_000,
    n_valid=500,
    n_interpolate=500,
    n_extrapolate=500,
    model="t5-tiny",
    arms=DEFAULT_ARMS,
    seeds=(0, 1, 2),
    max_steps=3_000,
    batch_size=64,
    lr=1e-3,
    warmup_steps=200,
    save_steps=500,
    logging_steps=50,
    threads=1,
    jobs=2,
    eval_batch_size=250,
    max_new_tokens=24,
)

NTL_LATE = dataclasses.replace(
    SMALL,  # the same data distribution, model and batch as ``small``
    name="ntl-late",
    description=(
        "NTL switched on for the last 500 of 3500 steps (sum of lr 0.05 of 1.55): per seed a "
        "CE base (T5 d=128 3+3 layers, 3000 steps of 64, lr 1e-3) on half of add_or_sub + "
        "add_sub_multiple + mul at entropy 3-6 (100k each), then each arm trains it 500 more "
        "steps on the other half at lr 1e-4 constant; 3 seeds"
    ),
    n_train=100_000,
    base_steps=3_000,
    base_fraction=0.5,
    base_lr=SMALL.lr,
    base_warmup_steps=SMALL.warmup_steps,
    base_lr_scheduler=SMALL.lr_scheduler,
    max_steps=500,
    lr=1e-4,
    warmup_steps=0,
    lr_scheduler="constant",
)

#: Modules a pretrained base learns from: numbers and arithmetic other than the target task.
PRETRAIN_MODULES: tuple[str, ...] = (
    "numbers__place_value",
    "numbers__round_number",
    "arithmetic__mul",
    "algebra__linear_1d",
)

PRETRAINED = dataclasses.replace(
    QUICK,
    name="pretrained",
    description=(
        "a pretrained model fine-tuned on a new task, every arm learning the whole task under "
        "its own loss: per seed a CE base (T5 d=128 3+3 layers) pretrained 1500 steps on "
        "place_value, round_number, mul and linear_1d, then each arm trains 3000 steps "
        "(lr 1e-3, warm-up 100, linear decay) on arithmetic__add_or_sub at entropy 3-6, "
        "evaluated at steps 1000, 2000 and 3000; 3 seeds"
    ),
    modules=("arithmetic__add_or_sub",),
    base_modules=PRETRAIN_MODULES,
    n_train=60_000,
    n_valid=1_000,
    n_interpolate=1_000,
    n_extrapolate=1_000,
    seeds=(0, 1, 2),
    base_steps=1_500,
    base_lr=1e-3,
    base_warmup_steps=100,
    base_lr_scheduler="linear",
    max_steps=3_000,
    lr=1e-3,
    warmup_steps=100,
    lr_scheduler="linear",
    save_steps=1_000,
    save_total_limit=None,
    curve_splits=("valid",),
    jobs=2,
)

DIAMONDS = Profile(
    name="diamonds",
    description=(
        "numbers as measurements: the price of a diamond from its columns (plotnine's diamonds "
        "table, 45k training rows), 6 arms x 3 seeds, T5 d=128 3+3 layers from random init, "
        "1500 steps of 64 (~2 h on 2 CPU cores), evaluated greedily and by the median of 8 "
        "samples on test (1000 rows) and extrapolation (1000 of the most expensive tenth, "
        "priced above every training diamond)"
    ),
    task="diamonds",
    modules=("diamonds",),
    n_train=45_000,
    n_valid=1_000,
    n_test=1_000,
    n_extrapolate=1_000,
    model="t5-tiny",
    arms=("ce", "ce+ntl-was", "ce+ntl-mse", "ce+ntl-number-level", "regression-head", "xval"),
    seeds=(0, 1, 2),
    max_steps=1_500,
    batch_size=64,
    lr=1e-3,
    warmup_steps=100,
    lr_scheduler="linear",
    save_steps=500,
    save_total_limit=None,
    logging_steps=25,
    threads=1,
    jobs=2,
    eval_splits=("valid", "test", "extrapolate"),
    curve_splits=("valid",),
    decodings=("median-of-k",),
    decoding_k=8,
    decoding_splits=("test", "extrapolate"),
    eval_batch_size=250,
    max_new_tokens=10,
)

PAPER = Profile(
    name="paper",
    description=(
        "the paper's recipe (GPU): T5-base, 13 modules, 1.05M steps, batch 32, lr 1e-4, AdamW "
        "wd 0.01, reduce-on-plateau, beam-4 generation"
    ),
    modules=TRAIN_MODULES,
    difficulty="train",
    n_train=1_000_000,
    n_valid=1_000,
    n_interpolate=10_000,
    n_extrapolate=10_000,
    restrict_vocab=False,
    model="t5-base",
    dropout=0.1,
    arms=DEFAULT_ARMS,
    seeds=(0,),
    max_steps=1_050_000,
    batch_size=32,
    lr=1e-4,
    weight_decay=0.01,
    warmup_steps=0,
    lr_scheduler="reduce_lr_on_plateau",
    save_steps=10_000,
    logging_steps=500,
    eval_steps=10_000,
    eval_max_examples=2_000,
    eval_batch_size=128,
    num_beams=4,
    max_new_tokens=32,
)

PROFILES: dict[str, Profile] = {
    p.name: p for p in (QUICK, SMALL, PRETRAINED, NTL_LATE, DIAMONDS, PAPER)
}


def base_profile(profile: Profile) -> Profile:
    """The profile of the CE base model that ``profile``'s arms fine-tune (its own training
    fields from the ``base_*`` ones, the first ``base_fraction`` of the data)."""
    if profile.base_steps <= 0:
        raise ValueError(f"profile {profile.name!r} has no base stage (base_steps={profile.base_steps})")
    if not 0.0 < profile.base_fraction < 1.0:
        raise ValueError(f"base_fraction={profile.base_fraction} must be in (0, 1)")
    return dataclasses.replace(
        profile,
        arms=("ce",),
        max_steps=profile.base_steps,
        lr=profile.base_lr,
        warmup_steps=profile.base_warmup_steps,
        lr_scheduler=profile.base_lr_scheduler,
        modules=tuple(profile.base_modules) or profile.modules,
        train_slice=(0.0, 1.0) if profile.base_modules else (0.0, profile.base_fraction),
        base_steps=0,
        base_modules=(),
        curve_splits=(),
    )


def arm_profile(profile: Profile) -> Profile:
    """The profile an arm trains with: after a base stage on a slice of the same data, the data
    the base did not see; after a pretrained base (``base_modules``), all of the target data."""
    if profile.base_steps <= 0 or profile.base_modules:
        return profile
    base_profile(profile)  # validates base_fraction
    return dataclasses.replace(profile, train_slice=(profile.base_fraction, 1.0))


def decodings_of(profile: Profile) -> list[Any]:
    """The :class:`ntl.decoding.Decoding` of each name in ``profile.decodings`` (``k`` =
    ``decoding_k``, sampling seed 0, so every arm and seed draws alike).

    Raises:
        ValueError: a name that is not a decoding, or a ``decoding_k`` it cannot take.
    """
    from ntl.decoding import DECODINGS, Decoding

    out = []
    for name in profile.decodings:
        if name not in DECODINGS:
            raise ValueError(f"decodings: unknown decoding {name!r}; choose from {', '.join(DECODINGS)}")
        aggregates = name in ("beam", "median-of-k", "mean-of-k")
        out.append(Decoding(name, k=int(profile.decoding_k) if aggregates else 1, seed=0))
    return out


# ---------------------------------------------------------------------- overrides
def get_profile(name: str) -> Profile:
    """The profile called ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Profile)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (a string from the command line, or JSON data) to field type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
        return _coerce(name, value, non_none[0])
    if origin is tuple:
        item_type = args[0] if args else str
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                items = json.loads(text)
            else:
                items = [s.strip() for s in text.split(",") if s.strip()]
        elif isinstance(value, Iterable):
            items = list(value)
        else:
            items = [value]
        return tuple(_coerce(name, v, item_type) for v in items)
    if origin is dict or tp is dict:
        return json.loads(value) if isinstance(value, str) else dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        f = float(str(value).replace("_", "")) if isinstance(value, str) else float(value)
        if f != int(f):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        return float(value)
    if tp is str:
        return str(value)
    return value


#: Tuple fields whose items each start runs: a repeated item is an error, not a no-op.
_NO_REPEATS = ("arms", "seeds")


def override(profile: Profile, values: Mapping[str, Any]) -> Profile:
    """A copy of ``profile`` with ``values`` (strings or typed) converted to the field types.

    Raises ``KeyError`` for unknown fields and ``ValueError`` for values that do not convert.
    """
    types = _field_types()
    changes = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in types:
            raise KeyError(f"unknown profile field {key!r}; fields: {', '.join(sorted(types))}")
        try:
            changes[key] = _coerce(key, value, types[key])
        except (TypeError, ValueError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot set {key}={value!r}: {e}") from None
        if key in _NO_REPEATS:
            twice = sorted({str(v) for v in changes[key] if changes[key].count(v) > 1})
            if twice:  # the same arm x seed twice would train into one folder from two processes
                raise ValueError(f"{key} names {', '.join(twice)} more than once; name each once")
    return dataclasses.replace(profile, **changes)


def parse_sets(items: Iterable[str] | None) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``; ``ValueError`` on a missing ``=``."""
    out: dict[str, str] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def resolve(name: str | Profile, sets: Iterable[str] | Mapping[str, Any] | None = None) -> Profile:
    """Profile ``name`` with ``--set`` overrides applied."""
    profile = get_profile(name) if isinstance(name, str) else name
    values = dict(sets) if isinstance(sets, Mapping) else parse_sets(sets)
    return override(profile, values) if values else profile


def profile_help() -> str:
    """One line per profile, for ``--help``."""
    return "; ".join(f"{p.name}: {p.description}" for p in PROFILES.values())
