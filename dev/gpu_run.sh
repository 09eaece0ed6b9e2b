#!/usr/bin/env bash
# What a session lent a GPU runs first: the native GPU tests, the benchmarks and the main
# training job, each step even when an earlier one failed, every log kept.
#
# The GPU machine has nvcc but no network, no doctest and no corpora. So first, here:
#   dev/gpu_run.sh stage      doctest's header into .deps/ and the KJV shards into
#                             data/shards/ (both ignored by git: carry them)
# then on the GPU machine, carrying .deps and data/shards, within one call's 10 minutes:
#   dev/gpu_run.sh [build] [tests] [bench] [train]     (no step named: all four)
# build: nvidia-smi and every GPU binary (make -j); tests: make test-gpu; bench: make
# bench-gpu (kernel lab, fp32 and TF32, then the decode benchmark); train: make train.
# Each step's output goes to $OUT/STEP.log (build/gpu-run/ without $OUT) and its last
# lines to the screen; the last lines printed are each step's exit status and seconds.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = stage ]; then
    set -e
    [ -f /usr/include/doctest/doctest.h ] || { echo "gpu_run: no /usr/include/doctest here (apt-get install doctest-dev)" >&2; exit 1; }
    mkdir -p .deps
    cp -r /usr/include/doctest .deps/
    make kjv-shards
    echo "gpu_run: staged .deps ($(du -sh .deps | cut -f1)) and data/shards ($(du -sh data/shards | cut -f1)); carry both"
    exit 0
fi

out=${OUT:-build/gpu-run}
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(build tests bench train)
summary=()
for step in "${steps[@]}"; do
    case $step in
        build) cmd="nvidia-smi && make -j\$(nproc) train_phd build/test_gpu_native build/bench_gpu build/bench_decode_gpu" ;;
        tests) cmd="make test-gpu" ;;
        bench) cmd="make bench-gpu" ;;
        train) cmd="make train" ;;
        *) echo "gpu_run: unknown step '$step' (build, tests, bench, train, or stage)" >&2; exit 2 ;;
    esac
    echo "== $step: $cmd"
    t0=$(date +%s)
    bash -c "$cmd" > "$out/$step.log" 2>&1
    rc=$?
    tail -n 25 "$out/$step.log"
    summary+=("$step: exit $rc in $(($(date +%s) - t0)) s ($out/$step.log)")
done
printf 'gpu_run: %s\n' "${summary[@]}"
