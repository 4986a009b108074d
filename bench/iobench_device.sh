#!/usr/bin/env bash
# Everything issue 3 measures on the GPU machine, in one go: the nvme and
# iobench tests, ferry iobench against fio (carried, with its libraries),
# a sweep with --save, and --to-gpu.  Logs land in OUT.
#   bench/iobench_device.sh CARRY_DIR OUT_DIR [FILE] [SIZE]
# CARRY_DIR holds ferry, tests/, lib/ (non-system libraries) and
# fiocarry.tar.xz (fio and every library ldd lists for it).
set -uo pipefail
carry=$(cd "$1" && pwd) out=$2 file=${3:-/var/tmp/ferry-iobench.bin} size=${4:-8g}
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib
if ! "$carry/ferry" --version >/dev/null 2>&1; then   # find cuBLAS wherever the image keeps it
    extra=$(find / -xdev -name 'libcublas.so.13*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$extra
fi
# The tests have the build folder's absolute path compiled in.
mkdir -p /work/main && { [[ -e /work/main/build-gpu-h3 ]] || ln -s "$carry" /work/main/build-gpu-h3; }
{ date -u; uname -a; nproc; free -g; nvidia-smi; lsblk; df -T /var/tmp /tmp
  cat /proc/sys/kernel/io_uring_disabled; ulimit -l; } >"$out/machine.txt" 2>&1

echo "== tests"
for t in test_nvme test_iobench; do "$carry/tests/$t" --jobs 1 2>&1 | grep -v '^\[seed\]' | tail -5; done \
    | tee "$out/tests.txt"

tar xJf "$carry/fiocarry.tar.xz" -C /tmp
fio="LD_LIBRARY_PATH=/tmp/fiocarry/lib /tmp/fiocarry/fio"
env $fio --version

echo "== sweep (creates $file)"
XDG_CACHE_HOME=$out/cache "$carry/ferry" iobench --file "$file" --size "$size" --bs 128k,1m,4m,16m \
    --qd 4,16,64 --runtime 2 --save --quiet 2>&1 | tee "$out/sweep.txt"
cp "$out"/cache/ferry/profile-*.json "$out/" 2>/dev/null; rm -rf "$out/cache"

echo "== ferry vs fio"
bench/iobench_vs_fio.sh "$carry/ferry" "$fio" "$file" "$size" 4 3 128k:16 1m:16 4m:16 16m:4 \
    2>"$out/vs_fio.log" | tee "$out/vs_fio.md"

echo "== to-gpu"
"$carry/ferry" iobench --file "$file" --bs 4m --qd 16 --to-gpu --quiet 2>&1 | tee "$out/to_gpu.txt"
"$carry/ferry" iobench --file "$file" --bs 4m --qd 16 --to-gpu --json --quiet 2>&1 | tee -a "$out/to_gpu.txt"
