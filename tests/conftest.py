"""Shared fixtures: tiny seeded models through the real registry, the embedded model, hook hygiene."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from forensics.models import LoadedModel, build_tiny_model, resolve_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.manual_seed(0)

LIVE_MODELS: list[torch.nn.Module] = []


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        fam: build_tiny_model(fam, root / fam, seed=0, layers=2)
        for fam in ("llama", "gpt2", "gpt_neox", "qwen2", "mistral", "phi")
    }


@pytest.fixture(scope="session")
def tiny_llama(tiny_dirs: dict[str, Path]) -> LoadedModel:
    loaded = resolve_model(str(tiny_dirs["llama"]), device="cpu")
    LIVE_MODELS.append(loaded.model)
    return loaded


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_dirs: dict[str, Path]) -> LoadedModel:
    loaded = resolve_model(str(tiny_dirs["gpt2"]), device="cpu")
    LIVE_MODELS.append(loaded.model)
    return loaded


@pytest.fixture(scope="session")
def smol() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct (converted once into the cache dir)."""
    loaded = resolve_model("smollm2-135m", device="cpu")
    LIVE_MODELS.append(loaded.model)
    return loaded


def our_hooks(model: torch.nn.Module) -> list[str]:
    """Modules that still carry a hook made by forensics (transformers installs its own, on purpose)."""
    leaked = []
    for name, m in model.named_modules():
        hooks = [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
        if any(getattr(h, "__module__", "").startswith("forensics") for h in hooks):
            leaked.append(name or "<root>")
    return leaked


@pytest.fixture(autouse=True)
def no_leftover_hooks() -> Iterator[None]:
    """Every test leaves every shared model without our hooks (STYLE: hooks die in their with block)."""
    yield
    for model in LIVE_MODELS:
        leaked = our_hooks(model)
        assert not leaked, f"hooks leaked on {leaked[:5]}"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """One local Ray cluster for the whole session (2 CPUs, no dashboard); shut down at the end."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


ATP_PROMPT = "The capital of Australia is"
ATP_OTHERS = {
    "france": "The capital of France is",
    "long": "Canberra is the capital of Australia. The capital of Australia is",
}


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def atp_lab(
    request: pytest.FixtureRequest, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """(model, a replayer of a 'runner-up' incident on ATP_PROMPT, its baselines ATP_OTHERS) on two families:
    the attribution and attention-sink tests' lab."""
    from forensics.record import record_greedy
    from forensics.replay import Replayer

    loaded = resolve_model(str(tiny_dirs[request.param]), device="cpu")
    root = tmp_path_factory.mktemp(f"atp-{request.param}")
    others = [
        record_greedy(loaded, text, root / name, "as-generated", kind="benign", max_new_tokens=2).bundle
        for name, text in ATP_OTHERS.items()
    ]
    runner = record_greedy(loaded, ATP_PROMPT, root / "incident", "runner-up", kind="incident", max_new_tokens=2)
    rp = Replayer(runner.bundle, loaded=loaded, population=others, sources=others)
    return loaded, rp, others
