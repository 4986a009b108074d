#!/usr/bin/env bash
# Side by side: `ferry iobench` and fio (io_uring, O_DIRECT) on the same
# file, block size and queue depth, sequential reads, alternating runs so
# drift hits both alike.  Prints one markdown row per (bs, qd) with the
# median GB/s (1e9 B/s) of each and the ratios.  Two fio peers: fio as the
# issue names it (io_uring, direct=1, same bs and iodepth) and fio given
# what ferry uses (registered buffers and files, 2 MiB-aligned memory).
#   bench/iobench_vs_fio.sh FERRY FIO FILE [SIZE] [RUNTIME_S] [REPS] [BS:QD ...]
# FIO may be "LD_LIBRARY_PATH=dir dir/fio" style: it is run through env.
set -euo pipefail
ferry=$1 fio=$2 file=$3 size=${4:-4g} runtime=${5:-5} reps=${6:-3}
shift $(( $# < 6 ? $# : 6 ))
pairs=("$@")
[[ ${#pairs[@]} -gt 0 ]] || pairs=(128k:16 1m:4 1m:16 1m:64 4m:16 16m:8)
[[ -e $file ]] || "$ferry" iobench --file "$file" --size "$size" --bs 1m --qd 4 --runtime 0.5 --quiet >/dev/null

median() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

percent() { python3 -c "print('%.1f%%' % (100*$1/$2))"; }
run_fio() {
    env $fio --name=seq --filename="$file" --rw=read --bs="$bs" --iodepth="$qd" \
        --ioengine=io_uring --direct=1 --numjobs=1 --time_based --runtime="$runtime" \
        --output-format=json "$@" |
        python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["jobs"][0]["read"]["bw_bytes"]/1e9)'
}

echo "| bs | qd | fio GB/s | fio tuned GB/s | ferry GB/s | ferry/fio | ferry/fio tuned |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for pair in "${pairs[@]}"; do
    bs=${pair%%:*} qd=${pair##*:}
    fio_runs=() tuned_runs=() ferry_runs=()
    for ((r = 0; r < reps; r++)); do
        fio_runs+=("$(run_fio)")
        tuned_runs+=("$(run_fio --fixedbufs=1 --registerfiles=1 --iomem_align=2m)")
        ferry_json=$("$ferry" iobench --file "$file" --bs "$bs" --qd "$qd" --threads 1 \
            --runtime "$runtime" --json --quiet | sed -n 1p)
        ferry_runs+=("$(python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["gbps"])' <<<"$ferry_json")")
        echo "# bs=$bs qd=$qd rep=$r fio=${fio_runs[-1]} fio_tuned=${tuned_runs[-1]} ferry=${ferry_runs[-1]}" >&2
    done
    f=$(median "${fio_runs[@]}") t=$(median "${tuned_runs[@]}") b=$(median "${ferry_runs[@]}")
    echo "| $bs | $qd | $f | $t | $b | $(percent "$b" "$f") | $(percent "$b" "$t") |"
done
