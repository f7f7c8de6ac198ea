"""Ground truth for RCA: planted faults and the evaluation that scores CF and CCA against them.

report = evaluate_faults(model_dir, default_faults(6), PROMPTS, workdir="gt/")
"""

from forensics.faults.evaluate import PROMPTS, EvalReport, FaultCase, default_faults, evaluate_faults
from forensics.faults.plant import Fault, plant_fault

__all__ = ["PROMPTS", "EvalReport", "Fault", "FaultCase", "default_faults", "evaluate_faults", "plant_fault"]
