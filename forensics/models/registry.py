"""One registry turns a model reference into a loaded (model, tokenizer, info).

    loaded = resolve_model("smollm2-135m")          # embedded demo model, cached as safetensors
    model, tokenizer, info = resolve_model("/models/my-hf-dir")
    info.sha256                                      # identity of the weights, stored in bundles

Accepted references: ``smollm2-135m``; a local Hugging Face directory (with ``config.json``);
a ``.gguf`` file; ``hf:org/name`` from the local Hugging Face cache (never downloads). A GGUF (the
embedded one or a user's) is converted once into the converted-models cache (``forensics.models.cache``)
and loaded from there; its ``info.path`` stays the ``.gguf`` file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from forensics.errors import ModelError
from forensics.models.arch import arch_for
from forensics.models.cache import build_entry, entry_ready, file_sha256, gguf_entry, gguf_source
from forensics.models.embedded import EMBEDDED, embedded_gguf
from forensics.models.placement import MemoryBudget, is_dispatched, placement_kwargs, settle, state_tensors

__all__ = [
    "ACCEPTED_REFERENCES",
    "LoadedModel",
    "ModelInfo",
    "available_devices",
    "cast_model",
    "default_cache_dir",
    "device_problem",
    "resolve_device",
    "resolve_model",
    "weights_sha256",
    "wrap_model",
]

ACCEPTED_REFERENCES = (
    "an embedded model name (" + ", ".join(sorted(EMBEDDED)) + "), "
    "a local Hugging Face directory containing config.json, a path to a .gguf file, "
    "or hf:org/name already in the local Hugging Face cache"
)
log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
AUTO_DTYPE = "auto"  # the model's own dtype: its config.json's ``dtype`` (float32 for a converted GGUF)


@dataclass(frozen=True)
class ModelInfo:
    """What a reference resolved to; JSON-serialisable via ``to_dict``."""

    ref: str
    kind: str  # embedded | hf_dir | gguf | hf_cache | module (a torch model the caller passed)
    path: str
    sha256: str
    family: str
    dtype: str
    device: str
    num_layers: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class LoadedModel(NamedTuple):
    model: nn.Module
    tokenizer: Any
    info: ModelInfo


def default_cache_dir() -> Path:
    """``~/.cache/model-forensics``: where converted models go unless the caller names ``cache_dir``
    (the CLI and the Serve app pass ``Config.cache_dir``, i.e. ``MODEL_FORENSICS_CACHE_DIR``)."""
    return Path.home() / ".cache" / "model-forensics"


def available_devices() -> list[str]:
    """The devices this machine can use: ``cpu``, then ``cuda`` and ``cuda:N``, ``mps`` when present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine (naming what can), or None when it can."""
    available = available_devices()
    if device == "auto" or device in available:
        return None
    if device.startswith("cuda") and torch.version.cuda is None:
        why = f"torch {torch.__version__} is built without CUDA"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        why = "no CUDA device is visible"
    elif device.startswith("cuda"):
        why = f"{torch.cuda.device_count()} CUDA device(s)"
    else:
        why = f"{device} is not available"
    return f"device {device!r} is not available on this machine ({why}); available: {', '.join(available)} or auto"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device`` and must
    exist here (a ``ModelError`` naming what is available, never torch's "not compiled with CUDA")."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"device {device!r} is not valid; use auto, cpu, cuda or cuda:N") from exc
    problem = device_problem(device)
    if problem is not None:
        raise ModelError(problem)
    return resolved


def weights_sha256(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), sorted by name."""
    digest = hashlib.sha256()
    for name, tensor in state_tensors(model):  # offloaded weights are read one at a time
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        digest.update(t.numpy().data.cast("B"))
    return digest.hexdigest()


