"""The model-forensics Ray Serve app: ``serve_app.app:app`` (defaults) or ``serve_app.app:build_app`` (args).

    model-forensics serve --host 127.0.0.1 --port 8000
    serve run serve_app.app:app

Modules: ``app`` (deployments and the typed builder), ``api`` (FastAPI routes), ``bodies`` (request
bodies), ``intake`` (bounded body reads, uploads), ``errors`` (errors as HTTP answers), ``middleware``
(request ids, request metrics, log lines), ``settings`` (builder args), ``security`` (bearer auth,
permissions, audit). Nothing is imported here, so the package imports cheaply.
"""

__all__: list[str] = []
