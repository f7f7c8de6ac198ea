"""The analysis of one incident: a request in, the story of what was found out, a result.

    request = AnalysisRequest.of("bundles/australia", population="bundles/benign/")
    result = RCAPipeline(config).run(request)
    result.fix_set.interventions, result.confidence, result.export_path

Words, defined here once and used in every signature below: an *incident* is a run that fails its
failure spec (a bundle of kind ``incident``); a *family* is several incidents of one failure mode. The
population, sources and reference runs are defined where they live (``forensics.population``,
``forensics.cca``), CF statistics in ``forensics.cf``. Modules: ``request`` (``AnalysisRequest``),
``pipeline`` (``RCAPipeline``), ``inputs`` (input resolution, the model cache), ``diagnosis`` (evidence,
the search, judging), ``assemble`` and ``result`` (the ``RCAResult`` and its JSON report), ``story``,
``confidence``, ``provenance``, ``reference`` (runs on a known-good model).
"""

from forensics.rca.pipeline import RCAPipeline
from forensics.rca.request import AnalysisRequest
from forensics.rca.result import REPORT_SCHEMA, RCAResult

__all__ = ["REPORT_SCHEMA", "AnalysisRequest", "RCAPipeline", "RCAResult"]
