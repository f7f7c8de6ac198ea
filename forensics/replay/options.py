"""How a replay session runs, as one frozen value passed from the edge to every worker.

    >>> opts = ReplayOptions(batch_size=8, fidelity_tolerance=1e-3)
    >>> ReplayOptions.from_dict(opts.to_dict()) == opts
    True

The ``Replayer``, the plain-data ``ReplayJob`` that crosses to Ray workers, ``build_replayer`` and the
pipeline all carry this one value instead of repeating its fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from forensics.errors import ConfigError

__all__ = ["DEFAULT_OPTIONS", "ReplayOptions"]


@dataclass(frozen=True)
class ReplayOptions:
    """``device``: auto | cpu | cuda[:N] | mps, used when the replayer loads the model itself.
    ``cache_dir``: where converted models are cached (None: the registry's documented default).
    ``allow_model_mismatch`` / ``allow_source_mismatch``: replay although weights hashes differ.
    ``reference_sha256``: the weights of a known-good reference model; a counterfactual that is a reference
    run on them (manifest ``reference``, ``forensics.rca.reference``) is exempt from the weights check, every
    other bundle is still checked. ``reference_model``: where that model loads from (a reference or path),
    so a replayer anywhere (a Ray worker) can capture the reference run's head values on REF itself.
    ``batch_size``: intervention sets per forward pass. ``fidelity_tolerance`` / ``fidelity_rtol``: the absolute and
    relative parts of the fidelity tolerance (``measure_fidelity``).
    ``prefix_reuse`` / ``suffix_reuse``: skip work a set does not change. ``max_memory``: bytes a pass
    may use (None: no budget). ``encryption_key``: reads encrypted bundles in workers (never shown)."""

    device: str = "auto"
    cache_dir: str | None = None
    allow_model_mismatch: bool = False
    allow_source_mismatch: bool = False
    reference_sha256: str | None = None
    reference_model: str | None = None
    batch_size: int = 32
    fidelity_tolerance: float = 1e-4
    fidelity_rtol: float = 1e-4
    prefix_reuse: bool = True
    suffix_reuse: bool = True
    max_memory: int | None = None
    encryption_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"replay batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if not self.fidelity_tolerance > 0:
            raise ConfigError(f"fidelity_tolerance: expected a number > 0, got {self.fidelity_tolerance!r}")
        if not self.fidelity_rtol >= 0:
            raise ConfigError(f"fidelity_rtol: expected a number >= 0, got {self.fidelity_rtol!r}")
        if self.max_memory is not None and self.max_memory < 1:
            raise ConfigError(f"max_memory: expected null or bytes >= 1, got {self.max_memory!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayOptions:
        return cls(**data)


DEFAULT_OPTIONS = ReplayOptions()
