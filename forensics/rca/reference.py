"""Reference-model regressions: the incident's own tokens run on a known-good version of the model.

    ref = resolve_model("models/base", device="cpu")
    bundle = reference_run(incident, ref, "cache/reference", model=loaded)   # cached by (incident, REF sha)
    heads, contribs = reference_heads(ref, bundle)                           # REF's per-head values

The reference run is teacher-forced over exactly what the incident fed its model (prompt ids plus the
generated ids before the decision step), so its positions align one to one with the incident's and
it is a patch source of the same input (``evidence.reference_run_ids``). It records the incident's modules
under the incident's failure spec, as a ``benign`` bundle whose manifest ``reference`` names REF;
the replayer exempts only such a bundle from the weights check (``ReplayOptions.reference_sha256``).
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from forensics.bundle import Bundle, load_bundle, write_bundle
from forensics.errors import BundleError, ModelError
from forensics.failure import FailureSpec
from forensics.models.arch import arch_for, get_module
from forensics.models.placement import input_device
from forensics.models.registry import LoadedModel
from forensics.record.manifest import build_manifest
from forensics.record.recorder import record
from forensics.replay.heads import capture_heads, contributions

__all__ = ["architecture", "check_architecture", "fed_ids", "reference_heads", "reference_run", "reference_section"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def architecture(model: nn.Module) -> dict[str, Any]:
    """What must match for positions and components to correspond: family, layers, width, heads, vocab."""
    config = getattr(model, "config", None)
    spec = arch_for(model)
    return {
        "family": spec.family,
        "layers": len(spec.layer_names(model)),
        "hidden width": getattr(config, "hidden_size", None),
        "attention heads": getattr(config, "num_attention_heads", None),
        "vocab": getattr(config, "vocab_size", None),
    }


def check_architecture(incident: Bundle, ref: LoadedModel, model: LoadedModel | None = None) -> None:
    """``ModelError`` naming the first difference between REF and the incident's model (``model``, the one
    analysed; without it the bundle's family), or a recorded module REF lacks."""
    mine = architecture(ref.model)
    theirs = architecture(model.model) if model is not None else {"family": incident.model.get("family")}
    for key, want in theirs.items():
        if want is not None and mine[key] != want:
            raise ModelError(
                f"reference model {ref.info.ref!r}: {key} {mine[key]!r}, the incident's model has {want!r}; "
                "a reference must be the same architecture (a version before a fine-tune, merge or quantisation)"
            )
    for name in incident.modules:
        try:
            get_module(ref.model, name)
        except ModelError as exc:
            raise ModelError(f"reference model {ref.info.ref!r}: lacks recorded module {name!r} ({exc})") from None


def fed_ids(incident: Bundle) -> list[int]:
    """What the incident's model read before its decision: prompt ids + generated ids before the step."""
    step = int(incident.outputs.get("decision_step") or 0)
    return [*map(int, incident.inputs["input_ids"]), *map(int, incident.outputs["generated_ids"][:step])]


def reference_run(
    incident: Bundle,
    ref: LoadedModel,
    out_dir: str | os.PathLike[str],
    *,
    model: LoadedModel | None = None,
    encryption_key: bytes | None = None,
) -> Bundle:
    """REF's teacher-forced pass over the incident's fed tokens, saved (or reused) under ``out_dir`` as
    ``reference-<incident>-<REF sha>``; a clear ``ModelError`` when REF's architecture differs."""
    check_architecture(incident, ref, model)
    dest = Path(out_dir) / _UNSAFE.sub("_", f"reference-{incident.id}-{ref.info.sha256[:16]}")
    cached = _cached(dest, incident, ref, encryption_key)
    if cached is not None:
        return cached
    shutil.rmtree(dest, ignore_errors=True)  # a half-written run (no manifest) or a stale one
    dest.parent.mkdir(parents=True, exist_ok=True)
    rec = record(ref.model, ref.tokenizer, list(incident.modules), model_ref=ref.info.ref, model_sha256=ref.info.sha256)
    _teacher_forced(ref.model, rec, incident)
    sites = incident.manifest.get("recorded", {}).get("sites") or {}
    observed = replace(rec.observation(), sites={m: sites.get(m, "custom") for m in incident.modules})
    spec = FailureSpec.from_dict(incident.failure) if incident.failure else None
    manifest = build_manifest(
        observed,
        failure=spec,
        kind="benign",
        prompt=incident.inputs.get("prompt"),
        generation={"greedy": True, "teacher_forced": True, "reference_of": incident.id},
    )
    manifest["reference"] = {
        "of": incident.id,
        "ref": ref.info.ref,
        "sha256": ref.info.sha256,
        "incident_sha256": incident.model.get("sha256"),
    }
    try:
        return write_bundle(dest, manifest, rec.activations(), bundle_id=dest.name, encryption_key=encryption_key)
    finally:
        rec.discard()


