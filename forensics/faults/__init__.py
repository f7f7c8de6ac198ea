"""Ground truth for RCA: planted faults and the evaluation that scores CF and CCA against them.

report = evaluate_faults(model_dir, component_faults(6, n=12), PROMPTS, workdir="gt/")
report.top1_component, report.fix_component_hit, report.markdown()
"""

from forensics.faults.evaluate import (
    PROMPTS,
    EvalReport,
    FaultCase,
    component_faults,
    component_hit,
    default_faults,
    evaluate_faults,
)
from forensics.faults.plant import Fault, plant_fault

__all__ = [
    "PROMPTS",
    "EvalReport",
    "Fault",
    "FaultCase",
    "component_faults",
    "component_hit",
    "default_faults",
    "evaluate_faults",
    "plant_fault",
]
