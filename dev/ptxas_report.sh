#!/usr/bin/env bash
# What ptxas says of every kernel train_phd holds, for sm_90: registers, stack frame, spills
# and static shared memory; no GPU needed. A kernel that keeps its per-thread vectors in
# registers has no stack frame; one that spills has lost them. Fails (and says which) if a
# kernel has a stack frame or spills, except the attention kernels' generic instances
# (HD = 0: any head size, read at run time, which cannot stay in registers).
# The last line is "ptxas: N passed, M failed" (one per kernel). make test runs it where
# nvcc exists.
#   dev/ptxas_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
# train_phd.cu holds the kernels of training and inference; dev/bench_gpu.cu also the
# kernels it checks that training does not use yet (the bf16 attention).
log=$(for src in train_phd.cu dev/bench_gpu.cu; do "$NVCC" -std=c++17 -O3 -arch=sm_90 -Xptxas -v -x cu -c "$src" -o /dev/null 2>&1; done)
table=$(printf '%s\n' "$log" | awk '
    /Compiling entry function/ { name = $0; sub(/.*function .?/, "", name); sub(/.? for .*/, "", name) }
    /bytes stack frame/ { stack = $1; spills = $5 + $9 }
    /Used [0-9]+ registers/ {
        regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
        smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
        print name, regs, stack, spills, smem
    }' | sort -u | while read -r mangled regs stack spills smem; do
    demangled=$(echo "$mangled" | c++filt)
    verdict=ok
    if [ "$stack" -gt 0 ] || [ "$spills" -gt 0 ]; then
        case "$mangled" in *ILi0EE*) verdict="ok (generic instance)" ;; *) verdict=FAILED ;; esac
    fi
    printf '%-42s %4s regs %4s B stack %4s B spilled %5s B static smem  %s\n' "${demangled%%(*}" "$regs" "$stack" "$spills" "$smem" "$verdict"
done)
printf '%s\n' "$table"
total=$(printf '%s\n' "$table" | grep -c .)
failed=$(printf '%s\n' "$table" | grep -c FAILED || true)
echo "ptxas: $((total - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
