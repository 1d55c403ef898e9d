#!/usr/bin/env bash
# One GPU session in ONE command of at most ~8.5 minutes (run it with a 560 s limit):
#
#   bash benchmarks/gpu_session.sh                      # everything, one priority queue (benchmarks/session.py)
#   DEADLINE_S=3000 bash benchmarks/gpu_session.sh      # your own card, no hurry
#   DEADLINE_S=200 SESSION_ARGS=--followup bash benchmarks/gpu_session.sh   # a short second call
#
# Installs the wheels in .whl/ (bitsandbytes, liger-kernel, deepspeed, peft; see benchmarks/README.md)
# into /tmp/site, records the stack, then runs the queue: a canary that is also the isolation case
# (alone on the card), the max-context searches, the open questions, then calibration and held-out
# accuracy cases, several at once where their predicted peaks fit together in 85% of the card, each in
# its own process. Whatever finishes before the deadline is kept: rows are written as they end.
# Everything lands in $OUT (4 files): stack.txt, session.log, rows.jsonl, session.json. Then, anywhere:
#
#   python -m benchmarks.session --analyse DIR/rows.jsonl   # calibration, accuracy, max context, questions
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-session/export}
DEADLINE_S=${DEADLINE_S:-480}   # seconds from now until the last case must have ended
run=out/gpu-session/run
mkdir -p "$OUT" "$run"
t0=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

{
  python3 - <<'PY'
import importlib.metadata as md, os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for dist in ("transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel", "deepspeed", "triton", "nvidia-ml-py"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, None)
print("PYTORCH_CUDA_ALLOC_CONF (outer)", os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))
PY
  nvidia-smi 2>&1 | head -20
  nproc
} > "$OUT/stack.txt" 2>&1
cat "$OUT/stack.txt" >&2

left=$(( DEADLINE_S - ($(date +%s) - t0) ))
timeout --signal=INT --kill-after=15 $(( left + 20 )) \
  python3 -m benchmarks.session --device cuda --deadline-s "$left" --out-dir "$run" ${SESSION_ARGS:-} 2>&1 \
  | tee "$OUT/session.log"
status=${PIPESTATUS[0]}
cp "$run/rows.jsonl" "$run/session.json" "$OUT"/ 2>/dev/null
echo "session exit $status after $(( $(date +%s) - t0 )) s; rows: $(wc -l < "$run/rows.jsonl" 2>/dev/null || echo 0)" >&2
exit "$status"
