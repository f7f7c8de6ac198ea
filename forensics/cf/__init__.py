"""Compression Forensics (CF): where the incident's activations compress unlike the population's.

    stats = build_cf_stats(population, config.modules.cf)      # the CF statistics of the population
    metrics = analyze_cf(incident, stats, config.modules.cf)  # per module: ratio, z-score, is_anomalous
    rank_layers(metrics)                                       # layers by where an anomaly starts

Words: the *population* (benign runs of the same model) and its *CF statistics* (the compression
baseline, also a JSON file: ``CFStats.to_json``). Modules: ``coding`` (compressors and the
arithmetic-code length), ``stats`` (the CF statistics), ``scores`` (per-module scores of one bundle),
``localise`` (layers by onset), ``triage`` (a directory of bundles ranked without a model).
"""

from forensics.cf.coding import compression_ratios
from forensics.cf.localise import layer_of, rank_layers
from forensics.cf.scores import CompressionMetric, analyze_cf
from forensics.cf.stats import CFStats, build_cf_stats
from forensics.cf.triage import triage

__all__ = [
    "CFStats",
    "CompressionMetric",
    "analyze_cf",
    "build_cf_stats",
    "compression_ratios",
    "layer_of",
    "rank_layers",
    "triage",
]
