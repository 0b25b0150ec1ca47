"""Tests of the offline math data stage (ntl.lab.data): compat shim, splits, determinism, cache, CLI.

Counts are tiny so the whole file runs in a few seconds on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntl.lab.data import _compat
from ntl.lab.data import mathematics as m
from ntl.lab.data.mathematics import (
    EXTRAPOLATE_MODULES,
    TRAIN_MODULES,
    DataSpec,
    generate,
    load_split,
)

SMALL = dict(n_train=20, n_valid=5, n_interpolate=5, n_extrapolate=5)


def _read_all(paths: dict[str, Path]) -> dict[str, bytes]:
    return {split: path.read_bytes() for split, path in paths.items()}


def test_every_module_generates_on_installed_sympy_numpy(tmp_path: Path) -> None:
    """The compat shim makes all 13 training and 7 extrapolation modules work (2 examples each)."""
    spec = DataSpec(n_train=2, n_valid=2, n_interpolate=2, n_extrapolate=2, seed=0)
    assert spec.resolved_extrapolate_modules == EXTRAPOLATE_MODULES
    paths = generate(spec, out_dir=tmp_path)
    assert set(paths) == {"train", "valid", "interpolate", "extrapolate"}
    for split, modules in [
        ("train", TRAIN_MODULES),
        ("valid", TRAIN_MODULES),
        ("interpolate", TRAIN_MODULES),
        ("extrapolate", EXTRAPOLATE_MODULES),
    ]:
        records = load_split(paths[split])
        assert [r["module"] for r in records] == [mod for mod in modules for _ in range(2)]
        for r in records:
            assert list(r) == ["module", "question", "answer", "split"]
            assert r["split"] == split
            assert 0 < len(r["question"]) <= 160 and 0 < len(r["answer"]) <= 30
            assert "np." not in r["question"] + r["answer"]  # no numpy-2 scalar reprs leaked
    counts = m.load_manifest(paths["train"].parent)["counts"]
    assert counts["extrapolate"] == {mod: 2 for mod in EXTRAPOLATE_MODULES}


def test_compat_shim_patches_source_and_checks_counts() -> None:
    src = "x = np.empty(3, dtype=np.object)\ncoeffs.itemset(index, value)\n"
    name = "mathematics_dataset.sample.polynomials"
    with pytest.raises(RuntimeError, match="np.object"):  # 1 match where 3 are expected
        _compat.patch_source(name, src)
    assert _compat.patch_source("some.other.module", src) == src
    _compat.install()
    import mathematics_dataset.sample.polynomials as poly

    arr = poly.expand_coefficients(np.array([3, 0, -2]), entropy=4.0)
    assert arr.dtype == object and all(isinstance(c, list) for c in arr)
    x, y = poly.diophantine_solve_linear_2d(c=5, a=2, b=3, t=4)
    assert 2 * x + 3 * y == 5


def test_composition_registry_is_complete_and_canonical() -> None:
    """Composed modules draw sub-problems from a registry filled at import; it must hold every
    group's samplers in fresh-import order whatever was imported or reordered before."""
    _compat.import_generator()
    from mathematics_dataset.util import composition

    registry = composition._FILTERS_AND_SAMPLERS
    canonical = list(registry)
    registry.reverse()
    _compat.import_generator()
    assert registry == canonical
    names = [(fn.__module__.rsplit(".", 1)[1], fn.__name__) for _, fn in registry]
    assert names == [
        ("algebra", "solve_linear_1d"),
        ("algebra", "solve_linear_2d"),
        ("arithmetic", "add_or_sub"),
        ("arithmetic", "mixed"),
        ("calculus", "differentiate"),
        ("polynomials", "evaluate"),
        ("polynomials", "add"),
        ("polynomials", "collect"),
    ]


