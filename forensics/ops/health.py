"""What ``info`` reports: versions, devices, the resolved config (no secrets) and health checks.

report = system_info(config, results_dir=Path("~/.cache/model-forensics/results"))
report["health"]["status"]       # "ok" or "degraded"
require_device(config, "configs/high_performance.yaml", os.environ)   # ConfigError: cuda wanted, none here
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from forensics.config import Config, to_dict
from forensics.errors import ConfigError

__all__ = ["check_device", "check_health", "devices", "require_device", "system_info"]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def devices(device: str) -> dict[str, Any]:
    import torch

    from forensics.errors import ModelError
    from forensics.models.registry import resolve_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        resolved: str | None = str(resolve_device(device))
    except ModelError:
        resolved = None
    return {
        "cuda_available": torch.cuda.is_available(),
        "cuda_count": count,
        "cuda_names": [torch.cuda.get_device_name(i) for i in range(count)],
        "configured": device,
        "resolved": resolved,
    }


def check_device(device: str) -> tuple[bool, str]:
    """Whether the configured ``device`` can be used here; the detail says why not and what is available."""
    from forensics.models.registry import available_devices, device_problem

    problem = device_problem(device)
    if problem is None:
        return True, f"{device}: available (this machine has {', '.join(available_devices())})"
    return False, problem


def require_device(config: Config, path: str | Path | None, environ: Mapping[str, str]) -> None:
    """At the edge, before any model loads: a ``ConfigError`` naming the setting that asked for a device this
    machine lacks (``MODEL_FORENSICS_DEVICE``, else the config file's ``device`` key)."""
    ok, detail = check_device(config.device)
    if ok:
        return
    raw = environ.get("MODEL_FORENSICS_DEVICE", "")
    if raw.strip():
        setting = f"environment variable MODEL_FORENSICS_DEVICE={raw!r}"
    elif path is not None or environ.get("MODEL_FORENSICS_CONFIG", "").strip():
        via = "" if path is not None else " (MODEL_FORENSICS_CONFIG)"
        setting = f"config file {path or environ['MODEL_FORENSICS_CONFIG'].strip()}{via}, key 'device'"
    else:
        setting = "config key 'device'"
    raise ConfigError(f"{setting}: {detail}")


def _writable(path: Path) -> tuple[bool, str]:
    """A real write when the directory exists; else whether its nearest existing parent allows creating it."""
    if path.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".health-"):
                pass
        except OSError as exc:
            return False, f"{path}: not writable ({exc.strerror})"
        return True, f"{path}: writable"
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return True, f"{path}: does not exist yet; can be created under {parent}"
    return False, f"{path}: does not exist and cannot be created"


def _exists(path: Path) -> tuple[bool, str]:
    return path.is_dir(), f"{path}: " + ("exists" if path.is_dir() else "no such directory")


def _embedded() -> tuple[bool, str]:
    from forensics.errors import ModelError
    from forensics.models.embedded import EMBEDDED, embedded_gguf

    try:
        found = [str(embedded_gguf(name)) for name in sorted(EMBEDDED)]
    except ModelError as exc:
        return False, str(exc)
    return True, ", ".join(found)


def check_health(config: Config, results_dir: Path) -> dict[str, Any]:
    """Each check is {name, ok, detail}; status is ok only when all pass."""
    checks = []
    for name, (ok, detail) in (
        ("embedded_model_package", _embedded()),
        ("cache_dir_writable", _writable(results_dir)),
        ("output_dir_writable", _writable(Path(config.output_dir))),
        ("bundle_dir_exists", _exists(Path(config.bundle_dir))),
        ("device_available", check_device(config.device)),
    ):
        checks.append({"name": name, "ok": ok, "detail": detail})
    return {"status": "ok" if all(c["ok"] for c in checks) else "degraded", "checks": checks}


def system_info(config: Config, *, results_dir: Path, config_source: str | None = None) -> dict[str, Any]:
    from forensics.version import __version__

    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in ("torch", "transformers", "pyarrow", "ray")},
        "devices": devices(config.device),
        "config_source": config_source,
        "config": to_dict(config),  # holds only encryption_key_set, never the key
        "results_cache_dir": str(results_dir),
        "health": check_health(config, results_dir),
    }
