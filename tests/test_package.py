"""The public surface: pinned exports, no Ray at import, py.typed shipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import forensics

PINNED = [
    "AuthError",
    "Bundle",
    "BundleError",
    "Config",
    "ConfigError",
    "FailureSpec",
    "Fidelity",
    "ForensicsError",
    "Intervention",
    "LoadedModel",
    "ModelError",
    "ModelInfo",
    "Outcome",
    "RCAPipeline",
    "RCAResult",
    "Recorder",
    "ReplayError",
    "Replayer",
    "UnknownModuleError",
    "load_bundle",
    "load_config",
    "record",
    "resolve_model",
    "write_bundle",
]


def test_public_api_is_pinned() -> None:
    assert sorted(forensics.__all__) == sorted(PINNED)
    for name in PINNED:
        assert getattr(forensics, name) is not None


def test_imports_without_ray_or_web_frameworks() -> None:
    code = (
        "import sys, forensics, forensics.cli, forensics.rca; "
        "print(sorted(m for m in ('ray', 'fastapi', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_py_typed_shipped() -> None:
    assert (Path(forensics.__file__).parent / "py.typed").is_file()
