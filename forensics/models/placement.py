"""Weights larger than memory: accelerate's ``device_map="auto"`` under a budget, and where inputs go.

    kwargs = placement_kwargs(kind, path, torch.float32, torch.device("cpu"), "200MiB", cache / "offload")
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)   # {} when the weights fit the budget
    device = settle(model, kwargs)       # offloaded: where input ids go (the input embeddings' device)

Weights that fit the budget of the execution device load whole and move there, as always. Weights
that do not are dispatched by accelerate: as much as the budget allows on the execution device (every
GPU, when there are several), the rest in CPU memory and past that on disk, under a directory of
``offload_dir`` that lives as long as the model. Accelerate's hooks bring a module's weights to its
execution device for its forward pass and drop them after it; torch's forward hooks wrap that call,
so recording, replay, head interventions and AtP's gradients run unchanged. An offloaded parameter
is a ``meta`` tensor on its module: code that reads weights (the weights digest, head out-projections)
goes through ``module_tensor`` / ``state_tensors``, and input ids go to ``input_device``.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from forensics.errors import ModelError

__all__ = [
    "MemoryBudget",
    "budget_map",
    "input_device",
    "is_dispatched",
    "module_tensor",
    "placement_kwargs",
    "settle",
    "state_tensors",
    "weights_bytes",
]

# One size (bytes, or text with a unit: "200MiB", "8GB") for the execution device, or one per device:
# {"cpu": "2GiB", "cuda:0": "20GiB", "disk": "100GiB"}; a device left out of a mapping gets nothing.
MemoryBudget = int | str | Mapping[str, int | str]
_OFFLOAD_KEY = "_forensics_offload_dir"


def budget_map(max_memory: MemoryBudget, device: torch.device) -> dict[int | str, int]:
    """accelerate's ``max_memory``: GPUs by index, then ``mps``, ``cpu``, ``disk``, in bytes. One size is
    the execution device's budget (each GPU's for ``cuda`` without an index; CPU memory then takes what
    is free, so the rest spills there before disk); on CPU, weights past it go to disk."""
    if isinstance(max_memory, Mapping):
        return {_device_key(str(k)): _bytes(f"model.max_memory.{k}", v) for k, v in max_memory.items()}
    size = _bytes("model.max_memory", max_memory)
    if device.type == "cpu":
        return {"cpu": size}
    if device.type == "mps":
        return {"mps": size}
    gpus = [device.index] if device.index is not None else list(range(max(1, torch.cuda.device_count())))
    return {**dict.fromkeys(gpus, size), "cpu": _free_ram()}


def weights_bytes(kind: str, path: Path, dtype: torch.dtype) -> int:
    """Bytes the weights take in ``dtype`` (counted on an empty ``meta`` model of the config: no weights
    are read; tied weights count once)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    src, extra = (str(path.parent), {"gguf_file": path.name}) if kind == "gguf" else (str(path), {})
    try:
        config = AutoConfig.from_pretrained(src, local_files_only=True, **extra)
        with init_empty_weights():
            empty = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # transformers fails in many ways on a user's config; all mean "unloadable"
        raise ModelError(f"model at {path}: config cannot be read ({type(exc).__name__}: {exc})") from exc
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(sum(p.numel() for p in empty.parameters())) * itemsize


def placement_kwargs(
    kind: str,
    path: Path,
    dtype: torch.dtype,
    device: torch.device,
    max_memory: MemoryBudget | None,
    offload_dir: Path,
) -> dict[str, Any]:
    """``from_pretrained`` keywords that dispatch the weights when they exceed the execution device's
    budget ({} when there is no budget or they fit: load whole, then ``model.to(device)``)."""
    if max_memory is None:
        return {}
    budget = budget_map(max_memory, device)
    here: int | str = "cpu" if device.type == "cpu" else "mps" if device.type == "mps" else device.index or 0
    if weights_bytes(kind, path, dtype) <= budget.get(here, 0):
        return {}
    offload_dir.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f"{path.name}-", dir=offload_dir)
    return {"device_map": "auto", "max_memory": budget, "offload_folder": folder, "offload_buffers": False}


def settle(model: nn.Module, kwargs: Mapping[str, Any]) -> torch.device:
    """After a dispatched load: the offload directory is removed with the model; where inputs go."""
    folder = kwargs.get("offload_folder")
    if folder is not None:
        setattr(model, _OFFLOAD_KEY, folder)
        weakref.finalize(model, shutil.rmtree, folder, True)
    return input_device(model)


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed ``model`` (``device_map``): weights may be on several devices or on disk."""
    return bool(getattr(model, "hf_device_map", None))


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the input embeddings' execution device (accelerate's hook says, when the
    weights were dispatched), else the device of the model's first parameter."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if isinstance(embeddings, nn.Module):
        hooked = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
        if hooked is not None:
            return torch.device("cuda", hooked) if isinstance(hooked, int) else torch.device(hooked)
        own = next(embeddings.parameters(), None)
        if own is not None and own.device.type != "meta":
            return own.device
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def module_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """``module``'s parameter or buffer ``name`` (local name, e.g. ``weight``) with its values: read from
    accelerate's offloaded weights when the module holds only a ``meta`` placeholder."""
    tensor: torch.Tensor | None = module._parameters.get(name)
    tensor = module._buffers.get(name) if tensor is None else tensor
    if tensor is None:
        raise ModelError(f"{type(module).__name__} has no parameter or buffer {name!r}")
    if tensor.device.type != "meta":
        return tensor
    weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
    if weights is None:
        raise ModelError(f"{type(module).__name__}.{name} is on the meta device and no offloaded copy is known")
    value: torch.Tensor = weights[name]
    return value


def state_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.state_dict()`` items sorted by name, with values: an offloaded entry is read when it is
    reached, so a model larger than memory is never all in memory at once."""
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if tensor.device.type != "meta":
            yield name, tensor
            continue
        owner, _, local = name.rpartition(".")
        yield name, module_tensor(model.get_submodule(owner), local)


def _device_key(key: str) -> int | str:
    if key in ("cpu", "disk", "mps"):
        return key
    if key == "cuda" or (key.startswith("cuda:") and key[5:].isdigit()):
        return int(key[5:] or 0)
    raise ModelError(f"model.max_memory: device {key!r} not allowed; expected cpu, disk, mps, cuda or cuda:N")


def _bytes(key: str, size: int | str) -> int:
    from accelerate.utils import convert_file_size_to_int

    try:
        value = int(convert_file_size_to_int(size))
    except (ValueError, AttributeError) as exc:
        raise ModelError(f"{key}: size {size!r} not allowed; expected bytes or a size such as 200MiB or 8GB") from exc
    if isinstance(size, bool) or value < 0:
        raise ModelError(f"{key}: size {size!r} not allowed; expected a size >= 0")
    return value


def _free_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
