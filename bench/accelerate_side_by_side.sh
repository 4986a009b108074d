#!/bin/bash
# accelerate_side_by_side.sh — ferry and HF Accelerate on the same machine, in
# one log, under the same GPU memory cap (issue 5): a Llama-2-7B-shaped fp16
# model with random weights, prompt 128, 8 new tokens, greedy, decode
# tokens/s counted as FlexGen counts them (batch x 7 / decode time).
#   HF Accelerate: bench/hf_accelerate.py, max_memory {0: CAP, "cpu": 100GiB}
#   ferry:         ferry bench --model M --gpu-mem CAP --gen-len 7 (the prefill
#                  makes the first new token, 7 decode steps the other 7)
# M defaults to synth:llama2-7b:f16, generated in memory (no file to write).
# Carry a folder G (default build-gpu) holding ferry and lib/ (the .so files
# the GPU machine lacks, as bench/gpu_run.sh --pack collects them).
#   bench/accelerate_side_by_side.sh [--batch 1,16,64] [--gpu-mem 4] [--model M]
#                                    [--skip-hf] [--skip-ferry] [G]
# Logs into $OUT: hf_accelerate.jsonl / .log, ferry_bench.log, side_by_side.log.
# BACKEND=cpu (with a tiny --model) checks the ferry half and the table anywhere.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
BATCHES=1,16,64
GPU_GIB=4
MODEL=synth:llama2-7b:f16
RUN_HF=1 RUN_FERRY=1
G=$REPO/build-gpu
while [ $# -gt 0 ]; do
    case $1 in
        --batch) BATCHES=$2; shift 2 ;;
        --gpu-mem) GPU_GIB=${2%G*}; GPU_GIB=${GPU_GIB%GiB}; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --skip-hf) RUN_HF=0; shift ;;
        --skip-ferry) RUN_FERRY=0; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) G=$1; shift ;;
    esac
done
OUT=${OUT:-/tmp/side-by-side}
mkdir -p "$OUT"
LOG=$OUT/side_by_side.log
# cuBLAS: the toolkit's, else the one PyTorch ships
CUBLAS_DIR=$(dirname "$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)" 2>/dev/null)
FERRY_LIBS=$G/lib:${CUBLAS_DIR:-/usr/local/cuda/lib64}:/usr/local/cuda/lib64
step() { echo; echo "=== $* ($(date +%T))"; } 2>&1
{
    step "side by side: batch $BATCHES, GPU cap ${GPU_GIB} GiB, model $MODEL"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    free -g | head -2
    python3 -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__)'
} 2>&1 | tee "$LOG"

if [ "$RUN_HF" = 1 ]; then
    step "HF Accelerate (bench/hf_accelerate.py)" | tee -a "$LOG"
    # the python's own libraries, not ferry's carried ones
    python3 "$REPO/bench/hf_accelerate.py" --batch "$BATCHES" --prompt-len 128 --new-tokens 8 \
        --gpu-mem "${GPU_GIB}GiB" --cpu-mem 100GiB \
        >"$OUT/hf_accelerate.jsonl" 2>"$OUT/hf_accelerate.log"
    echo "exit $?" >>"$OUT/hf_accelerate.log"
    cat "$OUT/hf_accelerate.log" "$OUT/hf_accelerate.jsonl" | tee -a "$LOG"
fi

if [ "$RUN_FERRY" = 1 ]; then
    step "ferry bench --gpu-mem ${GPU_GIB}G" | tee -a "$LOG"
    LD_LIBRARY_PATH=$FERRY_LIBS "$G/ferry" bench --model "$MODEL" --gpu-mem "${GPU_GIB}G" \
        --batch "$BATCHES" --prompt-len 128 --gen-len 7 --backend "${BACKEND:-cuda}" 2>&1 |
        tee "$OUT/ferry_bench.log" | tee -a "$LOG"
fi

# One table: decode tokens/s per batch from both logs.
step "decode tokens/s (FlexGen's count: batch x 7 / decode time)" | tee -a "$LOG"
python3 - "$OUT/hf_accelerate.jsonl" "$OUT/ferry_bench.log" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
hf, ferry = {}, {}
try:
    for line in open(sys.argv[1]):
        if line.startswith("{"):
            row = json.loads(line)
            if row.get("kind") == "accelerate_decode":
                hf[row["batch"]] = row["decode_tok_s"]
except OSError:
    pass
try:
    header = None
    for line in open(sys.argv[2]):
        fields = line.split()
        if fields[:1] == ["batch"]:
            header = fields
        elif header and fields and fields[0].isdigit() and len(fields) >= 4:
            ferry[int(fields[0])] = float(fields[3])   # batch, prefill t/s, TFLOP/s, decode t/s
except OSError:
    pass
print(f"{'batch':>5} {'HF Accelerate':>14} {'ferry':>10} {'ferry / HF':>11}")
for batch in sorted(set(hf) | set(ferry)):
    a, f = hf.get(batch), ferry.get(batch)
    ratio = f"{f / a:.1f}x" if a and f else "-"
    print(f"{batch:>5} {a if a is not None else float('nan'):>14.2f} "
          f"{f if f is not None else float('nan'):>10.2f} {ratio:>11}")
print(json.dumps({"kind": "side_by_side", "hf_accelerate_decode_tok_s": hf,
                  "ferry_decode_tok_s": ferry}))
EOF
step "done" | tee -a "$LOG"
