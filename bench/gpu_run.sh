#!/bin/bash
# gpu_run.sh — the CUDA backend's one call on the GPU machine (issue 4).
# Builds nothing.  Two modes:
#   bench/gpu_run.sh --pack [BUILD]   here: copy the CUDA build's binaries (default build-h4)
#                                     and the shared libraries the GPU machine lacks into
#                                     build-gpu/, the folder the run carries
#   bench/gpu_run.sh [STEPS]          there: run the steps (default: all) from build-gpu,
#                                     teeing every log into $OUT
# Steps: info tests bench graphs_off pdl prefill kernels attention decode_attn hf stream batch big
# accel
# (default: info tests bench graphs_off prefill kernels attention hf).  The binaries carry the paths
# they were built with (/work/main, /work/main/<build>), so the run links
# those names to the copy it runs in.
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
CARRIED=$REPO/build-gpu

if [ "${1:-}" = --pack ]; then
    BUILD=$REPO/${2:-build-h4}
    rm -rf "$CARRIED" && mkdir -p "$CARRIED/tests" "$CARRIED/lib"
    cp "$BUILD/ferry" "$CARRIED/"
    # every test that runs on the GPU: test_cuda_*, and the two that use the CUDA backend
    cp "$BUILD"/tests/test_cuda_* "$BUILD"/tests/test_offload_cuda "$BUILD"/tests/test_host_attention \
        "$CARRIED/tests/"
    strip "$CARRIED/ferry" "$CARRIED"/tests/*
    basename "$BUILD" >"$CARRIED/BUILT_AS"
    # every library outside glibc and the CUDA toolkit (the GPU machine has those)
    ldd "$CARRIED/ferry" "$CARRIED"/tests/* | awk '$3 ~ /^\// {print $3}' | sort -u |
        grep -v -e 'libc\.so' -e 'libm\.so' -e 'libdl\.so' -e 'libpthread\.so' -e 'librt\.so' \
            -e 'libresolv\.so' -e 'ld-linux' -e 'libstdc++' -e 'libgcc_s' -e 'libcublas' |
        xargs -r -I{} cp -L {} "$CARRIED/lib/"
    du -sh "$CARRIED"
    exit 0
fi

OUT=${OUT:-/tmp/ferry-gpu-out}
mkdir -p "$OUT"
STEPS=${*:-info tests bench graphs_off prefill kernels attention hf}
BUILT_AS=$(cat "$CARRIED/BUILT_AS")
if [ "$REPO" != /work/main ]; then mkdir -p /work && ln -sfn "$REPO" /work/main; fi
[ -e "/work/main/$BUILT_AS" ] || ln -sfn "$CARRIED" "/work/main/$BUILT_AS"
FERRY=/work/main/$BUILT_AS/ferry
TESTS=/work/main/$BUILT_AS/tests
# cuBLAS: the toolkit's, else the one PyTorch ships
CUBLAS_DIR=$(dirname "$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH=$CARRIED/lib:${CUBLAS_DIR:-/usr/local/cuda/lib64}:/usr/local/cuda/lib64
MODEL=/tmp/llama2-7b-f16.ferry
has_step() { [[ " $STEPS " == *" $1 "* ]]; }
step() { echo; echo "=== $* ($(date +%T))"; }

if has_step info; then
    step info
    { echo "repo $REPO"; nvidia-smi; echo "cublas: $CUBLAS_DIR"; ldd "$FERRY" "$TESTS"/* | grep 'not found'; } 2>&1 | tee "$OUT/info.log"
fi

if has_step tests; then
    : >"$OUT/tests.log"
    for test in "$TESTS"/test_cuda_* "$TESTS"/test_host_attention "$TESTS"/test_offload_cuda; do
        step "$(basename "$test")"
        "$test" --jobs 1 --verbose 2>&1 | tee -a "$OUT/tests.log" | grep -E 'Synthesis|FAIL|Fail|skip|Crash'
    done
fi

if has_step bench || has_step graphs_off || has_step pdl || has_step prefill || has_step kernels ||
    has_step attention || has_step decode_attn || has_step stream || has_step batch; then
    if [ ! -f "$MODEL" ]; then
        step synth llama2-7b f16
        "$FERRY" synth --preset llama2-7b --dtype f16 "$MODEL" 2>&1 | tail -1
    fi
fi

if has_step bench; then
    step "ferry bench: llama2-7b f16, batch 1,16,64, prompt 128, 32 decode steps"
    "$FERRY" bench --model "$MODEL" --backend cuda --batch ${BENCH_BATCHES:-1,4,16,32,64} --prompt-len 128 --gen-len 32 2>&1 | tee "$OUT/bench.log"
fi

if has_step graphs_off; then
    step "ferry bench, decode steps NOT replayed from CUDA Graphs (FERRY_GRAPHS=0)"
    FERRY_GRAPHS=0 "$FERRY" bench --model "$MODEL" --backend cuda --batch 1,16 --prompt-len 128 --gen-len 32 2>&1 | tee "$OUT/bench_graphs_off.log"
fi

if has_step pdl; then
    for knobs in FERRY_CUDA_PDL=0 FERRY_CUDA_FUSE=0 "FERRY_CUDA_PDL=0 FERRY_CUDA_FUSE=0"; do
        step "ferry bench with $knobs (no programmatic dependent launch / no fused norm and rope+KV store)"
        env $knobs "$FERRY" bench --model "$MODEL" --backend cuda --batch 1,16 --prompt-len 128 --gen-len 32 2>&1 | tee -a "$OUT/bench_knobs.log"
    done
fi

if has_step prefill; then
    step "ferry bench: prefill of 2048 tokens"
    "$FERRY" bench --model "$MODEL" --backend cuda --batch 1 --prompt-len 2048 --gen-len 8 2>&1 | tee "$OUT/prefill.log"
fi

if has_step kernels; then
    for max in 16 0; do
        step "matmul op alone, FERRY_CUDA_MATVEC_MAX=$max (0: cuBLAS for every n)"
        FERRY_CUDA_MATVEC_MAX=$max "$FERRY" bench --model "$MODEL" --backend cuda --batch 1 \
            --prompt-len 8 --gen-len 1 --kernels 2>&1 | tee "$OUT/kernels_matvec$max.log"
    done
fi

if has_step attention; then
    for kernel in simt flash; do
        step "prefill of 2048 tokens and the attention op alone, FERRY_CUDA_PREFILL_ATTN=$kernel"
        FERRY_CUDA_PREFILL_ATTN=$kernel "$FERRY" bench --model "$MODEL" --backend cuda --batch 1 \
            --prompt-len 2048 --gen-len 1 --kernels 2>&1 | tee "$OUT/attention_$kernel.log"
    done
fi

if has_step decode_attn; then
    # issue 4: the decode attention kernels, in the decode steps and alone (--kernels: the
    # decode attention op at batch 1..64 over 160..4,096 keys, GB/s and share of a copy);
    # the rows kernel also with 2 splits at every shape
    n=0
    for knobs in FERRY_CUDA_DECODE_ATTN=lanes FERRY_CUDA_DECODE_ATTN=rows \
        "FERRY_CUDA_DECODE_ATTN=rows FERRY_CUDA_ATTN_SPLITS=2"; do
        n=$((n + 1))
        step "decode attention, $knobs: bench batch 1,16, prompt 128, 32 steps, --kernels"
        env $knobs "$FERRY" bench --model "$MODEL" --backend cuda --batch 1,16 --prompt-len 128 \
            --gen-len 32 --kernels 2>&1 | tee "$OUT/decode_attn_$n.log"
    done
fi

if has_step hf; then
    step "HF transformers eager peer, llama2-7b shape fp16, batch 1,16, prompt 128, 32 steps"
    PYTHONUNBUFFERED=1 LD_LIBRARY_PATH= python3 "$REPO/bench/hf_decode.py" --batch 1,16 \
        --prompt-len 128 --gen-len 32 --attn eager 2>&1 | grep -v Warning | tee "$OUT/hf.log"
fi
if has_step stream; then
    # issue 5: every layer in pinned DRAM, and the auto plan under a 4G budget
    sbench() { local name=$1; shift; step "streamed decode: $name"
        env FERRY_OFFLOAD_BENCH_MODEL=$MODEL "$@" timeout 240 "$TESTS/test_offload_cuda" --jobs 1 --verbose \
            --filter 'offload_cuda/streamed_decode*' 2>&1 | tee "$OUT/stream_$name.log" | grep -vE '^\[(RUN|----)'; }
    sbench dram FERRY_OFFLOAD_BENCH_BATCHES=1,64,256 FERRY_OFFLOAD_BENCH_RESIDENT=0
    sbench gpu4g FERRY_OFFLOAD_BENCH_BATCHES=1,16,64 FERRY_OFFLOAD_BENCH_GPU_MEM=4G
fi

if has_step batch; then
    # issue 6: 1000 mixed requests through ferry batch vs ferry bench, same plan and batch
    step "ferry batch vs ferry bench, streamed under --gpu-mem 4G, batch 64"
    python3 "$REPO/bench/batch_requests.py" 1000 >/tmp/req.jsonl
    # the requests' mean shape (22 + 16), and the shape whose context (40 + 22 + 1 = 63)
    # equals the one ferry batch plans for (its longest prompt + max_new_tokens), so
    # both stream the same layers
    for shape in "22 16" "40 22"; do
        set -- $shape
        "$FERRY" bench --model "$MODEL" --batch 64 --prompt-len $1 --gen-len $2 --gpu-mem 4G \
            --backend cuda 2>&1 | tee -a "$OUT/batch_bench.log" | grep -A1 '^batch '
    done
    rm -f /tmp/out.jsonl
    "$FERRY" batch --model "$MODEL" --input /tmp/req.jsonl --output /tmp/out.jsonl --batch 64 --greedy \
        --ignore-eos --gpu-mem 4G --backend cuda 2>&1 | tee "$OUT/batch_run.log" | tail -15
    wc -l /tmp/out.jsonl | tee -a "$OUT/batch_run.log"
fi

if has_step big; then
    # issue 5: a codellama-34b-shaped f16 model (~68 GB), generated in DRAM, under --gpu-mem 6G
    step "codellama-34b f16 in DRAM, --gpu-mem 6G"
    "$FERRY" bench --model synth:codellama-34b:f16 --gpu-mem 6G --batch 1,8 --prompt-len 128 --gen-len 8 \
        --backend cuda 2>&1 | tee "$OUT/big.log" | grep -v '^synth'
fi

if has_step accel; then
    step "HF Accelerate side by side, --gpu-mem 4G"
    FERRY="$FERRY" MODEL="$MODEL" bash "$REPO/bench/accelerate_side_by_side.sh" 2>&1 | tee "$OUT/accel.log"
fi
step done
