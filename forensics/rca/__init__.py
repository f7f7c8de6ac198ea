"""RCA engine: failure metrics, CF (where), CCA (minimal validated fix sets), pipeline and reports.

result = RCAPipeline(config).analyze_incident("bundles/australia", baseline="bundles/benign/")
result.fix_set.interventions, result.confidence, result.export_path
"""

from forensics.rca.cca import CCAResult, FixSet, find_fix_set
from forensics.rca.pipeline import RCAPipeline
from forensics.rca.result import REPORT_SCHEMA, RCAResult

__all__ = ["REPORT_SCHEMA", "CCAResult", "FixSet", "RCAPipeline", "RCAResult", "find_fix_set"]