def resolve_model(
    ref: str,
    *,
    device: str = "auto",
    dtype: str = "float32",
    cache_dir: str | os.PathLike[str] | None = None,
    max_memory: MemoryBudget | None = None,
    offload_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load ``ref`` (see module docstring) in eval mode on ``device``; a clear error otherwise. Weights
    larger than ``max_memory`` are dispatched by accelerate (``forensics.models.placement``), offloading
    to CPU memory and to disk under ``offload_dir`` (default ``CACHE_DIR/offload``). ``dtype`` ``auto``
    is the model's own (``AUTO_DTYPE``)."""
    if dtype not in _DTYPES and dtype != AUTO_DTYPE:
        raise ModelError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)} or {AUTO_DTYPE}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kind, path = _locate(ref, cache)
    load_kind, load_path = _loadable(kind, path, cache)
    dtype = _own_dtype(load_path) if dtype == AUTO_DTYPE else dtype
    dev = resolve_device(device)
    offload = Path(offload_dir) if offload_dir is not None else cache / "offload"
    placing = placement_kwargs(load_kind, load_path, _DTYPES[dtype], dev, max_memory, offload)
    model, tokenizer = _load(load_kind, load_path, _DTYPES[dtype], placing)
    if placing:
        dev = settle(model, placing)  # inputs go where the input embeddings run
    else:
        model.to(dev)
    model.eval()
    converted = kind == "embedded" or (kind == "gguf" and dtype == "float32")  # the digest the entry holds
    sha = _cached_sha(load_path) if converted else weights_sha256(model)
    spec = arch_for(model)
    info = ModelInfo(ref, kind, str(path), sha, spec.family, dtype, str(dev), len(spec.layer_names(model)))
    return LoadedModel(model, tokenizer, info)


