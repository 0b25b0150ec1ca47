"""`ntl bench --quick` runs end to end and reports every case as a ratio to CE."""

from __future__ import annotations

import json

import pytest

from ntl.cli import main
from ntl.lab.bench.logits_free_step import LOGITS_FREE_ARMS
from ntl.lab.bench.loss_cases import FUSED_CASES, LINEAR_CASES
from ntl.lab.bench.tables import to_markdown

pytest.importorskip("ntloss")
pytest.importorskip("transformers")


def test_bench_quick_writes_ratios(tmp_path):
    assert main(["bench", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["meta"]["quick"] and report["results"]
    for res in report["results"]:
        cases = res["cases"]
        assert set(FUSED_CASES) | set(LINEAR_CASES) <= set(cases)
        assert cases["ce"]["time_ratio"] == 1.0 and cases["lin-ce"]["time_ratio"] == 1.0
        for name, c in cases.items():
            assert c["time_s"] > 0 and c["time_ratio"] > 0, name
            assert c["peak_bytes"] is None or c["peak_bytes"] >= 0, name
        assert cases["linear-was"]["time_vs_lin-fused-was"] > 0
    arms = report["train_step"]["arms"]
    assert arms["ce"]["time_ratio"] == 1.0 and arms["ce+ntl-was fused"]["time_ratio"] > 0
    lf = report["logits_free_step"]["arms"]
    assert set(lf) == set(LOGITS_FREE_ARMS) and lf["ce (HF default)"]["time_ratio"] == 1.0
    ce, mat, free = (lf[name]["loss"] for name in LOGITS_FREE_ARMS)
    assert free["total"] == pytest.approx(mat["total"], rel=1e-6)
    assert free["ce"] == pytest.approx(ce["ce"], rel=1e-6) and free["ntl"] > 0
    markdown = (tmp_path / "bench.md").read_text()
    assert markdown == to_markdown(report) and "| fused-was |" in markdown
