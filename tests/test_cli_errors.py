"""Every user error of the command line is one line on stderr naming the bad value and the fix,
with exit status 2 and no traceback; ``--debug`` brings the traceback back."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ntl.cli import main
from tests.conftest import TOKENIZERS

LLAMA2 = str(TOKENIZERS / "llama2")
REPO = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def test_missing_tokenizer_path(capsys):
    line = _one_line_error(capsys, ["vocab", "--tokenizer", "/nonexistent/tok"])
    assert "'/nonexistent/tok'" in line and "no such file or folder" in line
    assert "tokenizer folder" in line and "README.md" not in line


def test_file_that_is_not_a_tokenizer(capsys):
    line = _one_line_error(capsys, ["vocab", "--tokenizer", "/etc/hostname"])
    assert "'/etc/hostname' is not a tokenizer file" in line and "tokenizer.json" in line


def test_folder_without_a_tokenizer(capsys, tmp_path):
    (tmp_path / "README.md").write_text("not a tokenizer")
    line = _one_line_error(capsys, ["vocab", "--tokenizer", str(tmp_path)])
    assert str(tmp_path) in line and "holds no tokenizer" in line and "You need" not in line
    # A tokenizer config without its vocabulary (transformers would build an empty tokenizer).
    config = (TOKENIZERS / "t5-small" / "tokenizer_config.json").read_text()
    (tmp_path / "tokenizer_config.json").write_text(config)
    line = _one_line_error(capsys, ["vocab", "--tokenizer", str(tmp_path)])
    assert "no vocabulary" in line and "tokenizer.json" in line


def test_hub_name_not_in_the_cache(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _one_line_error(capsys, ["vocab", "--tokenizer", "no-such-org/no-such-tokenizer"])
    assert "'no-such-org/no-such-tokenizer'" in line and "never downloads" in line


def test_vocab_size_smaller_than_the_tokenizer(capsys):
    line = _one_line_error(capsys, ["vocab", "--tokenizer", LLAMA2, "--vocab-size", "100"])
    assert line.startswith("ntl vocab: error: --vocab-size 100:") and ">= 32000" in line


def test_vocab_size_not_positive_or_not_a_number(capsys):
    line = _one_line_error(capsys, ["vocab", "--tokenizer", LLAMA2, "--vocab-size", "0"])
    assert "--vocab-size 0" in line
    with pytest.raises(SystemExit) as err:
        main(["vocab", "--vocab-size", "abc"])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'abc'" in lines[0] and "--help" in lines[0]


def test_no_tokenizer_given(capsys):
    line = _one_line_error(capsys, ["vocab"])
    assert "--tokenizer" in line


def test_explore_into_a_missing_folder(capsys, tmp_path):
    line = _one_line_error(capsys, ["explore", "--out", str(tmp_path / "missing" / "page.html")])
    assert "does not exist" in line and "--out" in line


def test_debug_shows_the_traceback():
    from ntl.errors import UsageError

    with pytest.raises(UsageError, match="/nonexistent/tok"):
        main(["vocab", "--tokenizer", "/nonexistent/tok", "--debug"])


def test_the_real_process_exits_2_with_one_line():
    out = subprocess.run([sys.executable, "-m", "ntl.cli", "vocab", "--tokenizer", "/nonexistent/tok"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_bench_bad_shape(capsys):
    line = _one_line_error(capsys, ["bench", "--quick", "--no-progress", "--shapes", "huge"])
    assert "'huge'" in line and "B,T,V" in line


def _ntl_without(blocked: list[str], argv: list[str], cwd) -> subprocess.CompletedProcess:
    """``ntl ARGV`` in a fresh process where the modules ``blocked`` cannot be imported, as if
    they were not installed (``sys.modules[name] = None``)."""
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            f"from ntl.cli import main\nsys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_experiment_without_the_lab_extra_touches_nothing(tmp_path):
    out = _ntl_without(["mathematics_dataset", "rich"], ["experiment", "--profile", "quick"], tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "needs mathematics_dataset, rich, which are not installed" in lines[0]
    assert "pip install 'number-token-loss[lab]'" in lines[0]
    assert out.stdout == ""  # not even the note on seeds
    assert list(tmp_path.iterdir()) == []  # no runs/ or data/ folder


def test_every_module_of_the_lab_extra_is_checked():
    """The extras check lists every requirement of pyproject's [lab] extra (and of [hf] in it)."""
    import ast

    from ntl._optional import MODULES_OF_EXTRA

    # The [project.optional-dependencies] table: `name = [...]` lines (tomllib needs Python 3.11).
    table = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = {m[1]: ast.literal_eval(m[2]) for m in re.finditer(r"^(\w+) = (\[.*?\])$", table, re.S | re.M)}
    assert {"hf", "trl", "lab"} <= set(extras), extras
    # distribution -> module, where they differ
    module_of = {"protobuf": "google.protobuf", "scikit-learn": "sklearn"}

    def requirements(extra: str) -> set[str]:
        names = set()
        for req in extras[extra]:
            name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0]
            if name == "number-token-loss":
                names |= requirements(req.split("[")[1].split("]")[0])
            else:
                names.add(module_of.get(name, name.replace("-", "_")))
        return names

    for extra in ("hf", "lab", "trl"):
        assert requirements(extra) <= set(MODULES_OF_EXTRA[extra]), extra
