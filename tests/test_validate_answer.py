"""`validate-fix` judges the whole regenerated continuation, not only the decision token (issue 13, item 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from forensics.cli import main
from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer

PROMPT = "The capital of France is"
FIX = Intervention("model.layers.0", "zero", "last")


def report_for(loaded: LoadedModel, tmp_path: Path, spec: FailureSpec) -> tuple[Path, str]:
    bundle = record_greedy(loaded, PROMPT, tmp_path / "inc", spec, max_new_tokens=4).bundle
    assert bundle.outputs["is_failure"]
    report = tmp_path / "rca.json"
    fix = {"interventions": [FIX.to_dict()], "validated": True}
    report.write_text(
        json.dumps({"schema": "model-forensics/rca@2", "bundle_path": str(tmp_path / "inc"), "fix_set": fix})
    )
    rp = Replayer(bundle, loaded=loaded)
    assert rp.run((FIX,)).fixed  # the decision token is fixed in both cases below
    return report, str(loaded.tokenizer.decode(rp.generate((FIX,), 4)))


def test_forbidden_text_gone_from_the_whole_answer(
    tiny_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tiny_llama.tokenizer.decode(
        record_greedy(tiny_llama, PROMPT, tmp_path / "g", max_new_tokens=1).bundle.outputs["generated_ids"]
    )
    report, answer = report_for(tiny_llama, tmp_path, FailureSpec.forbidden(first))
    assert first not in answer
    assert main(["validate-fix", str(report)]) == 0
    out = capsys.readouterr().out
    assert "STILL FIXES" in out and "decision token: fixed" in out
    assert "no longer appears anywhere in the regenerated answer" in out


def test_forbidden_text_later_in_the_answer_does_not_fix(
    tiny_llama: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tiny_llama.tokenizer.decode(
        record_greedy(tiny_llama, PROMPT, tmp_path / "g", max_new_tokens=1).bundle.outputs["generated_ids"]
    )
    _, answer = report_for(tiny_llama, tmp_path / "probe", FailureSpec.forbidden(first))
    later = answer[-1]  # a character the fixed answer produces after the decision token
    assert later not in first
    pattern = f"{re.escape(first)}|{re.escape(later)}"
    report, _ = report_for(tiny_llama, tmp_path, FailureSpec.forbidden(pattern, regex=True))
    assert main(["validate-fix", str(report)]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIX" in out and "decision token: fixed" in out and "still appears" in out
