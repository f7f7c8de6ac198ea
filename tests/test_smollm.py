"""The embedded real model: the Australia incident is a real failure, replayed faithfully."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from forensics.failure import FailureSpec
from forensics.models import LoadedModel
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer, ReplayOptions

pytestmark = pytest.mark.slow


def test_australia_incident_records_replays_and_responds(smol: LoadedModel, tmp_path: Path) -> None:
    spec = FailureSpec.expected(" Canberra", smol.tokenizer)
    run = record_greedy(smol, "The capital of Australia is", tmp_path / "australia", spec, max_new_tokens=4, seed=0)
    bundle, text, failed = run.bundle, run.text, run.failed
    assert failed and text.startswith(" Sydney")
    assert bundle.kind == "incident" and bundle.outputs["decision_step"] == 0
    assert len(bundle.modules) == 90 and bundle.model["sha256"] == smol.info.sha256

    rp = Replayer(bundle, loaded=smol)
    fid = rp.fidelity()
    assert fid.faithful and fid.max_logit_diff <= 1e-4 and fid.max_activation_diff <= 1e-4
    base = rp.run(())
    assert smol.tokenizer.decode([base.argmax_id]) == " Sydney" and base.metric < 0
    hit = rp.run((Intervention("model.layers.10", "zero", "last"),))
    assert hit.hook_fires == (1,) and abs(hit.metric - base.metric) > 0.05


def test_prefix_reuse_on_smollm_equals_full_replay(smol: LoadedModel, tmp_path: Path) -> None:
    spec = FailureSpec.expected(" Canberra", smol.tokenizer)
    bundle = record_greedy(smol, "The capital of Australia is", tmp_path / "a", spec, max_new_tokens=2).bundle
    fast = Replayer(bundle, loaded=smol, options=ReplayOptions(suffix_reuse=False, batch_size=2))  # prefix reuse alone; chunks of 2
    full = Replayer(bundle, loaded=smol, options=ReplayOptions(prefix_reuse=False, suffix_reuse=False, batch_size=2))
    fast.fidelity()
    sets = [(), *[(Intervention(f"model.layers.{i}", "zero", "last"),) for i in (0, 10, 20, 29)],
            (Intervention("model.layers.25.mlp", "scale", "all", factor=0.0),)]
    for s in sets:  # same batch shape: prefix reuse is exact to 1e-4
        assert torch.allclose(fast.logits([s]), full.logits([s]), atol=1e-4)
    full.layers_run = fast.layers_run = 0
    # batched: rows are grouped differently, and fp32 BLAS results depend on the batch shape (~3e-5 relative)
    assert torch.allclose(fast.logits(sets), full.logits(sets), atol=1e-3, rtol=1e-4)
    assert fast.layers_run < full.layers_run / 2
