"""Offline question/answer data from DeepMind's mathematics dataset generator, split and cached.

The generator (PyPI ``mathematics_dataset`` 1.0.1, made to run on current sympy/numpy by
:mod:`ntl.lab.data._compat`) is driven the way its own ``generate.py`` drives it: a module group's
``train(entropy_fn)`` gives the training samplers, ``test()`` the interpolation samplers (fixed
entropy inside the training range) and ``test_extra()`` the extrapolation samplers (bigger numbers
or longer expressions). Each sampler returns a ``Problem(question, answer)``; like
``generate.sample_from_module`` we drop problems whose question is longer than 160 characters or
whose answer is longer than 30.

Splits (records ``{"module", "question", "answer", "split"}``, one JSON object per line):

- ``train``: the training samplers at the chosen difficulty (``n_train`` per module).
- ``valid``: the same samplers and difficulty with an independent seed stream (``n_valid`` per
  module), held out: questions that occur in ``train`` are dropped and re-drawn.
- ``interpolate``: the generator's test samplers of the same modules (``n_interpolate`` each).
- ``extrapolate``: the ``*_big`` / ``*_longer`` samplers (``n_extrapolate`` each), by default the
  counterparts of the chosen training modules (:data:`EXTRAPOLATE_OF`).

With an explicit training ``entropy=(lo, hi)`` the test splits are *scaled* with it, so that
they mean for our range what the generator's mean for its own: every entropy constant of the
generator is mapped affinely from its training range onto ``(lo, hi)``. The generator's
interpolate entropy 8 in its (3, 10) (``add_or_sub``: 12 in (4, 16)) becomes ``lo + 5/7·(hi −
lo)`` (``add_or_sub``: ``lo + 2/3·(hi − lo)``); its extrapolate range (10, 12) (``add_or_sub``:
(16, 20); ``numbers``: 12) lies beyond ``hi`` by the same fraction of the range; the
``*_longer`` expressions are longer than the longest training expression *at ``hi``* by 1-3 terms,
as the generator's are longer than its own. :func:`split_entropies` gives the numbers and
``spec.json`` records them. Without ``entropy`` the generator's own splits are used unchanged.

No question of ``valid``, ``interpolate`` or ``extrapolate`` occurs in ``train`` (any module):
such draws are rejected and re-drawn. (The generator's own hash-based train/test split,
``modules/train_test_split.py``, is used only by its probability and measurement modules, none of
which is among ours; it is untouched.) Duplicates *within* a split are kept, as in the original
dataset.

Entropy is the generator's difficulty unit: roughly log10 of the number of possible problems
(``number.integer(entropy)`` draws from ``ceil(10**entropy)`` integers). The training range is
(3, 10) for most modules and (4, 16) for ``arithmetic__add_or_sub``; ``train-easy`` / ``-medium``
/ ``-hard`` take its lower, middle and upper third, ``train`` all of it (the same distribution as
the three concatenated in equal parts).

Every (seed, split, module) gets its own seed stream (derived with SHA-256), so a module's data
does not depend on which other modules are requested, and the same spec gives byte-identical
files. Generation uses (and then restores) Python's ``random`` and numpy's global RNG, because the
generator draws from them.

Example::

    spec = DataSpec(modules=("arithmetic__add_or_sub",), difficulty="train-easy",
                    n_train=20000, n_valid=500, n_interpolate=500, n_extrapolate=500, seed=0)
    paths = generate(spec, out_dir="data")   # {"train": Path("data/<hash>/train.jsonl"), ...}
    records = load_split(paths["train"])     # [{"module", "question", "answer", "split"}, ...]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: The paper's 13 training modules (also its interpolation test modules), in canonical order.
TRAIN_MODULES: tuple[str, ...] = (
    "algebra__linear_1d",
    "algebra__linear_1d_composed",
    "algebra__linear_2d",
    "algebra__linear_2d_composed",
    "algebra__sequence_next_term",
    "arithmetic__add_or_sub",
    "arithmetic__add_sub_multiple",
    "arithmetic__mul",
    "numbers__div_remainder",
    "numbers__div_remainder_composed",
    "numbers__place_value",
    "numbers__round_number",
    "numbers__round_number_composed",
)

#: The paper's 7 extrapolation test modules, in canonical order.
EXTRAPOLATE_MODULES: tuple[str, ...] = (
    "arithmetic__add_or_sub_big",
    "arithmetic__add_sub_multiple_longer",
    "arithmetic__mixed_longer",
    "arithmetic__mul_big",
    "arithmetic__mul_div_multiple_longer",
    "numbers__place_value_big",
    "numbers__round_number_big",
)

#: Training module -> its extrapolation counterpart(s). ``*_big`` modules are the same sampler
#: with more entropy; the ``*_longer`` ones are longer expressions. ``mixed_longer`` (+-*/ in one
#: expression) goes with multi-term ``add_sub_multiple``, ``mul_div_multiple_longer`` with
#: ``mul`` (the paper trains on neither ``mixed`` nor ``mul_div_multiple``), so the 13 training
#: modules map onto exactly the paper's 7. Modules not listed have no counterpart.
EXTRAPOLATE_OF: dict[str, tuple[str, ...]] = {
    "arithmetic__add_or_sub": ("arithmetic__add_or_sub_big",),
    "arithmetic__add_sub_multiple": (
        "arithmetic__add_sub_multiple_longer",
        "arithmetic__mixed_longer",
    ),
    "arithmetic__mul": ("arithmetic__mul_big", "arithmetic__mul_div_multiple_longer"),
    "numbers__place_value": ("numbers__place_value_big",),
    "numbers__round_number": ("numbers__round_number_big",),
}

#: Difficulty name -> (level, num_levels) for the generator's ``_make_entropy_fn``.
DIFFICULTIES: dict[str, tuple[int, int]] = {
    "train-easy": (0, 3),
    "train-medium": (1, 3),
    "train-hard": (2, 3),
    "train": (0, 1),
}

#: Split names, in generation order (train first: the others are de-duplicated against it).
SPLITS: tuple[str, ...] = ("train", "valid", "interpolate", "extrapolate")

#: Version of the generation procedure; part of the cache key, bump it when output changes.
DATA_FORMAT = 2

#: The generator's own length limits (``generate_settings.MAX_QUESTION_LENGTH`` / ``_ANSWER_``).
MAX_QUESTION_LENGTH = 160
MAX_ANSWER_LENGTH = 30

# A split gives up after this many draws per requested example (+ a constant), so a question
# space too small for the request (e.g. a tiny entropy range) fails instead of looping forever.
_MAX_DRAWS_PER_EXAMPLE = 50
_MAX_DRAWS_EXTRA = 1000


def extrapolate_modules_for(modules: Iterable[str]) -> tuple[str, ...]:
    """Extrapolation modules for training ``modules``: the union of their :data:`EXTRAPOLATE_OF`
    counterparts, in :data:`EXTRAPOLATE_MODULES` order (empty when none has one)."""
    wanted = {e for m in modules for e in EXTRAPOLATE_OF.get(m, ())}
    return tuple(m for m in EXTRAPOLATE_MODULES if m in wanted)


def parse_modules(text: str) -> tuple[str, ...]:
    """Parse a module list from the command line: ``paper`` (or ``all``) for the 13
    :data:`TRAIN_MODULES`, else comma-separated names (whitespace ignored)."""
    if text.strip() in ("paper", "all"):
        return TRAIN_MODULES
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _canonical_modules(
    modules: Iterable[str] | str, valid: tuple[str, ...], field: str, other: tuple[str, ...]
) -> tuple[str, ...]:
    """Check ``modules`` against ``valid`` and return them in ``valid`` order."""
    if isinstance(modules, str):
        modules = (modules,)
    modules = tuple(modules)
    for name in modules:
        if not isinstance(name, str) or name not in valid:
            hint = ""
            if name in other:
                other_field = "extrapolate_modules" if field == "modules" else "modules"
                hint = f" (it belongs in DataSpec.{other_field})"
            raise ValueError(
                f"DataSpec.{field}: unknown module {name!r}{hint}; valid names: {', '.join(valid)}"
            )
    duplicates = sorted({m for m in modules if modules.count(m) > 1})
    if duplicates:
        raise ValueError(f"DataSpec.{field}: module(s) listed twice: {duplicates}; list each once")
    return tuple(m for m in valid if m in modules)


@dataclass(frozen=True)
class DataSpec:
    """What to generate. Counts are per module; the cache key is a hash of all fields.

    Attributes:
        modules: training modules (names from :data:`TRAIN_MODULES`; a single name is accepted);
            stored in canonical order, so the order given does not matter.
        difficulty: ``"train-easy"`` | ``"train-medium"`` | ``"train-hard"`` (lower / middle /
            upper third of each module's training entropy range, the DeepMind release's files)
            or ``"train"`` (the whole range). Applies to ``train`` and ``valid``.
        n_train, n_valid, n_interpolate: examples per training module in each split.
        n_extrapolate: examples per extrapolation module.
        seed: base seed of all seed streams.
        entropy: optional ``(low, high)`` entropy range (log10 of the number of possible
            problems) that replaces every module's training range, ``difficulty`` then being
            ignored; e.g. ``(3.0, 6.0)`` for small CPU experiments. ``None``: use ``difficulty``.
            Interpolate and extrapolate are scaled with it (:func:`split_entropies`); with
            ``None`` they keep the generator's fixed ranges.
        extrapolate_modules: extrapolation modules (names from :data:`EXTRAPOLATE_MODULES`), or
            ``None`` for :func:`extrapolate_modules_for` ``(modules)``.
        max_question_len, max_answer_len: drop (and re-draw) problems whose question / answer
            has more characters; defaults are the generator's own limits (160 / 30).
    """

    modules: tuple[str, ...] = TRAIN_MODULES
    difficulty: str = "train-easy"
    n_train: int = 10_000
    n_valid: int = 1_000
    n_interpolate: int = 1_000
    n_extrapolate: int = 1_000
    seed: int = 0
    entropy: tuple[float, float] | None = None
    extrapolate_modules: tuple[str, ...] | None = None
    max_question_len: int = MAX_QUESTION_LENGTH
    max_answer_len: int = MAX_ANSWER_LENGTH

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise fields in place once, here.
        set_(
            self,
            "modules",
            _canonical_modules(self.modules, TRAIN_MODULES, "modules", EXTRAPOLATE_MODULES),
        )
        if not self.modules:
            raise ValueError(f"DataSpec.modules is empty; give at least one of: {', '.join(TRAIN_MODULES)}")
        if self.extrapolate_modules is not None:
            set_(
                self,
                "extrapolate_modules",
                _canonical_modules(
                    self.extrapolate_modules,
                    EXTRAPOLATE_MODULES,
                    "extrapolate_modules",
                    TRAIN_MODULES,
                ),
            )
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(
                f"DataSpec.difficulty={self.difficulty!r} is unknown; use one of "
                f"{', '.join(DIFFICULTIES)} (or set entropy=(low, high))"
            )
        for name in ("n_train", "n_valid", "n_interpolate", "n_extrapolate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DataSpec.{name}={value!r}; expected an integer >= 0")
        for name in ("max_question_len", "max_answer_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DataSpec.{name}={value!r}; expected an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"DataSpec.seed={self.seed!r}; expected an integer")
        if self.entropy is not None:
            try:
                low, high = (float(x) for x in self.entropy)
            except (TypeError, ValueError):
                raise ValueError(
                    f"DataSpec.entropy={self.entropy!r}; expected (low, high) floats or None"
                ) from None
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise ValueError(
                    f"DataSpec.entropy={self.entropy!r}; expected finite 0 <= low <= high, e.g. (3.0, 6.0)"
                )
            set_(self, "entropy", (low, high))

    @property
    def resolved_extrapolate_modules(self) -> tuple[str, ...]:
        """The extrapolation modules actually generated."""
        if self.extrapolate_modules is not None:
            return self.extrapolate_modules
        return extrapolate_modules_for(self.modules)

    def key(self) -> dict[str, Any]:
        """JSON-able identity of the data this spec produces (the cache key's content)."""
        fields = dataclasses.asdict(self)
        fields["extrapolate_modules"] = self.resolved_extrapolate_modules
        return json.loads(json.dumps({"format": DATA_FORMAT, "spec": fields}))

    def hash(self) -> str:
        """Stable 16-hex-digit hash of :meth:`key` (the cache directory's name)."""
        text = json.dumps(self.key(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cache_dir(spec: DataSpec, out_dir: str | os.PathLike[str] = "data") -> Path:
    """Directory holding the data of ``spec``: ``<out_dir>/<spec.hash()>``."""
    return Path(out_dir) / spec.hash()


def load_split(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read one split file (jsonl) into a list of ``{"module", "question", "answer", "split"}``."""
    from ntl.lab.file_checks import CorruptFileError, read_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no split file at {path}; create it with ntl.lab.data.mathematics.generate(spec) or `ntl data`"
        )
    fix = (
        f"regenerate it: delete {path.parent} and rerun `ntl data` (or the experiment, which "
        "generates its data again)"
    )
    records = read_jsonl(path, fix)
    missing = [i for i, r in enumerate(records, 1) if not {"module", "question", "answer"} <= set(r)]
    if missing:
        raise CorruptFileError(
            f"{path}: line {missing[0]} lacks module/question/answer (a corrupt file); {fix}"
        )
    try:  # a cache folder made by generate() records how many examples each split holds
        expected = sum(load_manifest(path.parent)["counts"][path.stem].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        expected = None
    if expected is not None and expected != len(records):
        raise CorruptFileError(
            f"{path} holds {len(records)} examples but its spec.json says {expected} (a truncated "
            f"file); {fix}"
        )
    return records


def module_slice(
    records: Iterable[Mapping[str, Any]], lo: float, hi: float
) -> list[dict[str, Any]]:
    """The records from fraction ``lo`` to ``hi`` of each module, in file order: each module's
    ``n`` records contribute indices ``[floor(lo·n), floor(hi·n))``, so the mixture of modules is
    kept and ``(0, f)`` / ``(f, 1)`` are disjoint and together give every record."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"slice ({lo}, {hi}) must satisfy 0 <= lo <= hi <= 1")
    by_module: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_module.setdefault(str(rec.get("module", "")), []).append(dict(rec))
    out: list[dict[str, Any]] = []
    for recs in by_module.values():
        n = len(recs)
        out.extend(recs[math.floor(lo * n) : math.floor(hi * n)])
    return out


def load_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``spec.json`` of a cache directory: ``{"format", "hash", "key", "spec",
    "extrapolate_modules", "counts": {split: {module: n}}, "dropped": {split: {module:
    {"too_long": n, "in_train": n}}}, "versions": {...}}``."""
    return json.loads((Path(directory) / "spec.json").read_text(encoding="utf-8"))


def _split_paths(directory: Path) -> dict[str, Path]:
    return {split: directory / f"{split}.jsonl" for split in SPLITS}


def _is_complete(directory: Path, spec: DataSpec) -> bool:
    """True when ``directory`` holds finished data for exactly ``spec``."""
    try:
        manifest = load_manifest(directory)
    except (OSError, ValueError):
        return False
    return manifest.get("key") == spec.key() and all(p.is_file() for p in _split_paths(directory).values())


def _stream_seed(seed: int, split: str, module: str) -> int:
    """32-bit seed of the (seed, split, module) stream (numpy's global RNG takes < 2**32)."""
    digest = hashlib.sha256(f"ntl.lab.data/{seed}/{split}/{module}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def make_entropy_fn(level: int, num_levels: int) -> Callable[[tuple[float, float]], tuple[float, float]]:
    """The generator's ``generate._make_entropy_fn``: map an entropy range ``(a, a + L)`` to its
    ``level``-th of ``num_levels`` equal parts, ``(a + level/num_levels*L, a +
    (level+1)/num_levels*L)``. Re-implemented so as not to import ``generate`` (which defines
    absl flags as a side effect)."""
    lower, upper = level / num_levels, (level + 1) / num_levels

    def modify_entropy(range_: tuple[float, float]) -> tuple[float, float]:
        length = range_[1] - range_[0]
        return (range_[0] + lower * length, range_[0] + upper * length)

    return modify_entropy


#: Prefix of the generator's entropy constants that drive each module (``<prefix>TRAIN``,
#: ``<prefix>INTERPOLATE``, ``<prefix>EXTRAPOLATE`` in its module group); ``_ENTROPY_`` otherwise.
_CONSTANT_PREFIX: dict[str, str] = {
    "arithmetic__add_or_sub": "_ADD_SUB_ENTROPY_",
    "arithmetic__add_or_sub_big": "_ADD_SUB_ENTROPY_",
}
_LONGER_MODULES = frozenset(m for m in EXTRAPOLATE_MODULES if m.endswith("_longer"))


def scale_entropy(x: float, source: tuple[float, float], target: tuple[float, float]) -> float:
    """Map entropy ``x`` affinely from the generator's training range ``source`` onto ``target``
    (``source[0] -> target[0]``, ``source[1] -> target[1]``; points beyond stay beyond)."""
    (a, b), (lo, hi) = source, target
    return lo + (x - a) * (hi - lo) / (b - a)


def _group_constants(group: Any, prefix: str) -> dict[str, tuple[float, float]]:
    """The ``TRAIN`` / ``INTERPOLATE`` / ``EXTRAPOLATE`` entropy ranges of ``group`` (those it has)."""
    out = {}
    for kind in ("TRAIN", "INTERPOLATE", "EXTRAPOLATE"):
        value = getattr(group, prefix + kind, None)
        if value is not None:
            out[kind] = (float(value[0]), float(value[1]))
    return out


def _scaled_constants(group: Any, train: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """``{constant name: scaled range}`` for every entropy constant family of ``group``."""
    out: dict[str, tuple[float, float]] = {}
    for name in dir(group):
        if not name.endswith("ENTROPY_TRAIN"):
            continue
        prefix = name[: -len("TRAIN")]
        consts = _group_constants(group, prefix)
        for kind, (a, b) in consts.items():
            out[prefix + kind] = (
                train if kind == "TRAIN"
                else (scale_entropy(a, consts["TRAIN"], train), scale_entropy(b, consts["TRAIN"], train))
            )
    return out


class _patched:
    """Context manager: set module attributes, restore them on exit (the generator's test
    samplers read their entropy constants when ``test()`` / ``test_extra()`` is called)."""

    def __init__(self, module: Any, values: Mapping[str, Any]) -> None:
        self.module, self.values = module, dict(values)
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        for name, value in self.values.items():
            self.saved[name] = getattr(self.module, name)
            setattr(self.module, name, value)

    def __exit__(self, *exc: Any) -> None:
        for name, value in self.saved.items():
            setattr(self.module, name, value)


def split_entropies(spec: DataSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """The entropy each split of ``spec`` is drawn at, per module.

    Returns ``{split: {module: {"entropy": [low, high]}}}`` (``*_longer`` modules also carry
    ``"terms": [min, max]``, the expression length). ``train`` and ``valid`` use ``spec.entropy``
    (or the generator's difficulty band); ``interpolate`` / ``extrapolate`` the generator's
    ranges, scaled onto ``spec.entropy`` when it is set (module docstring).
    """
    from ntl.lab.data._compat import import_generator

    groups = import_generator()
    out: dict[str, dict[str, dict[str, Any]]] = {split: {} for split in SPLITS}

    def consts(module: str) -> dict[str, tuple[float, float]]:
        group = groups[module.partition("__")[0]]
        values = _group_constants(group, _CONSTANT_PREFIX.get(module, "_ENTROPY_"))
        if spec.entropy is None:
            return values
        return {k: (scale_entropy(a, values["TRAIN"], spec.entropy),
                    scale_entropy(b, values["TRAIN"], spec.entropy)) for k, (a, b) in values.items()}

    for module in spec.modules:
        c = consts(module)
        train = c["TRAIN"] if spec.entropy is None else spec.entropy
        if spec.entropy is None:
            train = make_entropy_fn(*DIFFICULTIES[spec.difficulty])(train)
        for split in ("train", "valid"):
            out[split][module] = {"entropy": [round(x, 4) for x in train]}
        out["interpolate"][module] = {"entropy": [round(x, 4) for x in c["INTERPOLATE"]]}
    for module in spec.resolved_extrapolate_modules:
        c = consts(module)
        entry: dict[str, Any] = {"entropy": [round(x, 4) for x in c["EXTRAPOLATE"]]}
        if module in _LONGER_MODULES:
            from mathematics_dataset.sample import arithmetic as sample_arithmetic

            group = groups["arithmetic"]
            longest = sample_arithmetic.length_range_for_entropy(c["TRAIN"][1])[1]
            entry["terms"] = [longest + 1, longest + group._EXTRAPOLATE_EXTRA_LENGTH]
        out["extrapolate"][module] = entry
    return out


def _samplers(spec: DataSpec) -> dict[str, dict[str, Callable[[], Any]]]:
    """``{split: {module: sampler}}`` for the modules of ``spec``; ``valid`` shares ``train``'s."""
    from ntl.lab.data._compat import import_generator

    groups = import_generator()
    if spec.entropy is not None:
        entropy = spec.entropy

        def entropy_fn(range_: tuple[float, float]) -> tuple[float, float]:
            return entropy
    else:
        entropy_fn = make_entropy_fn(*DIFFICULTIES[spec.difficulty])

    def tests(method: str) -> dict[str, dict[str, Callable[[], Any]]]:
        out = {}
        for g, m in groups.items():
            scaled = _scaled_constants(m, spec.entropy) if spec.entropy is not None else {}
            with _patched(m, scaled):
                out[g] = getattr(m, method)()
        return out

    by_regime = {
        "train": {g: m.train(entropy_fn) for g, m in groups.items()},
        "interpolate": tests("test"),
        "extrapolate": tests("test_extra"),
    }

    def pick(regime: str, names: tuple[str, ...]) -> dict[str, Callable[[], Any]]:
        out = {}
        for name in names:
            group, _, short = name.partition("__")
            out[name] = by_regime[regime][group][short]
        return out

    train = pick("train", spec.modules)
    return {
        "train": train,
        "valid": train,
        "interpolate": pick("interpolate", spec.modules),
        "extrapolate": pick("extrapolate", spec.resolved_extrapolate_modules),
    }


def _draw(
    sampler: Callable[[], Any],
    n: int,
    *,
    stream: int,
    forbidden: set[str] | None,
    spec: DataSpec,
    label: str,
) -> tuple[Iterator[tuple[str, str]], dict[str, int]]:
    """Draw ``n`` (question, answer) pairs from ``sampler`` on seed ``stream``.

    Returns a generator of pairs and a stats dict ``{"too_long", "in_train"}`` filled in as the
    generator runs. Problems over the length limits or whose question is in ``forbidden`` are
    dropped and re-drawn; raises ``RuntimeError`` after too many draws.
    """
    import numpy as np

    stats = {"too_long": 0, "in_train": 0}

    def run() -> Iterator[tuple[str, str]]:
        random.seed(stream)
        np.random.seed(stream)
        limit = _MAX_DRAWS_PER_EXAMPLE * n + _MAX_DRAWS_EXTRA
        made = draws = 0
        while made < n:
            draws += 1
            if draws > limit:
                raise RuntimeError(
                    f"{label}: only {made} of {n} acceptable examples after {limit} draws "
                    f"({stats['too_long']} too long, {stats['in_train']} already in train); the "
                    "question space is too small for this request -- lower the count, raise "
                    "the entropy/difficulty, or raise max_question_len/max_answer_len"
                )
            problem = sampler()
            question, answer = str(problem.question), str(problem.answer)
            if len(question) > spec.max_question_len or len(answer) > spec.max_answer_len:
                stats["too_long"] += 1
                continue
            if forbidden is not None and question in forbidden:
                stats["in_train"] += 1
                continue
            made += 1
            yield question, answer

    return run(), stats


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("mathematics_dataset", "sympy", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _write_all(spec: DataSpec, directory: Path, progress: bool) -> None:
    """Generate every split of ``spec`` into ``directory`` (which exists and is empty)."""
    import numpy as np
    from tqdm.auto import tqdm

    samplers = _samplers(spec)
    counts_wanted = {
        "train": spec.n_train,
        "valid": spec.n_valid,
        "interpolate": spec.n_interpolate,
        "extrapolate": spec.n_extrapolate,
    }
    total = sum(counts_wanted[s] * len(samplers[s]) for s in SPLITS)
    counts: dict[str, dict[str, int]] = {}
    dropped: dict[str, dict[str, dict[str, int]]] = {}
    train_questions: set[str] = set()
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with tqdm(total=total, desc="ntl data", unit="ex", disable=not progress) as bar:
            for split in SPLITS:
                counts[split], dropped[split] = {}, {}
                forbidden = None if split == "train" else train_questions
                with (directory / f"{split}.jsonl").open("w", encoding="utf-8") as f:
                    for module, sampler in samplers[split].items():
                        bar.set_postfix_str(f"{split}/{module}", refresh=False)
                        pairs, stats = _draw(
                            sampler,
                            counts_wanted[split],
                            stream=_stream_seed(spec.seed, split, module),
                            forbidden=forbidden,
                            spec=spec,
                            label=f"{split}/{module}",
                        )
                        n = _write_records(
                            f,
                            module,
                            split,
                            pairs,
                            bar,
                            train_questions if split == "train" else None,
                        )
                        counts[split][module] = n
                        dropped[split][module] = stats
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    manifest = {
        "format": DATA_FORMAT,
        "hash": spec.hash(),
        "key": spec.key(),
        "spec": json.loads(json.dumps(dataclasses.asdict(spec))),
        "extrapolate_modules": list(spec.resolved_extrapolate_modules),
        "counts": counts,
        "dropped": dropped,
        "entropy": split_entropies(spec),
        "versions": _versions(),
    }
    # spec.json last: its presence (with the matching key) marks the directory complete.
    (directory / "spec.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def _write_records(
    f: IO[str],
    module: str,
    split: str,
    pairs: Iterable[tuple[str, str]],
    bar: Any,
    collect: set[str] | None,
) -> int:
    n = 0
    for question, answer in pairs:
        record = {"module": module, "question": question, "answer": answer, "split": split}
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if collect is not None:
            collect.add(question)
        n += 1
        bar.update(1)
    return n


def generate(
    spec: DataSpec, out_dir: str | os.PathLike[str] = "data", progress: bool = False
) -> dict[str, Path]:
    """Generate (or reuse) the data of ``spec`` under ``<out_dir>/<spec.hash()>/``.

    Writes ``train.jsonl``, ``valid.jsonl``, ``interpolate.jsonl``, ``extrapolate.jsonl`` (a
    split with count 0, or without modules, is an empty file) and ``spec.json`` (see
    :func:`load_manifest`). When that directory already holds complete data for ``spec``
    nothing is generated. Work happens in a temporary sibling directory renamed into place at
    the end, so an interrupted run never leaves a directory that looks complete.

    Args:
        spec: what to generate.
        out_dir: parent directory of the cache directories (created if missing).
        progress: show a tqdm progress bar (examples).

    Returns:
        ``{split: path of its jsonl file}`` for the four :data:`SPLITS`.
    """
    from ntl.lab.data.cache import publish

    final = publish(cache_dir(spec, out_dir), lambda d: _is_complete(d, spec),
                    lambda d: _write_all(spec, d, progress))
    return _split_paths(final)


def summarize(paths: Mapping[str, Path]) -> dict[str, dict[str, int]]:
    """``{split: {module: count}}`` of generated data (read from its ``spec.json``)."""
    directory = next(iter(paths.values())).parent
    return load_manifest(directory)["counts"]