def cast_model(loaded: LoadedModel, dtype: str) -> LoadedModel:
    """``loaded`` in another floating-point ``dtype``, cast in place. ``info.sha256`` stays the digest
    of the weights as loaded, so an identity checked against a recording in the loaded dtype still
    holds: the weights are the recording's, in the dtype the user asked for (``info.dtype``). A model
    dispatched across devices is refused (load it in that dtype instead)."""
    if dtype not in _DTYPES:
        raise ModelError(f"dtype {dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    if dtype == loaded.info.dtype:
        return loaded
    if is_dispatched(loaded.model):
        raise ModelError(f"{loaded.info.ref}: a model dispatched across devices cannot be cast; load it in {dtype}")
    loaded.model.to(_DTYPES[dtype])
    return LoadedModel(loaded.model, loaded.tokenizer, replace(loaded.info, dtype=dtype))


def wrap_model(
    model: nn.Module,
    tokenizer: Any = None,
    *,
    ref: str,
    tokenizer_ref: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """A model the caller already holds (an ``nn.Module``, e.g. from ``mlflow.pytorch.load_model``) as a
    ``LoadedModel``: its own weights digest, family and device; put in eval mode, never moved.

    Without ``tokenizer`` the one of ``tokenizer_ref`` (the bundle's) is loaded through the registry."""
    if tokenizer is None:
        if tokenizer_ref is None:
            raise ModelError("a torch model without a tokenizer needs tokenizer_ref (the bundle's tokenizer)")
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        tokenizer = _load_tokenizer(*_loadable(*_locate(tokenizer_ref, cache), cache))
    param = next(model.parameters(), None)
    dtype = str(param.dtype).removeprefix("torch.") if param is not None else "float32"
    spec = arch_for(model)
    model.eval()
    info = ModelInfo(
        ref,
        "module",
        "",
        weights_sha256(model),
        spec.family,
        dtype,
        str(param.device) if param is not None else "cpu",
        len(spec.layer_names(model)),
    )
    return LoadedModel(model, tokenizer, info)


def _load_tokenizer(kind: str, path: Path) -> Any:
    from transformers import AutoTokenizer

    src, extra = (str(path.parent), {"gguf_file": path.name}) if kind == "gguf" else (str(path), {})
    try:
        return AutoTokenizer.from_pretrained(src, local_files_only=True, **extra)
    except Exception as exc:  # transformers/hub fail in many ways; all mean "unloadable"
        raise ModelError(f"tokenizer at {path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc


def _locate(ref: str, cache: Path) -> tuple[str, Path]:
    if ref in EMBEDDED:
        return "embedded", _ensure_converted(ref, cache)
    if ref.startswith("hf:"):
        return "hf_cache", _hf_cache_dir(ref[3:])
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model {ref!r}: GGUF file not found; accepted references: {ACCEPTED_REFERENCES}")
        return "gguf", path
    if path.is_dir() and (path / "config.json").is_file():
        return "hf_dir", path
    problem = "directory has no config.json" if path.is_dir() else "not a known name, file or directory"
    raise ModelError(f"model {ref!r}: {problem}; accepted references: {ACCEPTED_REFERENCES}")


def _hf_cache_dir(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # the hub raises many types for "not cached"; all mean the same here
        raise ModelError(
            f"model 'hf:{name}' is not in the local Hugging Face cache (no download is attempted): {exc}"
        ) from exc


def _load(kind: str, path: Path, dtype: torch.dtype, placing: dict[str, Any] | None = None) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype, **(placing or {})}
    src, extra = (str(path.parent), {"gguf_file": path.name}) if kind == "gguf" else (str(path), {})
    if kind != "gguf":
        _require_safetensors(path)
        kwargs["use_safetensors"] = True  # never torch.load a pickled checkpoint
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, **kwargs, **extra)
    except Exception as exc:  # a user's files can fail in transformers/hub in many ways; all mean "unloadable"
        raise ModelError(f"model at {path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    return model, tokenizer


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _require_safetensors(path: Path) -> None:
    """Weights must be safetensors: a pickled checkpoint (``pytorch_model.bin`` and the like) is refused,
    naming the file and the one-line conversion, never loaded through ``torch.load``."""
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern))
    if pickled:
        raise ModelError(
            f"model at {path}: weights are a pickled checkpoint ({', '.join(pickled)}); model-forensics loads only "
            "safetensors, since unpickling can run code. If you trust the file, convert it once: "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
        )


def _loadable(kind: str, path: Path, cache: Path) -> tuple[str, Path]:
    """Where ``_locate``'s answer loads from: a user's GGUF from its converted-models cache entry (converted
    on first use, keyed by the file's sha256), everything else from where it is."""
    if kind != "gguf":
        return kind, path
    sha = file_sha256(path)
    return "hf_dir", _ensure_converted(gguf_entry(cache, sha).name, cache, path, source=gguf_source(path, sha))


def _own_dtype(path: Path) -> str:
    """The dtype a model directory's ``config.json`` declares (``dtype`` or ``torch_dtype``); float32 when it
    declares none, or one model-forensics does not load."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"
    declared = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    return declared if declared in _DTYPES else "float32"


def _ensure_converted(
    name: str, cache: Path, gguf: Path | None = None, *, source: dict[str, Any] | None = None
) -> Path:
    """Convert a GGUF (``gguf``, else the embedded model ``name``'s) once into ``cache/models/NAME``
    (safetensors, fp32, atomically: ``build_entry``); a half or unreadable entry is converted again."""
    dest = cache / "models" / name
    if entry_ready(dest):
        return dest
    src = gguf if gguf is not None else embedded_gguf(name)
    log.info("converting %s once into %s (later loads read the safetensors)", src, dest)
    model: Any
    model, tokenizer = _load("gguf", src, torch.float32)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # de-quantised on load: plain fp32 weights now
    model.hf_quantizer = None

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if source is not None:
            (tmp / "source.json").write_text(json.dumps(source))
        (tmp / "weights.sha256.json").write_text(json.dumps({"sha256": weights_sha256(model), "source": str(src)}))

    return build_entry(dest, write)


def _cached_sha(path: Path) -> str:
    try:
        return str(json.loads((path / "weights.sha256.json").read_text())["sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model cache {path}: weights.sha256.json unreadable ({exc}); delete the directory") from exc