def test_entropy_fn_matches_generator() -> None:
    _compat.install()
    from mathematics_dataset.generate import _make_entropy_fn

    for level, num_levels in m.DIFFICULTIES.values():
        for range_ in [(3, 10), (4, 16)]:
            ours = m.make_entropy_fn(level, num_levels)(range_)
            assert ours == _make_entropy_fn(level, num_levels)(range_)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    modules = ("arithmetic__add_or_sub", "numbers__round_number_composed")
    spec = DataSpec(modules=modules, seed=3, **SMALL)
    a = _read_all(generate(spec, out_dir=tmp_path / "a"))
    b = _read_all(generate(spec, out_dir=tmp_path / "b"))
    assert a == b
    c = _read_all(generate(DataSpec(modules=modules, seed=4, **SMALL), out_dir=tmp_path / "c"))
    assert all(a[split] != c[split] for split in a)
    # a module's data does not depend on which other modules are requested
    alone = DataSpec(modules=("arithmetic__add_or_sub",), seed=3, **SMALL)
    alone_train = load_split(generate(alone, out_dir=tmp_path / "d")["train"])
    both_train = [json.loads(line) for line in a["train"].decode().splitlines()]
    assert alone_train == [r for r in both_train if r["module"] == "arithmetic__add_or_sub"]


