"""The wheel, installed into a fresh virtual environment, works outside the checkout.

The wheel is built from a copy of the project, installed with ``--no-deps`` into a new venv, and
the venv sees the project's own torch (and, for the ``[hf]`` stage, transformers and tokenizers)
through a folder of links to exactly those distributions and their dependencies: nothing is
downloaded, and nothing else of the project's environment leaks in.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO.parent / "shared" / "tokenizers"


def _closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``names`` need at run time (markers evaluated, no extras)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not needed on this platform (e.g. CUDA wheels of a CPU torch)
        found[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def _link_dir(folder: Path, names: list[str], skip: set[str] = frozenset()) -> Path:
    """A folder of links to the files of ``names`` and their dependencies (an importable path)."""
    folder.mkdir()
    for key, dist in _closure(names).items():
        if key in skip:
            continue
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def _readme_block(needle: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    matching = [b for b in blocks if needle in b]
    assert matching, f"no python block with {needle!r} in README.md"
    return matching[0]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(python, bin folder, torch-only path, hf path, a working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "project"
    src.mkdir()
    (src / "docs").mkdir()
    for name in ("pyproject.toml", "README.md", "docs/pypi.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # see only what we install
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(root / "dist"), str(src)],
        capture_output=True, text=True, env=clean,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((root / "dist").glob("number_token_loss-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, env=clean)
    python = root / "venv" / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--ignore-installed", "-q", str(wheel)],
        capture_output=True, text=True, env=clean,
    )
    assert install.returncode == 0, install.stderr
    core = _link_dir(root / "torch-only", ["torch", "numpy"])
    hf = _link_dir(root / "hf", ["transformers", "tokenizers", "sentencepiece", "protobuf"],
                   skip=set(_closure(["torch", "numpy"])))
    outside = root / "elsewhere"
    outside.mkdir()
    return python, python.parent, core, hf, outside


def _run(venv, args: list[str], *paths: Path) -> subprocess.CompletedProcess:
    python, bin_dir, *_, outside = venv
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NTL_"))}
    env.update(PYTHONPATH=os.pathsep.join(map(str, paths)), HF_HUB_OFFLINE="1",
               PATH=f"{bin_dir}{os.pathsep}{env['PATH']}")
    return subprocess.run(args, cwd=outside, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_core_install_needs_only_torch(venv):
    python, bin_dir, core, _, outside = venv
    code = """
import importlib.metadata as md, sys, torch, ntl
from ntl import CrossEntropyWithNTL, NumberVocab
assert ntl.__file__.startswith(sys.prefix), ntl.__file__
assert md.version("number-token-loss") == ntl.__version__, md.version("number-token-loss")
description = md.metadata("number-token-loss").get_payload()
assert description.startswith("# number-token-loss") and "](" not in description, description[:200]
requires = md.requires("number-token-loss")
assert any(r.startswith("transformers") and 'extra == "hf"' in r for r in requires), requires
vocab = NumberVocab.from_vocab({str(d): d for d in range(10)} | {"+": 10, "=": 11})
logits = torch.randn(2, 3, 12, requires_grad=True)
out = CrossEntropyWithNTL(vocab, ntl="was", lam=0.3)(logits, torch.tensor([[1, 10, 4], [-100, 11, 9]]))
out.total.backward()
try:
    NumberVocab.from_tokenizer("./tokenizer")
except ImportError as err:
    print("MISSING:", err)
"""
    out = _run(venv, [str(python), "-c", code], core)
    assert out.returncode == 0, out.stderr
    missing = out.stdout.strip().splitlines()[-1]
    assert "pip install 'number-token-loss[hf]'" in missing and "transformers" in missing
    # The console script: a missing extra is one line and exit status 2; explore needs torch only.
    cli = _run(venv, [str(bin_dir / "ntl"), "vocab", "--tokenizer", "./tokenizer"], core)
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert "number-token-loss[hf]" in cli.stderr and "Traceback" not in cli.stderr
    bench = _run(venv, [str(bin_dir / "ntl"), "bench", "--quick"], core)
    assert bench.returncode == 2 and len(bench.stderr.strip().splitlines()) == 1, bench.stderr
    assert "number-token-loss[lab]" in bench.stderr
    page = _run(venv, [str(bin_dir / "ntl"), "explore", "--out", "page.html"], core)
    assert page.returncode == 0, page.stderr
    assert "const NTL" in (outside / "page.html").read_text(encoding="utf-8")


def test_readme_library_example_runs_outside_the_checkout(venv):
    python, _, core, hf, outside = venv
    if not (outside / "tokenizer").exists():
        shutil.copytree(TOKENIZERS / "llama2", outside / "tokenizer")  # "a local tokenizer folder"
    (outside / "example.py").write_text(_readme_block("loss_fn = CrossEntropyWithNTL"))
    out = _run(venv, [str(python), "-W", "error::UserWarning", "example.py"], core, hf)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^12 \+ 30 = 49: ce \S+  ntl 1\.17$", out.stdout, flags=re.M), out.stdout
