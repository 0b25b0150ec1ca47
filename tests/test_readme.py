"""Every python block of README.md runs on its own, as a reader would run it.

Each block is written to a fresh folder outside the checkout and run there by a new Python
process, offline (``HF_HUB_OFFLINE=1``, an empty Hugging Face cache), with the installed
package, and with ``./tokenizer`` — a copy of one of the shared tokenizers — as its only input.
A ```` ```text ```` block after a python block (before the next block or heading) is the output
the README promises: its lines must appear in the output, in order (``...`` stands for any text).

A block that cannot run on every machine says so on its first line, ``# requires: cuda``; only
such blocks are skipped, and only where the requirement is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import ntl

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOKENIZERS = REPO.parent / "shared" / "tokenizers"
# The quick start must give the loss something to see with tokenizers that write several digits
# per token (t5-small: '▁42'; llama3: '42'); every other block runs with a causal-LM tokenizer.
QUICK_START_TOKENIZERS = ("t5-small", "llama3")
OTHER_BLOCKS_TOKENIZER = "llama2"
# What a `# requires: X` marker may name, and whether this machine has it.
REQUIREMENTS = {"cuda": torch.cuda.is_available}


@dataclass(frozen=True)
class Block:
    """One python block of a markdown file."""

    section: str  # the heading above it
    line: int  # 1-based line of its opening fence
    code: str
    expected: str | None  # the ```text block right after it, if any

    @property
    def requires(self) -> str | None:
        first = self.code.splitlines()[0] if self.code else ""
        match = re.fullmatch(r"#\s*requires:\s*(\S+)\s*", first)
        return match[1] if match else None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text``, each with its section and the ```text block after it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    section, i = "", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            section = line.lstrip("#").strip()
        if line.strip() == "```python":
            end = lines.index("```", i + 1)
            code = "\n".join(lines[i + 1:end]) + "\n"
            # Its output: a ```text block before the next fence or heading.
            after = end + 1
            while after < len(lines) and not lines[after].startswith(("```", "#")):
                after += 1
            expected = None
            if after < len(lines) and lines[after].strip() == "```text":
                out_end = lines.index("```", after + 1)
                expected = "\n".join(lines[after + 1:out_end])
            blocks.append(Block(section, i + 1, code, expected))
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
QUICK_START = [b for b in BLOCKS if b.section == "Quick start"]
OTHERS = [b for b in BLOCKS if b.section != "Quick start"]


def _id(block: Block) -> str:
    return re.sub(r"[^a-z0-9]+", "-", block.section.lower()).strip("-") + f"-line{block.line}"


def _env(home: Path) -> dict[str, str]:
    """This environment, offline, with an empty Hugging Face cache and no ntl settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "NTL_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(home))
    return env


def _outside_the_checkout(tmp_path: Path) -> Path:
    folder = tmp_path / "reader"
    folder.mkdir()
    assert REPO.resolve() not in folder.resolve().parents, f"{folder} is inside the checkout"
    return folder


