"""The prepared GPU check: its CPU dry run end to end (the same stages and table as on a GPU),
and the rows it writes when a stage fails, times out or finds nothing to run."""

from __future__ import annotations

import json
import textwrap

import pytest

from ntl.lab.bench import external
from ntl.lab.bench import gpu_check as gc
from ntl.lab.bench.logits_free_step import LOGITS_FREE_ARMS
from ntl.lab.bench.loss_cases import FUSED_CASES, LINEAR_CASES

pytest.importorskip("transformers")


def _table(markdown: str) -> list[list[str]]:
    """The table's body rows, cells stripped."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_dry_run_writes_every_row(tmp_path):
    assert gc.main(["--dry-run", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "gpu_check.md").read_text()
    check = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = _table(markdown)
    assert len(rows) == len(check["rows"])
    by_case = {(r["stage"].split(",")[0], r["case"].removesuffix(" (ref)")): r
               for r in check["rows"]}
    (tests,) = [r for r in check["rows"] if r["stage"] == "tests"]
    assert tests["status"].startswith(("ok: ", "skipped: no test selected"))
    for case in (*FUSED_CASES, *external.LOGITS_CASES, *LINEAR_CASES, *external.LINEAR_CASES):
        assert ("loss bf16", case) in by_case, case
    for case in external.PACKAGES:  # Liger and Cut Cross-Entropy run on CUDA only
        assert by_case[("loss bf16", case)]["status"].startswith(
            ("skipped: not installed", "skipped: needs CUDA"))
    ours = ["ce", "fused-was", "fused-mse", "lin-ce", "lin-fused-was", "linear-was"]
    for case in ours:
        row = by_case[("loss bf16", case)]
        assert row["status"].startswith("ok") and row["time_ms"] > 0, row
        assert row["peak_bytes"] is None or row["peak_bytes"] >= 0
    assert by_case[("loss bf16", "fused-was")]["status"].startswith("ok (= plain-was")
    assert by_case[("loss bf16", "linear-was")]["status"].startswith("ok (= lin-fused-was")
    for arm in LOGITS_FREE_ARMS:
        row = by_case[("train step bf16", arm)]
        assert row["status"].startswith("ok") and row["loss"] > 0, row
    assert by_case[("loss bf16", "ce")]["time_ratio"] == 1.0
    assert "| loss bf16, logits (2, 64, 2000) | ce (ref) | ok |" in markdown


def test_without_cuda_every_stage_says_why(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main(["--out", str(tmp_path)]) == 2
    rows = _table((tmp_path / "gpu_check.md").read_text())
    assert [r[0] for r in rows] == list(gc.STAGES)
    assert all(r[2].startswith("skipped: torch sees no CUDA device") for r in rows)


def _write_tests(root, body: str):
    (root / "tests").mkdir()
    path = root / "tests" / "test_dev.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_test_stage_counts_the_cuda_cases(tmp_path):
    path = _write_tests(tmp_path, """
        import pytest

        @pytest.mark.parametrize("device", ["cpu", "cuda"])
        def test_ok(device):
            assert device

        @pytest.mark.parametrize("device", ["cpu", "cuda"])
        def test_bad(device):
            assert device == "cpu"
    """)
    row = gc.run_tests(tmp_path, [path], "cuda", 60, collect_only=False, slow=False)
    assert row.status == "failed: 1 passed, 1 failed, 0 errors, 0 skipped", row
    row = gc.run_tests(tmp_path, [path], "cuda", 60, collect_only=True, slow=False)
    assert row.status == "ok: 2 collected (dry run: not run)", row
    row = gc.run_tests(tmp_path, [path], "gpu0", 60, collect_only=True, slow=False)
    assert row.status.startswith("skipped: no test selected by -k 'gpu0'"), row


def test_test_stage_over_its_limit_is_a_skipped_row(tmp_path):
    path = _write_tests(tmp_path, """
        import time

        def test_cuda_slow():
            time.sleep(60)
    """)
    row = gc.run_tests(tmp_path, [path], "cuda", 3, collect_only=False, slow=False)
    assert row.status == "skipped: over its 3 s limit"


def test_a_crashing_worker_is_a_failed_row():
    rows, raw = gc._worker_stage("loss", "no-such-worker", {}, 60, lambda r: [])
    assert raw is None and len(rows) == 1
    assert rows[0].status.startswith("failed: worker: usage: python -m ntl.lab.bench")


def test_a_loss_that_differs_from_its_twin_fails():
    cases = {"lin-ce": {"loss": 11.0}, "cce": {"loss": 11.5}, "liger-flce": {"loss": 11.01}}
    assert gc._value_status("cce", cases, "bf16").startswith("failed: loss 11.5 differs")
    assert gc._value_status("liger-flce", cases, "bf16").startswith("ok (= lin-ce")
    assert gc._value_status("lin-ce", cases, "bf16") == "ok"
