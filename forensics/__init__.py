"""model-forensics: root-cause analysis of foundation-model failures.

    with forensics.record(model, tokenizer) as rec:
        model.generate(**inputs, max_new_tokens=8, do_sample=False)
    bundle = rec.save("bundles/incident", failure=forensics.FailureSpec.expected(" Canberra", tokenizer))
    forensics.Replayer(bundle).fidelity().faithful

Record -> bundle -> replay -> RCA -> report. Nothing here imports Ray.
"""

from forensics.bundle import Bundle, load_bundle, write_bundle
from forensics.config import Config, load_config
from forensics.errors import (
    AuthError,
    BundleError,
    ConfigError,
    ForensicsError,
    ModelError,
    ReplayError,
    UnknownModuleError,
)
from forensics.failure import FailureSpec
from forensics.models import LoadedModel, ModelInfo, resolve_model
from forensics.rca import RCAPipeline, RCAResult
from forensics.record import Recorder, record
from forensics.replay import Fidelity, Intervention, Outcome, Replayer
from forensics.version import __version__ as __version__

__all__ = [
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
