"""Make DeepMind's ``mathematics_dataset`` 1.0.1 import and run on current sympy and numpy.

The PyPI release (2019) breaks on sympy >= 1.6 and numpy >= 2, all in one file,
``mathematics_dataset/sample/polynomials.py``:

1. ``from sympy.solvers.diophantine import base_solution_linear`` -- sympy 1.6 turned
   ``diophantine`` into a package whose ``__init__`` no longer exports that function (it lives in
   ``sympy.solvers.diophantine.diophantine``).
2. ``np.object`` -- removed in numpy 1.24; it was only ever an alias of the builtin ``object``.
3. ``ndarray.itemset(index, value)`` -- removed in numpy 2; with a full index tuple (the only form
   the file uses) it is exactly ``array[index] = value``, also for object arrays holding lists.

It also has two sources of run-to-run randomness that no seed controls, in
``mathematics_dataset/util/composition.py`` (used by every ``*_composed`` module):

4. ``random.choice(list(allowed))`` over a ``set`` of variable letters -- the list order follows
   the per-process string hash (``PYTHONHASHSEED``); rewritten to ``sorted(allowed)``.
5. ``expand_entities`` puts entities in a ``set`` (ordered by memory address) before
   ``random.shuffle``; rewritten to an insertion-ordered de-duplicated list.

Both choose uniformly either way, so the distribution of problems is unchanged; only the
seeded sequence becomes reproducible across processes.

6. ``modules/numbers.py`` ``round_number`` calls ``random.randint(-10**k / 2, 10**k / 2)`` with
   floats: deprecated in Python 3.10, a ``TypeError`` from 3.12. Rewritten to ``//`` (the same
   integers, so the same draws).

Finally, composed modules draw their sub-problems from a registry that every module group fills
at import time (``composition._FILTERS_AND_SAMPLERS``), in import order. :func:`import_generator`
imports all groups the way ``generate.py`` does (``modules.modules``) and puts the registry in that
canonical order, so composed questions neither miss sub-problem kinds nor depend on what the
process imported before.

Site-packages is never edited (CI installs the package fresh). Instead :func:`install` puts an
import hook on ``sys.meta_path`` that loads *those modules* from their original files,
rewrites the constructs above in the source text, and compiles them under the original filenames
(so tracebacks still point at the real files). Nothing global is changed: ``numpy`` and ``sympy``
are not monkeypatched, and other modules import normally. Each rewrite must match the expected
number of times or not at all (a future, fixed release); anything else raises, naming the
rewrite, so a changed upstream file is noticed instead of being silently half-patched.

Call :func:`install` before importing anything from ``mathematics_dataset`` (``ntl.lab.data`` does).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import re
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Module whose source is rewritten -> list of (description, regex, replacement, expected count).
PATCHES: dict[str, list[tuple[str, str, str, int]]] = {
    "mathematics_dataset.sample.polynomials": [
        (
            "sympy>=1.6 moved base_solution_linear",
            r"^from sympy\.solvers\.diophantine import base_solution_linear "
            r"as diophantine_solve_linear_2d$",
            "from ntl.lab.data._compat import base_solution_linear as diophantine_solve_linear_2d",
            1,
        ),
        ("numpy>=1.24 removed np.object", r"\bnp\.object\b", "object", 3),
        (
            "numpy>=2 removed ndarray.itemset",
            r"\b(\w+)\.itemset\((\w+), (\w+)\)",
            r"\1[\2] = \3",
            2,
        ),
    ],
    "mathematics_dataset.util.composition": [
        (
            "deterministic symbol choice (set of str iterates in PYTHONHASHSEED order)",
            r"random\.choice\(list\(allowed\)\)",
            "random.choice(sorted(allowed))",
            1,
        ),
        (
            "deterministic entity order (set of objects iterates in memory-address order) 1/3",
            r"entities = set\(context\.child_entities\)",
            "entities = list(context.child_entities)",
            1,
        ),
        (
            "deterministic entity order 2/3",
            r"entities\.add\(maybe_entity\)",
            "entities.append(maybe_entity)",
            1,
        ),
        (
            "deterministic entity order 3/3 (de-duplicate, keep first occurrence)",
            r"entities = list\(entities\)",
            "entities = list(dict.fromkeys(entities))",
            1,
        ),
    ],
    "mathematics_dataset.modules.numbers": [
        (
            "python>=3.12 random.randint rejects floats (exact halves of 10**k)",
            r"remainder_range_(lower|upper) = (-?)remainder_divisor / 2",
            r"remainder_range_\1 = \2remainder_divisor // 2",
            2,
        ),
    ],
}


def base_solution_linear(c: Any, a: Any, b: Any, t: Any = None) -> tuple[Any, Any]:
    """sympy's ``base_solution_linear`` (one solution ``(x, y)`` of ``a*x + b*y = c``, shifted
    by parameter ``t``) from wherever the installed sympy keeps it."""
    try:  # sympy >= 1.6: a submodule shadowed by the `diophantine` function in the package.
        module = importlib.import_module("sympy.solvers.diophantine.diophantine")
    except ImportError:  # sympy < 1.6: a plain module.
        module = importlib.import_module("sympy.solvers.diophantine")
    return module.base_solution_linear(c, a, b, t)


def patch_source(fullname: str, source: str) -> str:
    """Apply the rewrites in :data:`PATCHES` for module ``fullname`` to its source text.

    Raises ``RuntimeError`` naming the rewrite when it matches neither the expected number of
    times nor zero times (zero means the upstream file no longer has the construct).
    """
    for description, pattern, replacement, expected in PATCHES.get(fullname, []):
        source, count = re.subn(pattern, replacement, source, flags=re.MULTILINE)
        if count not in (0, expected):
            raise RuntimeError(
                f"ntl.lab.data._compat: rewrite {description!r} matched {count} times in {fullname}, "
                f"expected {expected} (or 0 if already fixed upstream); the installed "
                "mathematics_dataset differs from 1.0.1 -- pin mathematics_dataset==1.0.1 or "
                "update PATCHES in src/ntl/lab/data/_compat.py."
            )
    return source


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Loads a module from its source file with :func:`patch_source` applied (no bytecode
    cache is read or written, so an unpatched ``.pyc`` is never used)."""

    def get_code(self, fullname: str) -> Any:
        source = self.get_data(self.path).decode("utf-8")
        return compile(patch_source(fullname, source), self.path, "exec", dont_inherit=True)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds the modules named in :data:`PATCHES` and gives them a :class:`_PatchingLoader`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return None
        spec.loader = _PatchingLoader(fullname, spec.origin)
        return spec