def run_block(block: Block, tokenizer: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``block`` as ``python block.py`` in a fresh folder holding only ``./tokenizer``."""
    if block.requires is not None:
        if block.requires not in REQUIREMENTS:
            pytest.fail(f"README line {block.line}: unknown '# requires: {block.requires}'; "
                        f"known: {sorted(REQUIREMENTS)}")
        if not REQUIREMENTS[block.requires]():
            pytest.skip(f"README line {block.line} requires {block.requires}")
    folder = _outside_the_checkout(tmp_path)
    shutil.copytree(TOKENIZERS / tokenizer, folder / "tokenizer")
    (folder / "block.py").write_text(block.code, encoding="utf-8")
    # Deprecated calls in the README would teach readers what is going away.
    warnings = ["-W", "error::FutureWarning", "-W", "error::DeprecationWarning:__main__"]
    out = subprocess.run([sys.executable, *warnings, "block.py"], cwd=folder, env=_env(tmp_path / "hf"),
                         capture_output=True, text=True, timeout=900)  # a hang, not a slow machine
    assert out.returncode == 0, f"README line {block.line} failed with {tokenizer}:\n{out.stderr[-3000:]}"
    assert "NumberCoverageWarning" not in out.stderr, out.stderr  # the loss sees every digit
    return out


def assert_prints(expected: str, stdout: str) -> None:
    """Each line of ``expected`` matches a line of ``stdout``, in order; ``...`` is any text."""
    got = stdout.splitlines()
    position = 0
    for line in expected.splitlines():
        pattern = re.compile(".*".join(re.escape(part) for part in line.split("...")))
        while position < len(got) and not pattern.fullmatch(got[position]):
            position += 1
        assert position < len(got), f"expected a line {line!r} in the output:\n{stdout}"
        position += 1


@pytest.fixture(scope="module")
def same_ntl(tmp_path_factory) -> None:
    """The blocks import the ntl these tests import (the installed one), not another copy."""
    folder = tmp_path_factory.mktemp("which-ntl")
    out = subprocess.run([sys.executable, "-c", "import ntl; print(ntl.__file__)"], cwd=folder,
                         env=_env(folder / "hf"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == Path(ntl.__file__).resolve(), (
        f"outside the checkout python imports {out.stdout.strip()}, these tests {ntl.__file__}: "
        "install the checkout (pip install -e .) so the README is run against it")


def test_readme_has_one_quick_start_and_the_other_examples():
    assert len(QUICK_START) == 1, [b.line for b in QUICK_START]
    sections = {b.section for b in OTHERS}
    for name in ("Train with the Hugging Face `Trainer`", "Train with TRL's `SFTTrainer`",
                 "Your own training loop", "Logits-free training"):
        assert name in sections, sorted(sections)


@pytest.mark.parametrize("tokenizer", QUICK_START_TOKENIZERS)
def test_quick_start(tokenizer, tmp_path, same_ntl):
    """The quick start, as written, gives the loss something to see: NTL > 0 for a wrong digit,
    growing with the distance, while CE is the same for both wrong guesses."""
    block = QUICK_START[0]
    out = run_block(block, tokenizer, tmp_path)
    rows = re.findall(r"^(.*): ce (\S+)  ntl (\S+)$", out.stdout, flags=re.M)
    assert len(rows) == 3, out.stdout
    (_, ce_right, ntl_right), (_, ce_near, ntl_near), (_, ce_far, ntl_far) = rows
    assert float(ntl_right) == 0 and float(ce_right) == 0
    assert 0 < float(ntl_near) < float(ntl_far), out.stdout
    assert ce_near == ce_far and float(ce_near) > 0
    if tokenizer == "t5-small":  # the README shows t5-small's output
        assert out.stdout.strip() == block.expected.strip()
    else:
        assert_prints(re.sub(r"ce \d+\.\d+", "ce ...", block.expected), out.stdout)


@pytest.mark.parametrize("block", OTHERS, ids=_id)
def test_readme_block_runs_on_its_own(block, tmp_path, same_ntl):
    out = run_block(block, OTHER_BLOCKS_TOKENIZER, tmp_path)
    if block.expected is not None:
        assert_prints(block.expected, out.stdout)


def test_the_verdict_comes_first_and_links_its_evidence():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 320, f"README.md has {len(lines)} lines; keep it to a first ten minutes"
    heading = lines.index("## Does it help?")
    assert heading < 60
    verdict = "\n".join(lines[heading:]).split("\n## ")[0]
    assert "(docs/study.md)" in verdict
    text = "\n".join(lines)
    assert "make experiment" in text and "make test" in text


def test_readme_installs_the_current_version():
    wheels = re.findall(r"number_token_loss-([^-\s]+)-py3-none-any\.whl", README.read_text(encoding="utf-8"))
    assert wheels and set(wheels) == {ntl.__version__}, wheels


def _relative_links(text: str) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"src=\"([^\"]+)\"", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


def test_every_relative_link_of_the_docs_resolves():
    for doc in [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in _relative_links(doc.read_text(encoding="utf-8")):
            assert (doc.parent / target).exists(), f"{doc.name}: link to missing {target}"


def test_the_package_description_works_off_the_repository():
    """docs/pypi.md is the package's long description: no links into the repository, and its
    example is the README's quick start (so it is run above)."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^readme = \{file = "docs/pypi.md"', pyproject, flags=re.M)
    text = (REPO / "docs" / "pypi.md").read_text(encoding="utf-8")
    assert _relative_links(text) == []
    codes = [b.code for b in python_blocks(text)]
    assert codes and all(code in {b.code for b in BLOCKS} for code in codes)