def test_deterministic_across_processes(tmp_path: Path) -> None:
    """Byte-identical in a fresh process with another string-hash seed (composed modules pick
    variable letters from a set; the shim makes that order-independent)."""
    spec = DataSpec(
        modules=("algebra__linear_1d_composed",),
        seed=0,
        n_train=30,
        n_valid=0,
        n_interpolate=0,
        n_extrapolate=0,
    )
    here = generate(spec, out_dir=tmp_path / "here")["train"].read_bytes()
    code = (
        "import sys; from ntl.lab.data.mathematics import DataSpec, generate; "
        "spec = DataSpec(modules=('algebra__linear_1d_composed',), seed=0, n_train=30, "
        "n_valid=0, n_interpolate=0, n_extrapolate=0); "
        "print(generate(spec, out_dir=sys.argv[1])['train'])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "there")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()).read_bytes() == here


def test_no_question_shared_between_train_and_test_splits(tmp_path: Path) -> None:
    # A tiny entropy range makes train and valid collide often, so de-duplication must act.
    spec = DataSpec(
        modules=("arithmetic__add_or_sub", "numbers__place_value"),
        entropy=(1.0, 1.5),
        n_train=200,
        n_valid=30,
        n_interpolate=30,
        n_extrapolate=30,
        seed=0,
    )
    paths = generate(spec, out_dir=tmp_path)
    train = {r["question"] for r in load_split(paths["train"])}
    for split in ("valid", "interpolate", "extrapolate"):
        records = load_split(paths[split])
        assert records and not train & {r["question"] for r in records}, split
    dropped = m.load_manifest(paths["train"].parent)["dropped"]
    assert sum(d["in_train"] for d in dropped["valid"].values()) > 0


def test_draw_rejects_forbidden_and_too_long() -> None:
    _compat.install()
    from mathematics_dataset.example import Problem

    items = iter(["a", "b", "x" * 200, "c", "a", "d"] * 3)

    def sampler() -> Problem:
        return Problem(next(items), "1")

    spec = DataSpec(modules=("arithmetic__mul",))
    pairs, stats = m._draw(sampler, 3, stream=0, forbidden={"a"}, spec=spec, label="t")
    assert [q for q, _ in pairs] == ["b", "c", "d"]
    assert stats == {"too_long": 1, "in_train": 2}
    # a question space that cannot satisfy the request fails with a clear error
    pairs, _ = m._draw(
        lambda: Problem("a", "1"), 2, stream=0, forbidden={"a"}, spec=spec, label="valid/arithmetic__mul"
    )
    with pytest.raises(RuntimeError, match="valid/arithmetic__mul: only 0 of 2"):
        list(pairs)


def test_cache_reused_and_keyed_by_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DataSpec(modules=("arithmetic__add_or_sub",), **SMALL)
    paths = generate(spec, out_dir=tmp_path)
    assert paths["train"].parent == m.cache_dir(spec, tmp_path) == tmp_path / spec.hash()
    mtimes = {s: p.stat().st_mtime_ns for s, p in paths.items()}

    calls = []
    monkeypatch.setattr(m, "_write_all", lambda *a, **k: calls.append(a))
    # same request (module order and an explicit default extrapolate list do not matter)
    same = DataSpec(
        modules=["arithmetic__add_or_sub"], extrapolate_modules=("arithmetic__add_or_sub_big",), **SMALL
    )
    assert same.hash() == spec.hash()
    assert generate(same, out_dir=tmp_path) == paths
    assert calls == []
    assert {s: p.stat().st_mtime_ns for s, p in paths.items()} == mtimes
    # a different request is a different directory
    assert DataSpec(modules=("arithmetic__add_or_sub",), **{**SMALL, "n_valid": 6}).hash() != (spec.hash())
    manifest = m.load_manifest(paths["train"].parent)
    assert manifest["key"] == spec.key() and manifest["hash"] == spec.hash()


def test_interrupted_generation_leaves_no_complete_looking_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = DataSpec(modules=("arithmetic__add_or_sub",), **SMALL)
    real = m._write_records

    def crash(f, module, split, *args):  # type: ignore[no-untyped-def]
        if split == "interpolate":
            raise KeyboardInterrupt
        return real(f, module, split, *args)

    monkeypatch.setattr(m, "_write_records", crash)
    with pytest.raises(KeyboardInterrupt):
        generate(spec, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(m, "_write_records", real)
    # a half-written directory (e.g. copied by hand) is not trusted: it is regenerated
    broken = m.cache_dir(spec, tmp_path)
    broken.mkdir()
    (broken / "train.jsonl").write_text("")
    paths = generate(spec, out_dir=tmp_path)
    assert len(load_split(paths["train"])) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.hash()]


def test_generation_restores_global_rng_state(tmp_path: Path) -> None:
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    generate(DataSpec(modules=("arithmetic__mul",), **SMALL), out_dir=tmp_path)
    assert (random.random(), np.random.rand()) == expected


def test_extrapolate_mapping() -> None:
    assert m.extrapolate_modules_for(["arithmetic__add_or_sub"]) == ("arithmetic__add_or_sub_big",)
    assert m.extrapolate_modules_for(["algebra__linear_1d"]) == ()
    assert m.extrapolate_modules_for(TRAIN_MODULES) == EXTRAPOLATE_MODULES
    for train, extra in m.EXTRAPOLATE_OF.items():
        assert train in TRAIN_MODULES and set(extra) <= set(EXTRAPOLATE_MODULES)
    spec = DataSpec(modules=("numbers__round_number", "arithmetic__mul"))
    assert spec.resolved_extrapolate_modules == (
        "arithmetic__mul_big",
        "arithmetic__mul_div_multiple_longer",
        "numbers__round_number_big",
    )
    assert DataSpec(modules=("algebra__linear_1d",)).resolved_extrapolate_modules == ()
    explicit = DataSpec(modules=("algebra__linear_1d",), extrapolate_modules=("arithmetic__mul_big",))
    assert explicit.resolved_extrapolate_modules == ("arithmetic__mul_big",)


def test_spec_validation_names_bad_value_and_fix() -> None:
    with pytest.raises(ValueError, match="unknown module 'arithmetic__add';.*arithmetic__add_or_sub"):
        DataSpec(modules=("arithmetic__add",))
    with pytest.raises(ValueError, match="belongs in DataSpec.extrapolate_modules"):
        DataSpec(modules=("arithmetic__mul_big",))
    with pytest.raises(ValueError, match="listed twice"):
        DataSpec(modules=("arithmetic__mul", "arithmetic__mul"))
    with pytest.raises(ValueError, match="difficulty='easy'.*train-easy"):
        DataSpec(difficulty="easy")
    with pytest.raises(ValueError, match="n_train=-1"):
        DataSpec(n_train=-1)
    with pytest.raises(ValueError, match=r"entropy=\(6.0, 3.0\)"):
        DataSpec(entropy=(6.0, 3.0))
    assert DataSpec(modules="arithmetic__mul").modules == ("arithmetic__mul",)
    assert DataSpec(entropy=(3, 6)).entropy == (3.0, 6.0)
    assert m.parse_modules("paper") == TRAIN_MODULES
    assert m.parse_modules(" arithmetic__mul, numbers__place_value ") == (
        "arithmetic__mul",
        "numbers__place_value",
    )


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ntl.lab.data import cli

    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cli.add_arguments(parser)
    for action in parser._actions:
        assert action.help, action.dest
    args = parser.parse_args(
        [
            "--modules",
            "arithmetic__add_or_sub",
            "--n-train",
            "7",
            "--n-valid",
            "3",
            "--n-interpolate",
            "2",
            "--n-extrapolate",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "arithmetic__add_or_sub_big" in out
    assert "train" in out and " 7" in out
    bad = parser.parse_args(["--modules", "nope", "--out", str(tmp_path)])
    assert cli.run(bad) == 2
    assert "unknown module 'nope'" in capsys.readouterr().err


def test_test_splits_scale_with_the_training_entropy(tmp_path: Path) -> None:
    """The small profile trains at entropy (3, 6): interpolate sits where the generator's 8 sits
    in its (3, 10) (add_or_sub: 12 in (4, 16)), extrapolate beyond 6 by the same fraction as the
    generator's beyond 10 (16-20 beyond 16), *_longer one to three terms beyond the longest
    training expression at entropy 6."""
    from ntl.lab.config import SMALL

    spec = dataclasses.replace(SMALL.data_spec(), n_train=30, n_valid=5, n_interpolate=30, n_extrapolate=30)
    paths = m.generate(spec, tmp_path)
    entropy = m.load_manifest(paths["train"].parent)["entropy"]
    assert entropy["train"]["arithmetic__mul"] == {"entropy": [3.0, 6.0]}
    assert entropy["interpolate"]["arithmetic__add_or_sub"]["entropy"] == [5.0, 5.0]  # 3 + 8/12·3
    assert entropy["interpolate"]["arithmetic__mul"]["entropy"] == pytest.approx([3 + 15 / 7] * 2, abs=1e-4)
    assert entropy["extrapolate"]["arithmetic__add_or_sub_big"]["entropy"] == [6.0, 7.0]  # (16,20) of (4,16)
    mul_big = entropy["extrapolate"]["arithmetic__mul_big"]["entropy"]
    assert mul_big == pytest.approx([6.0, 6 + 6 / 7], abs=1e-4)
    # generator: longest training expression 3 + int(10/2) = 8 terms, extrapolate 9-11; ours at 6: 7-9
    assert entropy["extrapolate"]["arithmetic__add_sub_multiple_longer"]["terms"] == [7, 9]

    def digits(split: str, module: str) -> list[int]:
        return [sum(c.isdigit() for c in r["answer"]) for r in m.load_split(paths[split])
                if r["module"] == module]

    # the samplers really draw at those entropies: add_or_sub answers stay within ~6 digits
    # (the generator's own interpolate, entropy 12, gives ~10-digit answers)
    assert max(digits("interpolate", "arithmetic__add_or_sub")) <= 7
    assert max(digits("extrapolate", "arithmetic__add_or_sub_big")) <= 9
    # without an explicit range the generator's own splits are used unchanged
    own = m.split_entropies(DataSpec(modules=("arithmetic__add_or_sub", "arithmetic__mul")))
    assert own["interpolate"]["arithmetic__add_or_sub"]["entropy"] == [12.0, 12.0]
    assert own["interpolate"]["arithmetic__mul"]["entropy"] == [8.0, 8.0]
    assert own["extrapolate"]["arithmetic__mul_big"]["entropy"] == [10.0, 12.0]


def test_module_slice_is_disjoint_and_keeps_the_mixture() -> None:
    records = [{"module": mod, "question": f"{mod}{i}", "answer": "1"}
               for mod in ("a", "b") for i in range(10)]
    first, rest = m.module_slice(records, 0.0, 0.5), m.module_slice(records, 0.5, 1.0)
    assert [r["question"] for r in first] == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
    assert {r["question"] for r in first}.isdisjoint(r["question"] for r in rest)
    assert len(first) + len(rest) == len(records)
    with pytest.raises(ValueError, match="0 <= lo <= hi <= 1"):
        m.module_slice(records, 0.6, 0.5)
