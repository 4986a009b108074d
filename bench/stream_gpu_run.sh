#!/bin/bash
# offload/ (issue 5) GPU run: CUDA ring tests, then streamed decode of a
# Llama-2-7B-shaped f16 model: all layers in pinned DRAM, auto plan under
# 4G, and all layers read from the file through nvme/.  Logs into $OUT.
# Carry a folder G (default build-h7/gpu) holding ferry, tests/test_offload_cuda
# (from a CUDA build in build-h7/cuda) and lib/ (the .so files the GPU machine
# lacks, as bench/gpu_run.sh --pack collects them).
#   bench/stream_gpu_run.sh [G]
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
G=$(cd "${1:-$REPO/build-h7/gpu}" && pwd)
OUT=${OUT:-/tmp/h7out}; mkdir -p "$OUT"
if [ "$REPO" != /work/main ]; then mkdir -p /work && ln -sfn "$REPO" /work/main; fi
[ -e /work/main/build-h7/cuda ] || ln -sfn "$G" /work/main/build-h7/cuda
CUBLAS_DIR=$(dirname "$(find /usr/local/cuda*/ /usr/lib /opt -name 'libcublas.so.13*' 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH=$G/lib:${CUBLAS_DIR:-/usr/local/cuda/lib64}:/usr/local/cuda/lib64
T=$G/tests/test_offload_cuda
MODEL=/tmp/llama2-7b-f16.ferry
step() { echo; echo "=== $* ($(date +%T))"; }
step info; { nvidia-smi; free -g; df -h /tmp; echo "cublas: $CUBLAS_DIR"; ldd $G/ferry $T | grep 'not found'; } 2>&1 | tee "$OUT/info.log" | tail -12
step tests; $T --jobs 1 --verbose 2>&1 | tee "$OUT/tests.log" | grep -E 'offload ring|Synthesis|FAIL|Assert|skip|Crash|logit'
step synth; /usr/bin/time -v $G/ferry synth --preset llama2-7b "$MODEL" --dtype f16 2>&1 | grep -E 'Elapsed|Maximum resident|rror' | tee "$OUT/synth.log"; ls -la "$MODEL"
bench() { local name=$1; shift; step "bench $name"; env FERRY_OFFLOAD_BENCH_MODEL=$MODEL "$@" timeout 200 $T --jobs 1 --verbose --filter 'offload_cuda/streamed_decode*' 2>&1 | tee "$OUT/bench_$name.log" | grep -vE '^\[(RUN|----)'; }
bench dram FERRY_OFFLOAD_BENCH_BATCHES=1,64,256 FERRY_OFFLOAD_BENCH_RESIDENT=0
bench gpu4g FERRY_OFFLOAD_BENCH_BATCHES=1,16,64 FERRY_OFFLOAD_BENCH_GPU_MEM=4G
step drop caches; sync; echo 3 > /proc/sys/vm/drop_caches && echo dropped || echo "could not drop the page cache"
bench nvme FERRY_OFFLOAD_BENCH_BATCHES=1 FERRY_OFFLOAD_BENCH_RESIDENT=0 FERRY_OFFLOAD_BENCH_HOST_MEM=1G
step iobench; sync; echo 3 > /proc/sys/vm/drop_caches; timeout 60 $G/ferry iobench --model "$MODEL" --bs 4m --qd 16,64 2>&1 | tee "$OUT/iobench.log" | tail -8
step done
