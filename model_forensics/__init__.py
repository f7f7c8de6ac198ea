"""``model_forensics``: the import name of the deployment guide, an alias of ``forensics``.

    from model_forensics import RCAPipeline          # what the guide's snippets import
    pipeline = RCAPipeline()                         # MODEL_FORENSICS_* settings of os.environ
    result = pipeline.analyze_incident("bundles/australia", model)   # a torch model, positionally
    result.export_path                               # OUTPUT_DIR/<bundle id>.json, indexed for `stats`

Everything in ``forensics.__all__`` is re-exported unchanged, except ``RCAPipeline``, which is the
library's pipeline plus the guide's conveniences (see its docstring). This package sits on top of
every layer of ``forensics``, as the CLI does: it is the place that may read the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import forensics
from forensics import *  # noqa: F403 - the alias re-exports the public API as it is
from forensics import __all__ as _forensics_all
from forensics.version import __version__ as __version__

__all__ = sorted(_forensics_all)


class RCAPipeline(forensics.RCAPipeline):
    """``forensics.RCAPipeline`` as the deployment guide uses it.

    - **Config from the environment.** ``RCAPipeline()`` (no config) reads ``MODEL_FORENSICS_*`` of
      ``os.environ`` at construction, as the CLI does (``forensics.ops.env.config_from_env``:
      ``MODEL_FORENSICS_CONFIG``, ``_CACHE_ENABLED``, ``_DEVICE``, ``_ENCRYPTION_KEY``, ...). An explicit
      ``config`` wins and the environment is not read. Why here and not in ``forensics.rca``: the library
      never reads the environment (config is loaded at the edge and passed down) and ``forensics.rca``
      (layer 4) may not import ``forensics.ops`` (layer 6); this alias is an edge, above both.
    - **The model positionally.** ``analyze_incident(bundle, model)``, the guide's MLflow form: a second
      positional argument that is a model (a torch ``nn.Module``, ``(model, tokenizer)`` or a
      ``LoadedModel``) is the model, not a baseline. That model is the one analysed; a model whose
      weights differ from the recording's is refused unless ``allow_model_mismatch=True``.
    - **A report is always written.** Without ``output`` the JSON report goes to
      ``OUTPUT_DIR/<bundle id>.json`` (like ``model-forensics analyze``), so ``result.export_path`` is
      set; every report is added to the index in ``OUTPUT_DIR`` that ``model-forensics stats`` reads,
      and the ``execution_time`` / ``memory_usage`` lines are logged.
    """

    def __init__(
        self, config: forensics.Config | None = None, *, environ: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        if config is None:
            from forensics.ops.env import config_from_env

            config = config_from_env(None, os.environ if environ is None else environ)
        super().__init__(config, **kwargs)

    def analyze_incident(
        self, bundle: Any, baseline: Any = None, model: Any = None, *, output: str | Path | None = None, **kwargs: Any
    ) -> forensics.RCAResult:
        from forensics.ops.logs import log_analysis
        from forensics.ops.stats import index_result
        from forensics.rca.inputs import bundle_of

        if model is None and is_model(baseline):
            model, baseline = baseline, None
        incident = bundle_of(bundle, self.config)
        if output is None:
            output = Path(self.config.output_dir) / f"{incident.id}.json"
        result = super().analyze_incident(incident, baseline, model, output=output, **kwargs)
        report = result.to_dict()
        log_analysis(report)
        index_result(self.config.output_dir, report, output)
        return result


def is_model(obj: Any) -> bool:
    """Whether ``obj`` is a model rather than a baseline: ``nn.Module``, ``(nn.Module, tokenizer)``, ``LoadedModel``."""
    from torch import nn

    if isinstance(obj, forensics.LoadedModel | nn.Module):
        return True
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], nn.Module)