_FINDER = _PatchingFinder()


def install() -> None:
    """Put the patching import hook first on ``sys.meta_path`` (idempotent).

    Must run before ``mathematics_dataset.sample.polynomials`` is first imported; a copy
    already imported unpatched (possible only where it imports fine) is left as it is.
    """
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _canonical_registry_order(composition: ModuleType, modules: ModuleType) -> None:
    """Sort ``composition._FILTERS_AND_SAMPLERS`` in place into the order a fresh
    ``import mathematics_dataset.modules.modules`` produces (module groups in ``modules.all_``
    order, then source order)."""
    group_order = [group.__name__ for group in modules.all_.values()]

    def key(entry: tuple[Any, Any]) -> tuple[int, int]:
        fn = entry[1]
        module = getattr(fn, "__module__", "")
        rank = group_order.index(module) if module in group_order else len(group_order)
        return rank, getattr(getattr(fn, "__code__", None), "co_firstlineno", 0)

    composition._FILTERS_AND_SAMPLERS.sort(key=key)


def import_generator() -> dict[str, ModuleType]:
    """Install the hook, import every module group of the generator (as its ``generate.py``
    does, which fills the composition registry) and return the groups we use.

    Returns ``{"algebra": module, "arithmetic": module, "numbers": module}``; each module has
    ``train(entropy_fn)``, ``test()`` and ``test_extra()`` returning ``{name: sampler}``.
    """
    install()
    from mathematics_dataset.modules import modules
    from mathematics_dataset.util import composition

    _canonical_registry_order(composition, modules)
    return {name: modules.all_[name] for name in ("algebra", "arithmetic", "numbers")}
