"""Results cache: a repeated analysis of the same bundle, config and version is read, not replayed.

    cache = ResultCache(default_results_dir(config), config.cache.max_bytes)
    report = cached_analyze(pipeline, AnalysisRequest.of("bundles/incident_7", "bundles/benign/", output="r.json"), cache)

Entries are report JSON files named by a key over (bundle sha256, config hash, package version,
and the other inputs: baseline bundles, model, patch sources, mismatch flags). Each read or write
stamps the file's times (explicitly, in ns, not via atime which mounts often switch off); when the
directory grows past ``max_bytes`` the least recently used entries go first.

With an encryption key (``Config.encryption_key``, the bundles' key) entries are ``<key>.json.enc``:
AES-256-GCM of the report JSON, bound to the entry's name, so the cache under the cache dir holds no
prompt or answer in plaintext. Reports written where a user asked (``--output``) stay readable JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from forensics.bundle import Bundle, load_bundle
from forensics.config import Config, to_dict
from forensics.durable import write_atomic, write_json_atomic
from forensics.ops.logs import log_analysis
from forensics.rca.pipeline import RCAPipeline
from forensics.rca.request import AnalysisRequest
from forensics.version import __version__

__all__ = ["OPS_ONLY_KEYS", "ResultCache", "cache_key", "cached_analyze", "config_hash", "default_results_dir"]

log = logging.getLogger(__name__)
# Config keys that cannot change an analysis' result; everything else is hashed (a new key counts
# until listed here: a cache that misses too often beats one that answers stale).
OPS_ONLY_KEYS = frozenset(
    {
        "version",
        "bundle_dir",
        "output_dir",
        "timeout_minutes",
        "log_level",
        "log_file",
        "cache",
        "streaming_enabled",
        "max_memory",
        "audit_log",
        "encryption_key_set",
    }
)


def default_results_dir(config: Config) -> Path:
    """``<cache_dir>/results``: the results cache sits in the one cache root (``Config.cache_dir``, env
    ``MODEL_FORENSICS_CACHE_DIR``, else ``~/.cache/model-forensics``), beside the converted models."""
    from forensics.models.registry import default_cache_dir

    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    return root / "results"


def config_hash(config: Config) -> str:
    data = {k: v for k, v in to_dict(config).items() if k not in OPS_ONLY_KEYS}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_key(bundle_sha256: str, config_digest: str, version: str, extra: Mapping[str, Any] | None = None) -> str:
    material = {"bundle": bundle_sha256, "config": config_digest, "version": version, "extra": extra or {}}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


_PLAIN, _SEALED = ".json", ".json.enc"
_NONCE = 12


class ResultCache:
    """Report JSON files in ``directory``, at most ``max_bytes`` in total, LRU eviction; encrypted
    (``.json.enc``) when ``encryption_key`` is given."""

    def __init__(self, directory: str | Path, max_bytes: int, encryption_key: bytes | None = None) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.encryption_key = encryption_key
        self.hits = self.misses = 0
        self.last_hit: bool | None = None

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{_PLAIN if self.encryption_key is None else _SEALED}"

    def get(self, key: str) -> dict[str, Any] | None:
        report = self._read(self.path(key))
        self.last_hit = report is not None
        if report is None:
            self.misses += 1
        else:
            self.hits += 1
        return report

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(self._open(path, path.read_bytes()))
            _stamp(path)
        except FileNotFoundError:  # never stored, or evicted (maybe by another process) meanwhile
            return None
        except (OSError, ValueError) as exc:  # a damaged entry is a miss, and goes
            log.warning("results cache: dropping unreadable entry %s (%s)", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, report: Mapping[str, Any]) -> list[str]:
        """Store a report; returns the keys evicted to get back under ``max_bytes``."""
        path = self.path(key)
        if self.encryption_key is None:
            write_json_atomic(path, dict(report))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(dict(report), allow_nan=False, default=str).encode("utf-8")
            write_atomic(path, _seal(self.encryption_key, path, text))  # 0600, like the bundles it came from
            self.directory.joinpath(f"{key}{_PLAIN}").unlink(missing_ok=True)  # no plaintext twin left
        _stamp(path)
        return self.evict(keep=key)

    def _open(self, path: Path, data: bytes) -> bytes:
        """Plaintext of an entry; ValueError when it does not decrypt (another key, or tampered)."""
        if not path.name.endswith(_SEALED):
            return data
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self.encryption_key is None:
            raise ValueError("encrypted entry and no key")
        try:
            return AESGCM(self.encryption_key).decrypt(data[:_NONCE], data[_NONCE:], _aad(path))
        except InvalidTag:
            raise ValueError("AES-256-GCM authentication failed (another key, or modified)") from None

    def entries(self) -> list[tuple[int, int, str]]:
        """(last use in ns, bytes, key), least recently used first."""
        out = []
        for path in [*self.directory.glob(f"*{_PLAIN}"), *self.directory.glob(f"*{_SEALED}")]:
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            out.append((st.st_mtime_ns, st.st_size, path.name.split(".", 1)[0]))
        return sorted(out)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        evicted = []
        for _, size, key in entries:
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            for suffix in (_PLAIN, _SEALED):
                self.directory.joinpath(key + suffix).unlink(missing_ok=True)
            total -= size
            evicted.append(key)
        return evicted


def _seal(key: bytes, path: Path, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, data, _aad(path))


def _aad(path: Path) -> bytes:
    return b"model-forensics/results-cache\x00" + path.name.encode("utf-8")


def _stamp(path: Path) -> None:
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def input_identity(request: AnalysisRequest, key: bytes | None = None) -> dict[str, Any]:
    """What besides the bundle and config decides the result, as plain data (module overrides are in
    the config hash: ``request.configured``)."""
    model_id, reference_id = _model_identity(request.model), _model_identity(request.reference_model)
    return {
        "baseline": _baseline_identity(request.population, key),
        "model": model_id,
        "patch_sources": [_bundle_sha(p, key) for p in request.sources or ()],
        "allow_model_mismatch": request.allow_model_mismatch,
        "allow_baseline_mismatch": request.allow_source_mismatch,  # the key keeps its name: old entries stay valid
        **({"reference_model": reference_id} if reference_id is not None else {}),  # old keys stay valid
        **({"failure": list(request.failure)} if request.failure is not None else {}),
        **_sibling_identity(request, key),  # only where siblings exist: old keys stay valid
    }


def _sibling_identity(request: AnalysisRequest, key: bytes | None) -> dict[str, Any]:
    """The sibling incidents the analysis would replay its fixes on (``forensics.rca.siblings``), by
    content: a sibling recorded next to the incident after a cached analysis makes the next one a miss."""
    from forensics.bundle import Bundle
    from forensics.rca.siblings import find_siblings, sibling_dirs

    incident = request.incident
    sha = incident.model.get("sha256") if isinstance(incident, Bundle) else None
    if not isinstance(incident, Bundle) or not isinstance(sha, str):
        return {}
    found = find_siblings(incident, sibling_dirs(incident, request.population), sha256=sha, encryption_key=key)
    return {"siblings": sorted(_bundle_sha(p, key) for p in found.paths)} if found.paths else {}


def _model_identity(model: Any) -> Any:
    from forensics.models.registry import LoadedModel

    if isinstance(model, LoadedModel):
        return {"sha256": model.info.sha256}
    return None if model is None else str(model)


def _bundle_sha(obj: Any, key: bytes | None) -> str:
    from forensics.bundle import Bundle, load_bundle

    bundle = obj if isinstance(obj, Bundle) else load_bundle(obj, verify=False, encryption_key=key)
    return bundle.file_sha256()


def _baseline_identity(baseline: Any, key: bytes | None) -> Any:
    from forensics.population import list_bundle_paths

    if baseline is None:
        return None
    if isinstance(baseline, list | tuple):
        return sorted(_bundle_sha(b, key) for b in baseline)
    path = Path(baseline)
    if str(baseline).endswith(".json"):
        return {"stats_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    if (path / "manifest.json").is_file() or not path.is_dir():
        return [_bundle_sha(path, key)]
    return [_bundle_sha(p, key) for p in list_bundle_paths(path)]


def cached_analyze(
    pipeline: RCAPipeline, request: AnalysisRequest, cache: ResultCache | None, *, html: str | Path | None = None
) -> dict[str, Any]:
    """``pipeline.run(request).to_dict()``, answered from ``cache`` when the same inputs were analysed
    before (then no model is loaded and no forward pass runs). ``cache=None`` just analyses. Either way
    a written report is indexed in ``output_dir``, the analysis logged (``log_analysis``), and the HTML
    page written to ``html`` when given."""
    config = pipeline.config
    request = replace(request, incidents=(_loaded(request.incident, config.encryption_key),))
    key = _key(cache, request, request.configured(config)) if cache is not None else None
    hit = cache.get(key) if cache is not None and key is not None else None
    if hit is not None:
        hit["bundle_path"] = request.incident.path  # same content, maybe another place
        log_analysis(hit, cached=True)
        report = _deliver(hit, request.output)
    else:
        report = pipeline.run(request).to_dict()
        log_analysis(report)
        if cache is not None and key is not None:
            cache.put(key, report)
    if html is not None:
        from forensics.report.html import write_html

        write_html(report, html)
    _index(config, report, request.output)
    return report


def _loaded(bundle: Any, key: bytes | None) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle, encryption_key=key)


def _key(cache: ResultCache, request: AnalysisRequest, config: Config) -> str:
    if cache.encryption_key is None and config.encryption_key is not None:
        cache.encryption_key = config.encryption_key  # the bundles' key seals the cache too: no plaintext report
    extra = input_identity(request, config.encryption_key)
    return cache_key(request.incident.file_sha256(), config_hash(config), __version__, extra)


def _deliver(report: dict[str, Any], output: str | Path | None) -> dict[str, Any]:
    """A cached report written where this call asked for it."""
    if output is not None:
        report["export_path"] = str(Path(output))
        write_json_atomic(output, report)
    return report


def _index(config: Config, report: dict[str, Any], output: str | Path | None) -> None:
    """Every written report goes into the one index ``stats`` reads: ``output_dir/index.sqlite``, wherever
    the report itself went (``analyze --output /elsewhere/rca.json`` included)."""
    if output is None:
        return
    from forensics.ops.stats import index_result

    index_result(config.output_dir, report, output)
