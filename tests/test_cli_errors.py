"""Every user error of the command line is one line on stderr naming the bad value and the fix,
with exit status 2 and no traceback; ``--debug`` brings the traceback back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ntl.cli import main
from tests.conftest import TOKENIZERS

LLAMA2 = str(TOKENIZERS / "llama2")


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
