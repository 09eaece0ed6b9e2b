#!/usr/bin/env bash
# Our CPU training step against llm.c's CPU trainer on the same machine, in the same run:
#   dev/llmc_compare.sh LLMC_DIR [ROUNDS]
# LLMC_DIR: a checkout of github.com/karpathy/llm.c (train_gpt2.c, llmc/, Makefile; measured
# at commit f1e2ace). Its train_gpt2.c is copied to a temporary directory, set to B = 4, T =
# 256 and 6 steps (sed on its `int T = 64;` and its 40-step loop), and built by its own
# Makefile (CC=gcc: its OpenMP flags); the inputs it reads are written here: gpt2_124M.bin, a
# GPT-2 of L = 4, C = 256, 4 heads, V = 50257 (Vp 50304), max T 256 in llm.c's checkpoint
# format (magic 20240326, version 3) with random weights, and tiny_shakespeare_train/val.bin
# of random tokens (llm.c's shard format). Then, ROUNDS times (default 2), alternating: llm.c's
# steps ("took X ms", steps 1-6: step 0 warms up) and build/bench_cpu's vanilla step at the
# same sizes (L=4 D=256 H=4, B=4 T=256; best of 5 after a warm-up). Both use OMP_NUM_THREADS
# (default: every core). Prints each run, then the best of each and their ratio. The models
# differ as their designs do (GPT-2: LayerNorm, GELU MLP of 4C, biases, tied head; ours:
# RMSNorm, SwiGLU of F = 683, RoPE, untied head): the same shapes of every large product.
set -euo pipefail
llmc=${1:?usage: dev/llmc_compare.sh LLMC_DIR [ROUNDS]}
rounds=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$llmc/train_gpt2.c" ] && [ -d "$llmc/llmc" ] && [ -f "$llmc/Makefile" ] ||
    { echo "error: $llmc: not an llm.c checkout (needs train_gpt2.c, llmc/, Makefile)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$llmc/train_gpt2.c" "$llmc/llmc" "$llmc/Makefile" "$tmp/"
sed -i 's/int T = 64;/int T = 256;/; s/step <= 40;/step <= 6;/' "$tmp/train_gpt2.c"
grep -q 'int T = 256;' "$tmp/train_gpt2.c" && grep -q 'step <= 6;' "$tmp/train_gpt2.c" ||
    { echo "error: $llmc/train_gpt2.c: no 'int T = 64;' or 'step <= 40;' to set (another version?)" >&2; exit 1; }
make -s -C "$tmp" train_gpt2 CC=gcc > "$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; exit 1; }
make -s -C "$root" build/bench_cpu

/usr/bin/python3 - "$tmp" <<'EOF'
import array, os, random, struct, sys
d = sys.argv[1]
L, C, H, V, Vp, maxT = 4, 256, 4, 50257, 50304, 256
rnd = random.Random(1)
block = array.array("f", [rnd.gauss(0, 0.02) for _ in range(4096)])
def normal(n):  # random-looking small weights, quickly: a fixed random block, repeated
    out = array.array("f", block * (n // len(block)))
    out.extend(block[: n - len(out)])
    return out
def ones(n):
    return array.array("f", [1.0]) * n
sizes = [("wte", Vp * C, normal), ("wpe", maxT * C, normal), ("ln1w", L * C, ones), ("ln1b", L * C, normal),
         ("qkvw", L * 3 * C * C, normal), ("qkvb", L * 3 * C, normal), ("attprojw", L * C * C, normal),
         ("attprojb", L * C, normal), ("ln2w", L * C, ones), ("ln2b", L * C, normal), ("fcw", L * 4 * C * C, normal),
         ("fcb", L * 4 * C, normal), ("fcprojw", L * C * 4 * C, normal), ("fcprojb", L * C, normal),
         ("lnfw", C, ones), ("lnfb", C, normal)]
with open(os.path.join(d, "gpt2_124M.bin"), "wb") as f:
    f.write(struct.pack("<256i", *([20240326, 3, maxT, V, L, H, C, Vp] + [0] * 248)))
    for _, n, make in sizes:
        make(n).tofile(f)
os.makedirs(os.path.join(d, "dev/data/tinyshakespeare"))
for split, n in (("train", 200000), ("val", 50000)):
    with open(os.path.join(d, f"dev/data/tinyshakespeare/tiny_shakespeare_{split}.bin"), "wb") as f:
        f.write(struct.pack("<256i", *([20240520, 1, n] + [0] * 253)))
        array.array("H", [rnd.randrange(V) for _ in range(n)]).tofile(f)
EOF

best_llmc=1e30 best_ours=1e30
for r in $(seq "$rounds"); do
    out=$(cd "$tmp" && ./train_gpt2 2>&1) || { echo "$out" | tail -n 5 >&2; exit 1; }
    llmc_ms=$(echo "$out" | awk '/^step [1-9][0-9]*: train loss/ { t = $(NF - 1); sub(/\(took /, "", t); if (b == "" || t + 0 < b) b = t + 0 } END { print b }')
    ours_ms=$("$root/build/bench_cpu" 5 vanilla | awk '$1 == "vanilla" { print $2 }')
    echo "round $r: llm.c train_gpt2.c ${llmc_ms} ms/step, phd vanilla ${ours_ms} ms/step ($OMP_NUM_THREADS threads)"
    best_llmc=$(awk -v a="$best_llmc" -v b="$llmc_ms" 'BEGIN { print (b < a ? b : a) }')
    best_ours=$(awk -v a="$best_ours" -v b="$ours_ms" 'BEGIN { print (b < a ? b : a) }')
done
awk -v l="$best_llmc" -v o="$best_ours" 'BEGIN { printf "best: llm.c %.1f ms/step, phd %.1f ms/step: phd takes %.2fx llm.c'"'"'s time\n", l, o, o / l }'