def _teacher_forced(model: nn.Module, rec: Any, incident: Bundle) -> None:
    """Feed the incident's tokens as its own generation did (prompt, then one token at a time with the
    cache), so the recorder stitches the same positions and keeps the prompt / generated split."""
    device = input_device(model)
    prompt = [int(t) for t in incident.inputs["input_ids"]]
    forced = fed_ids(incident)[len(prompt) :]
    params = inspect.signature(model.forward).parameters
    arg = "cache" if "cache" in params else "past_key_values"  # transformers 5.x renamed it
    with rec, torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        for token in forced:
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            out = model(input_ids=torch.tensor([[token]], device=device), use_cache=True, **{arg: cache})


def _cached(dest: Path, incident: Bundle, ref: LoadedModel, key: bytes | None) -> Bundle | None:
    if not (dest / "manifest.json").is_file():
        return None
    try:
        bundle = load_bundle(dest, encryption_key=key)
    except BundleError:
        return None
    same = (
        (bundle.manifest.get("reference") or {}).get("sha256") == ref.info.sha256
        and list(bundle.inputs["input_ids"]) == list(incident.inputs["input_ids"])
        and _fed(bundle) == fed_ids(incident)
        and list(bundle.modules) == list(incident.modules)
    )
    return bundle if same else None


def _fed(bundle: Bundle) -> list[int]:
    generated = list(bundle.outputs.get("generated_ids") or [])
    return [*map(int, bundle.inputs["input_ids"]), *map(int, generated[:-1])]


def reference_heads(ref: LoadedModel, bundle: Bundle) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """REF's per-head values over the reference run's tokens and each head's contribution through REF's
    out-projection (head patches come from REF's weights: a regression may sit in the projection itself)."""
    heads = capture_heads(ref.model, _fed(bundle))
    return heads, contributions(ref.model, heads)


def reference_section(incident: Bundle, ref: LoadedModel, bundle: Bundle) -> dict[str, Any]:
    """The report's ``reference``: REF, its answer at the decision step, and whether it is the target."""
    step = int(incident.outputs.get("decision_step") or 0)
    observed = int(incident.outputs["generated_ids"][step])
    answer = int(bundle.outputs["generated_ids"][-1])
    spec = FailureSpec.from_dict(incident.failure) if incident.failure else None
    target = spec.target_id(step) if spec is not None else None
    produces = answer == target if target is not None else answer != observed
    token = ref.tokenizer.decode([answer])
    if produces:
        statement = f"reference model {ref.info.ref!r} answers {token!r} on the incident's input: the target"
    elif answer == observed:
        statement = (
            f"reference model {ref.info.ref!r} fails the same way: it also answers {token!r} on the incident's "
            "input, so there is no regression to explain and patching from it cannot fix the failure"
        )
    else:
        statement = (
            f"reference model {ref.info.ref!r} answers {token!r} on the incident's input: neither the incident's "
            "answer nor the target, so patching from it cannot produce the target"
        )
    return {
        "ref": ref.info.ref,
        "sha256": ref.info.sha256,
        "bundle_id": bundle.id,
        "bundle_path": bundle.path,
        "answer_id": answer,
        "answer_token": token,
        "target_id": target,
        "produces_target": produces,
        "fails_same_way": answer == observed,
        "statement": statement,
    }
