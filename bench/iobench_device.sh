#!/usr/bin/env bash
# Everything issue 3 measures on the GPU machine, in one go: the nvme and
# iobench tests, ferry iobench against fio (carried, with its libraries),
# a sweep with --save, and --to-gpu.  Logs land in OUT.
#   bench/iobench_device.sh CARRY_DIR OUT_DIR [FILE] [SIZE]
# CARRY_DIR holds ferry, tests/, lib/ (non-system libraries) and
# fiocarry.tar.xz (fio and every library ldd lists for it) and this
# machine's ld-linux-x86-64.so.2.  PARTS picks steps (default: all).
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

parts=${PARTS:-tests sweep fio gpu}
has() { [[ " $parts " == *" $1 "* ]]; }
[[ -e $file ]] || "$carry/ferry" iobench --file "$file" --size "$size" --bs 4m --qd 4 --runtime 0.5 --quiet >/dev/null

if has tests; then
echo "== tests"
for t in test_nvme test_iobench; do "$carry/tests/$t" --jobs 1 2>&1 | grep -v '^\[seed\]' | tail -5; done \
    | tee "$out/tests.txt"
fi

tar xJf "$carry/fiocarry.tar.xz" -C /tmp
# fio runs under the carried loader: its carried libc must not meet another ld.so.
fio="$carry/ld-linux-x86-64.so.2 --library-path /tmp/fiocarry/lib /tmp/fiocarry/fio"
env $fio --version

if has sweep; then
echo "== sweep"
XDG_CACHE_HOME=$out/cache "$carry/ferry" iobench --file "$file" --size "$size" --bs 128k,1m,4m,16m \
    --qd 4,16,64 --runtime 2 --save --quiet 2>&1 | tee "$out/sweep.txt"
cp "$out"/cache/ferry/profile-*.json "$out/" 2>/dev/null; rm -rf "$out/cache"
fi

if has fio; then
echo "== ferry vs fio"
bench/iobench_vs_fio.sh "$carry/ferry" "$fio" "$file" "$size" 4 3 128k:16 1m:4 1m:16 4m:4 4m:16 16m:4 \
    2>"$out/vs_fio.log" | tee "$out/vs_fio.md"
fi

if has gpu; then
echo "== to-gpu"
"$carry/ferry" iobench --file "$file" --bs 4m --qd 16 --to-gpu --quiet 2>&1 | tee "$out/to_gpu.txt"
"$carry/ferry" iobench --file "$file" --bs 4m --qd 16 --to-gpu --json --quiet 2>&1 | tee -a "$out/to_gpu.txt"
fi
