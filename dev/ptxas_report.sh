#!/usr/bin/env bash
# What ptxas says of every kernel train_phd holds, for sm_90: registers (and the largest block
# they allow: a launch past it fails on a GPU), __launch_bounds__, stack frame, spills and static
# shared memory; no GPU needed. A kernel that keeps its per-thread vectors in registers has no
# stack frame; one that spills has lost them. Fails (and says which) if a kernel has a stack
# frame or spills, except the attention kernels' generic instances (HD = 0: any head size,
# read at run time, which cannot stay in registers), or if a compile fails. The last line is
# "ptxas: N passed, M failed" (one per kernel).
# It reads the log and PTX the Makefile's nvcc build of train_phd leaves in build/ptxas/ (make
# test builds it first), and compiles train_phd.cu itself, for sm_90, where they are missing
# or older than the source.
#   dev/ptxas_report.sh                the report
#   dev/ptxas_report.sh --table FILE   writes the table the emulation checks launches against
#                                      (test/cuda_emu_limits.h): each kernel's mangled name,
#                                      registers and static shared memory (the largest over the
#                                      architectures built) and __launch_bounds__ (0: none)
set -euo pipefail
export LC_ALL=C  # sort and join agree on the order
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
mkdir -p build/ptxas
# train_phd.cu holds every kernel: they all live in kernels/, which it includes (dev/ and the
# tests' sources define none of the engine's).
logs=()
for pair in train_phd.cu:train_phd; do
    src=${pair%%:*} log=build/ptxas/${pair##*:}.log
    if [ ! -f "$log" ] || [ ! -f "${log%.log}.ptx" ] || [ -n "$(find "$src" model.h kernels data dev -newer "$log" -name '*.c*' -o -newer "$log" -name '*.h' | head -n 1)" ]; then
        keep=${log%.log}.keep
        rm -rf "$keep" && mkdir -p "$keep"
        "$NVCC" -std=c++17 -O3 -arch=sm_90 --keep --keep-dir "$keep" -Xptxas -v -x cu -c "$src" -o /dev/null > "$log.tmp" 2>&1 ||
            { cat "$log.tmp"; echo "ptxas: 0 passed, 1 failed ($src does not compile)"; exit 1; }
        cat "$keep"/*.ptx > "${log%.log}.ptx"
        rm -rf "$keep"
        mv "$log.tmp" "$log"
    fi
    logs+=("$log")
done
# Each kernel's __launch_bounds__, from its PTX entry's .maxntid.
bounds=$(for log in "${logs[@]}"; do cat "${log%.log}.ptx"; done | awk '
    /\.entry / { name = $0; sub(/.*\.entry[ \t]+/, "", name); sub(/\(.*/, "", name) }
    /^\.maxntid/ { n = $2; sub(/,/, "", n); print name, n }' | sort -u)
# One line per kernel and architecture: mangled name, architecture, registers, stack frame,
# spilled bytes, static shared memory.
entries=$(cat "${logs[@]}" | awk '
    /Compiling entry function/ { name = $0; sub(/.*function .?/, "", name); sub(/.? for .*/, "", name); arch = $NF; gsub(/\047/, "", arch) }
    /bytes stack frame/ { stack = $1; spills = $5 + $9 }
    /Used [0-9]+ registers/ {
        regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
        smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
        print name, arch, regs, stack, spills, smem
    }' | sort -u)
if [ "${1:-}" = --table ]; then  # the largest over the architectures
    printf '%s\n' "$entries" | awk '
        { if ($3 + 0 > r[$1] + 0) r[$1] = $3; if ($6 + 0 >= s[$1] + 0) s[$1] = $6 }
        END { for (n in r) print n, r[n], s[n] }' | sort |
        join -a 1 -e 0 -o 1.1,1.2,1.3,2.2 - <(printf '%s\n' "$bounds") > "$2.tmp"
    mv "$2.tmp" "$2"
    exit 0
fi
table=$(printf '%s\n' "$entries" | awk '$2 == "sm_90" { print $1, $3, $4, $5, $6 }' | while read -r mangled regs stack spills smem; do
    demangled=$(echo "$mangled" | c++filt)
    bound=$(printf '%s\n' "$bounds" | awk -v n="$mangled" '$1 == n { print $2 }')
    verdict=ok
    if [ "$stack" -gt 0 ] || [ "$spills" -gt 0 ]; then
        case "$mangled" in *ILi0EE*) verdict="ok (generic instance)" ;; *) verdict=FAILED ;; esac
    fi
    # The largest block the register file (64K registers, given out 256 a warp) allows.
    warp_regs=$(( (regs * 32 + 255) / 256 * 256 )); most=$(( 65536 / warp_regs * 32 )); [ "$most" -gt 1024 ] && most=1024
    printf '%-42s %4s regs (blocks <= %4s threads, bounds %4s) %4s B stack %4s B spilled %5s B static smem  %s\n' \
        "${demangled%%(*}" "$regs" "$most" "${bound:--}" "$stack" "$spills" "$smem" "$verdict"
done)
printf '%s\n' "$table"
total=$(printf '%s\n' "$table" | grep -c .)
failed=$(printf '%s\n' "$table" | grep -c FAILED || true)
[ "$total" -gt 0 ] || { echo "ptxas: 0 passed, 1 failed (no kernel in the logs)"; exit 1; }
echo "ptxas: $((total - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
