#!/usr/bin/env bash
# What a session lent a GPU runs first, in one call on a fresh machine: the native GPU
# tests, the benchmarks and the main training job, each step even when an earlier one
# failed, every log kept, the whole within 8 minutes.
#
# The GPU machine has nvcc but no network, no doctest and no corpora. So first, here:
#   dev/gpu_run.sh stage      doctest's header into .deps/ and the KJV shards into
#                             data/shards/ (both ignored by git: carry them)
# then on the GPU machine, carrying .deps and data/shards:
#   dev/gpu_run.sh [STEP]...  (no step named: all of them, in this order)
# build         nvidia-smi and every GPU binary (make -j), for sm_90 only unless NVCC_ARCH is set
# tests         make test-gpu
# bench_fp32    build/bench_gpu: the kernel lab (every kernel, fp32, TF32 and bf16) and training steps, fp32
# bench_tf32    training steps with --tf32 1 (no lab: it checked the same kernels)
# bench_bf16    training steps with --bf16 1: matmuls and attention on bf16 tensor cores
# bench_budget  the counted budget of a bf16 step (--budget) for vanilla, phd-cswa-2-16-32 and
#               phd-cswa-3-16-32: every launch's floor beside its measured time; then vanilla's
#               with the head in chunks (--logits-chunk 1024: what the chunks cost, counted +1.0 ms)
# bench_decode  build/bench_decode_gpu: KV-cache inference at GPT-2-small size, P=2048: latency against K
#               (pre-fill, ms/token, GB/s), then batch 1/8/64 throughput (issue 17: under a minute)
# train         make train (bf16 on the GPU: --dtype auto)
# train_fp32    make train in fp32 (--dtype fp32), the curve to compare bf16's with
# train_2gpu    make train on 2 ranks (mpirun -np 2, NCCL, ZeRO-1) where 2 GPUs and mpirun exist; else SKIPPED
# bench names the five bench steps: make bench-gpu's commands, each under its own limit.
# Each step runs under its own time limit (timeout; the limits below add up to 8.0 minutes,
# from the H200 run's times: build 2-3 min, tests 30 s, bench_gpu ~60 s with its lab, train 10 s),
# so that a hanging step costs only its own time. Its output, line-buffered, goes to
# $OUT/STEP.log (build/gpu-run/ without $OUT) after a timestamped header naming the limit,
# and its last lines to the screen; the last lines printed are each step's exit status,
# seconds and limit.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = stage ]; then
    set -e
    bash dev/setup.sh  # doctest, the corpora
    mkdir -p .deps
    cp -r /usr/include/doctest .deps/
    make kjv-shards
    echo "gpu_run: staged .deps ($(du -sh .deps | cut -f1)) and data/shards ($(du -sh data/shards | cut -f1)); carry both"
    exit 0
fi

# No network there: make's set-up step (dev/setup.sh) would fail; what it needs was staged.
export SETUP=0
# H100 and H200 are sm_90: building for it alone skips the Makefile's sm_80 pass.
export NVCC_ARCH=${NVCC_ARCH:--gencode arch=compute_90,code=sm_90}
out=${OUT:-build/gpu-run}
mkdir -p "$out"
# Each step's time limit in seconds and its command.
plan() {
    case $1 in
        build) limit=190 cmd="nvidia-smi; make -j\$(nproc) train_phd build/test_gpu_native build/bench_gpu build/bench_decode_gpu" ;;
        tests) limit=40 cmd="make test-gpu" ;;
        bench_fp32) limit=80 cmd="./build/bench_gpu" ;;
        bench_tf32) limit=25 cmd="./build/bench_gpu --tf32 1 --lab 0" ;;
        bench_bf16) limit=35 cmd="./build/bench_gpu --bf16 1 --lab 0" ;;
        bench_budget) limit=20 cmd="./build/bench_gpu --budget vanilla --budget phd-cswa-2-16-32 --budget phd-cswa-3-16-32; r=\$?; ./build/bench_gpu --budget vanilla --logits-chunk 1024 && exit \$r" ;;
        bench_decode) limit=40 cmd="./build/bench_decode_gpu --device cuda -P 2048 --layers 12 --dim 768 --heads 12" ;;
        train) limit=15 cmd="make train" ;;
        train_fp32) limit=15 cmd="make train TRAIN_EXTRA='--dtype fp32' TRAIN_OUT=out/kjv-fp32" ;;
        # Its limit only counts where 2 GPUs exist; elsewhere it says why it skips, at once.
        train_2gpu) limit=20 cmd="n=\$(nvidia-smi -L | wc -l); if [ \$n -lt 2 ]; then echo \"SKIPPED: \$n GPU here, a 2-rank job needs 2\";
            elif ! command -v mpirun >/dev/null; then echo 'SKIPPED: no mpirun (openmpi-bin)';
            else OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 make train TRAIN_LAUNCH='mpirun -q -np 2' TRAIN_OUT=out/kjv-2gpu; fi" ;;
        *) return 1 ;;
    esac
}
[ $# -gt 0 ] || set -- build tests bench train train_fp32 train_2gpu
steps=()
for step in "$@"; do
    if [ "$step" = bench ]; then steps+=(bench_fp32 bench_tf32 bench_bf16 bench_budget bench_decode); continue; fi
    plan "$step" || { echo "gpu_run: unknown step '$step' (build, tests, bench_fp32, bench_tf32, bench_bf16, bench_budget, bench_decode, bench, train, train_fp32, train_2gpu, or stage)" >&2; exit 2; }
    steps+=("$step")
done
start=$(date +%s)
summary=()
for step in "${steps[@]}"; do
    plan "$step"
    log=$out/$step.log
    echo "== $(date +%T) $step (limit ${limit}s): $cmd" | tee "$log"
    t0=$(date +%s)
    # stdbuf: programs that do not set their own buffering still write their lines as they go
    timeout -k 2 "$limit" stdbuf -oL -eL bash -c "$cmd" >> "$log" 2>&1
    rc=$?
    tail -n +2 "$log" | tail -n 20
    status="exit $rc"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMED OUT"; fi
    summary+=("$step: $status in $(($(date +%s) - t0)) s (limit ${limit} s, $log)")
done
printf 'gpu_run: %s\n' "${summary[@]}" "total $(($(date +%s) - start)) s"
