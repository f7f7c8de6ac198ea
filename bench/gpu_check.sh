#!/usr/bin/env bash
# The prepared GPU check (issue 25, part 6): one script, under 8 minutes on one H100, one table.
#
#     bash bench/gpu_check.sh                   # on a GPU machine: every step
#     GPU_CHECK_QUICK=1 bash bench/gpu_check.sh # bounded: also skips the long CPU steps (the test's mode)
#
# Steps: `make demo` on device auto (CUDA); fidelity of a bundle recorded on CPU replayed on CUDA and
# the reverse; bf16 on CUDA (record, replay, a head zero); a family of 8 members against one on CUDA
# (bench/family_cost.py: the family issue's <= 2x goal); the head sweep against TransformerLens and
# nnsight and the AtP recall bench (both as their scripts run them); two Ray actors of 0.5 GPU each
# replaying on CUDA. Each step prints one row: step, result, seconds. Without a CUDA device a CUDA
# step prints "skipped: no CUDA device"; a failed step is reported and the script goes on. Exit status:
# 1 when a step failed, else 0. Environment: PY (default .venv/bin/python), STEP_TIMEOUT (seconds a
# step may take, default 150), GPU_CHECK_BUDGET (seconds for all of it, default 460; a step that
# would start later fails unstarted), GPU_CHECK_WORK (scratch directory, default a fresh temporary one).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STEP_TIMEOUT=${STEP_TIMEOUT:-150}
BUDGET=${GPU_CHECK_BUDGET:-460}  # seconds for the whole check: under 8 minutes, whatever a step does
QUICK=${GPU_CHECK_QUICK:-0}
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ROWS=()
FAILED=0
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

