"""What the HTTP service does, as plain library functions: confine names, take uploads, analyse, store results.

    path = resolve_bundle("bundles/", "incidents/incident_7")       # BundleError for ../, /abs, symlinks out
    record = run_analysis(pipeline, bundle_dir="bundles/", output_dir="results/", bundle="incidents/incident_7")
    read_result("results/", record["id"])                            # the full JSON report, stored atomically

Modules by job: ``paths`` (names confined to ``bundle_dir``), ``intake`` (uploaded archives and posted
traces, bounded), ``results`` (stored reports, their ids and index), ``analyses`` (analyse, triage,
summarize), ``families`` (several bundles analysed as one failure family), ``fixes`` (a report's fix
exported as an edited model under ``output_dir``). The Serve app (``serve_app/``) is a thin shell over this package; nothing here imports Ray
or FastAPI. Errors are those of ``forensics.errors``; how they become HTTP answers is ``serve_app.errors``.
"""

from forensics.service.analyses import check_model_allowed, run_analysis, run_trace_analysis, run_triage, summarize
from forensics.service.families import MAX_FAMILY_MEMBERS, check_members, run_family_analysis
from forensics.service.fixes import EXPORT_METHODS, FIXES_DIR, OUT_NAME_PATTERN, run_export_fix
from forensics.service.intake import MAX_UPLOAD_BYTES, UPLOADS_DIR, save_trace, save_upload, trace_limit
from forensics.service.paths import MAX_NAME_CHARS, resolve_baseline, resolve_bundle
from forensics.service.results import check_result_id, new_result_id, read_result, repair_index

__all__ = [
    "EXPORT_METHODS",
    "FIXES_DIR",
    "MAX_FAMILY_MEMBERS",
    "MAX_NAME_CHARS",
    "MAX_UPLOAD_BYTES",
    "OUT_NAME_PATTERN",
    "UPLOADS_DIR",
    "check_members",
    "check_model_allowed",
    "check_result_id",
    "new_result_id",
    "read_result",
    "repair_index",
    "resolve_baseline",
    "resolve_bundle",
    "run_analysis",
    "run_export_fix",
    "run_family_analysis",
    "run_trace_analysis",
    "run_triage",
    "save_trace",
    "save_upload",
    "summarize",
    "trace_limit",
]
