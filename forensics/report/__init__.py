"""The report as a page: the JSON report (schema ``model-forensics/rca@2``) rendered as self-contained HTML.

    write_html(result, "reports/australia.html")      # an RCAResult or the report dict
    page = render_html(json.load(open("reports/australia.json")))

Reads report dicts only; nothing here runs a model. Modules: ``html`` (the page), ``story`` (the
answer in words, fixes, confidence), ``components`` (components table and heatmaps), ``svg`` and
``plot`` (charts), ``blocks`` (tables and small pieces), ``advanced`` (ISC, DBC), ``provenance``.
"""

from forensics.report.html import render_html, write_html

__all__ = ["render_html", "write_html"]