# step NAME NEEDS(cuda|cpu-long|none) COMMAND...: run it under a timeout, keep its last output line.
step() {
    local name=$1 needs=$2
    shift 2
    local result status start=$SECONDS file=$WORK/${name//[^A-Za-z0-9]/_}
    local limit=$((BUDGET - SECONDS < STEP_TIMEOUT ? BUDGET - SECONDS : STEP_TIMEOUT))
    if [[ $needs == cuda && $CUDA != 1 ]]; then
        result="skipped: no CUDA device"
    elif [[ $needs == cpu-long && $QUICK == 1 ]]; then
        result="skipped: quick mode (GPU_CHECK_QUICK=1)"
    elif ((limit < 10)); then
        FAILED=1
        result="FAILED: not started, the check's ${BUDGET} s are spent"
    else
        timeout "$limit" bash -c '"$@"' _ "$@" >"$file.out" 2>"$file.err"
        status=$?
        result=$(tail -n 1 "$file.out")
        if [[ $status != 0 ]]; then
            FAILED=1
            local why
            why=$(tail -n 1 "$file.err" 2>/dev/null)
            [[ $status == 124 ]] && why="timed out after ${limit} s"
            result="FAILED (exit $status): ${why:-$result}"
        fi
    fi
    local row="| $name | ${result//|//} | $((SECONDS - start)) |"
    ROWS+=("$row")
    echo "$row"
}

env_info() {
    "$PY" - <<'EOF'
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, {gpu}")
EOF
}

demo_cuda() {
    # -o setup: the environment as it is (a lent machine is offline; setup would reach for pip)
    MODEL_FORENSICS_DEVICE=auto make -o setup demo >"$WORK/demo.log" 2>&1 || { tail -n 3 "$WORK/demo.log"; return 1; }
    echo "ok: $(tail -n 1 "$WORK/demo.log")"
}

cross_device() {
    WORK=$WORK "$PY" - <<'EOF'
import os
from pathlib import Path

from forensics.models import resolve_model
from forensics.record import record_greedy
from forensics.replay import Replayer

work = Path(os.environ["WORK"])
said = []
for here, there in (("cpu", "cuda"), ("cuda", "cpu")):
    rec = resolve_model("smollm2-135m", device=here)
    bundle = record_greedy(rec, "The capital of Australia is", work / f"{here}-to-{there}", "runner-up", max_new_tokens=2).bundle
    fidelity = Replayer(bundle, loaded=resolve_model("smollm2-135m", device=there)).fidelity()
    said.append(f"{here}->{there} {'faithful' if fidelity.faithful else 'UNFAITHFUL'} (logits {fidelity.max_logit_diff:.1e})")
    if not fidelity.faithful:
        print("; ".join(said))
        raise SystemExit(1)
print("; ".join(said))
EOF
}

bf16_cuda() {
    WORK=$WORK "$PY" - <<'EOF'
import os
from pathlib import Path

from forensics.models import resolve_model
from forensics.record import record_greedy
from forensics.replay import Intervention, Replayer

loaded = resolve_model("smollm2-135m", device="cuda", dtype="bfloat16")
bundle = record_greedy(loaded, "The capital of Australia is", Path(os.environ["WORK"]) / "bf16", "runner-up").bundle
rp = Replayer(bundle, loaded=loaded)
fidelity = rp.fidelity()
zero = rp.run((Intervention("model.layers.20.self_attn", "zero", "last", head=3),))
print(f"bf16 {'faithful' if fidelity.faithful else 'UNFAITHFUL'}; head zero fired {zero.hook_fires[0]}x, metric {zero.metric:+.3f}")
raise SystemExit(0 if fidelity.faithful and zero.hook_fires[0] > 0 else 1)
EOF
}

head_sweep() {
    "$PY" bench/head_sweep.py --quick --repeats 1 >"$WORK/head_sweep.log" 2>&1 || { tail -n 2 "$WORK/head_sweep.log"; return 1; }
    tail -n 1 "$WORK/head_sweep.log"
}

atp_recall() {
    "$PY" bench/atp_recall.py --only australia,turkey --output "$WORK/atp_recall.json" >"$WORK/atp.log" 2>&1 ||
        { tail -n 2 "$WORK/atp.log"; return 1; }
    tail -n 1 "$WORK/atp.log"
}

family_cost() {  # the family issue's cost goal, where a batch's rows are nearly free
    "$PY" bench/family_cost.py --device cuda --sizes 1 8 --repeat 1 --out "$WORK/family_cost.json" | tail -n 1
}

ray_actors() {
    WORK=$WORK "$PY" - <<'EOF'
import os
from pathlib import Path

import ray

from forensics.exec.ray_executor import RayExecutor
from forensics.models import resolve_model
from forensics.record import record_greedy

path = Path(os.environ["WORK"]) / "ray-incident"
record_greedy(resolve_model("smollm2-135m", device="cpu"), "The capital of Australia is", path, "runner-up")


def replay_on_gpu(bundle: str, state: dict) -> str:  # executor work: (item, the actor's state)
    from forensics.bundle import load_bundle
    from forensics.replay import Replayer, ReplayOptions

    rp = Replayer(load_bundle(bundle), options=ReplayOptions(device="cuda"))
    return f"gpu {ray.get_gpu_ids()} {'faithful' if rp.fidelity().faithful else 'UNFAITHFUL'}"


ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
try:
    executor = RayExecutor(num_actors=2, num_cpus=1, num_gpus=0.5)
    said = [f"{r}" if e is None else f"error {e}" for _, r, e in executor.map(replay_on_gpu, [str(path)] * 2)]
    executor.close()
finally:
    ray.shutdown()
print(f"2 actors x {executor.num_gpus} GPU: " + "; ".join(said))
raise SystemExit(0 if all("faithful" in s and "UN" not in s for s in said) else 1)
EOF
}

export PY WORK
export -f env_info demo_cuda cross_device bf16_cuda family_cost head_sweep atp_recall ray_actors
echo "gpu_check: CUDA=$CUDA quick=$QUICK scratch=$WORK"
step environment none env_info
step "make demo (device auto)" cuda demo_cuda
step "fidelity cpu<->cuda" cuda cross_device
step "bf16 on cuda" cuda bf16_cuda
step "family of 8 vs 1 on cuda" cuda family_cost
step "head sweep vs TL, nnsight" cpu-long head_sweep
step "AtP recall" cpu-long atp_recall
step "ray: 2 actors x 0.5 GPU" cuda ray_actors

echo
echo "| step | result | seconds |"
echo "|---|---|---:|"
printf '%s\n' "${ROWS[@]}"
echo "total ${SECONDS} s"
exit "$FAILED"
