#!/usr/bin/env bash
# Models leave the engine (issue 17, item 6): for several variants, train a tiny model on a
# synthetic byte shard, export its checkpoint with dev/export.py, and check that the PyTorch
# reference (dev/phd_reference.py generate: float64, a full dense forward per token) continues
# prompts greedily with exactly the token ids that `train_phd --generate --temperature 0`
# (the engine's KV-cache decoder, float32) prints; also that the exported file is the
# checkpoint's values under plain torch.load, and that export.py refuses bad files with one
# line and a non-zero exit.
#   test/test_export.sh [TRAIN_PHD]      (default build/train_phd_cpu; builds nothing)
# KEEP_TMP=1 keeps the temporary directory. The last line is "N passed, M failed" (exit
# status non-zero when a check failed), or "SKIPPED: ..." (exit 0) where /usr/bin/python3
# has no torch.
set -uo pipefail
export LC_ALL=C OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/build/train_phd_cpu}
py=/usr/bin/python3

source "$(dirname "$0")/check.sh"

if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "SKIPPED: $py cannot import torch (Debian's python3-torch: apt-get install python3-torch)"
    exit 0
fi
if [ ! -x "$bin" ]; then bad "train_phd binary $bin exists (make build/train_phd_cpu)"; finish; fi

tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
run() { nice -n 10 "$@"; }  # a long study may share these cores: stay out of its way

# A synthetic byte-level shard (llm.c format: 256 int32 header, magic 20240520, version 1,
# token count; uint16 tokens) of words from a small list, so that a short training teaches
# the model something and greedy continuations are not one repeated token.
make_shard "$tmp/syn_train_000000.bin" 20000 7

# Greedy continuations of a small trained model fall into short loops that a small error in
# the model would not change; the first tokens after a prompt are what depend on the whole
# context. So each model (100 steps: it has learnt to spell some words, which takes
# attention) continues 12 prompts by 8 tokens, from 1 to 24 tokens long (bytes of these
# texts; every continuation crosses phd-cswa chunks of C = 2, the longest fill max T = 32),
# and one long continuation follows. Breaking the reference on purpose showed what this
# resolves: no chunk rule, a window one too wide, no own-copy group, hidden tokens blind to
# the previous original, naive copies blind to the copy before them, RoPE at n*K+c: each
# changed at least one continuation of every model it applies to, most of them several.
texts=("t" "e" "the" "in the" "god crea" "heaven and" "and the earth" "of the deep. " "upon the face of"
       "without form and void." "created the heaven and t" "darkness was upon the fac")
n=8
prompts=()
for t in "${texts[@]}"; do prompts+=("$(printf %s "${t:0:$((32 - n))}" | od -An -tu1 | xargs)"); done

# " PROMPT IDS | GENERATED IDS", the first line `train_phd --generate` prints without a
# tokenizer, once per prompt. (All of its output is read before the first line is taken:
# `| head -n 1` would end it with SIGPIPE, a failure under pipefail.)
engine_lines() {  # CKPT N PROMPT...
    local ckpt=$1 n=$2 o p; shift 2
    for p in "$@"; do
        o=$(run "$bin" -e "$ckpt" --device cpu --generate "$n" --prompt-ids "$p" --temperature 0) || return 1
        echo "${o%%$'\n'*}"
    done
}
# The same lines from the PyTorch reference on the exported file, then its summary line.
torch_lines() {  # PT N PROMPT...
    local pt=$1 n=$2 p args=(); shift 2
    for p in "$@"; do args+=(--prompt-ids "$p"); done
    run "$py" "$root/dev/phd_reference.py" generate "$pt" --generate "$n" "${args[@]}"
}
# On a mismatch shows both sides and the reference's smallest gap between the best and the
# second-best logit (a gap near float32 rounding would point at a near-tie, not a wrong model).
same_ids() {  # NAME CKPT PT N PROMPT...
    local name=$1 ckpt=$2 pt=$3 n=$4 want got; shift 4
    want=$(engine_lines "$ckpt" "$n" "$@") || { bad "$name: train_phd --generate failed"; return; }
    got=$(torch_lines "$pt" "$n" "$@" 2>&1) || { bad "$name: phd_reference.py generate failed: $got"; return; }
    local summary=${got##*$'\n'} ids=${got%$'\n'*}
    if [ "$ids" = "$want" ] && [ "$(echo "$want" | wc -l)" -eq "$#" ] &&
            [ "$(echo "$want" | sed 's/.*|//' | wc -w)" -eq $(($# * n)) ]; then
        ok "$name: the same $n greedy tokens after each of $# prompt(s) (${summary##*; })"
    else
        bad "$name: train_phd and the PyTorch reference (${summary##*; }) differ:"
        diff <(echo "$want") <(echo "$ids") | sed 's/^/    /'
    fi
}

# train_phd saves the last step as model_STEPS.bin and state_STEPS.bin.
steps=100
model=$(printf 'model_%08d.bin' "$steps") state=$(printf 'state_%08d.bin' "$steps")
seed=1
# exported NAME VARIANT V H HKV: trains $tmp/NAME (L = 2, D = 32) with a vocabulary of V, H
# heads and HKV KV heads, exports it to $tmp/NAME/model.pt, and checks export.py's line and
# the greedy continuations.
exported() {
    local name=$1 v=$2 V=$3 H=$4 Hkv=$5 dir=$tmp/$1 ckpt pt
    seed=$((seed + 1))
    if ! run "$bin" -i "$tmp/syn_train_*.bin" -o "$dir" --device cpu --variant "$v" --vocab "$V" --layers 2 --dim 32 \
            --heads "$H" --kv-heads "$Hkv" -b 4 -t 32 -x "$steps" -l 1e-2 -s 0 -r "$seed" > "$dir.train.log" 2>&1; then
        bad "$name: training failed ($(tail -n 1 "$dir.train.log"))"; return
    fi
    ckpt=$dir/$model pt=$dir/model.pt
    if ! run "$py" "$root/dev/export.py" "$ckpt" "$pt" > "$dir.export.log" 2>&1; then
        bad "$name: export failed ($(tail -n 1 "$dir.export.log"))"; return
    fi
    check "$name: export.py prints one summary line" grep -qx "wrote $pt: $v V=$V (E, wout with Vp=$(((V + 127) / 128 * 128)) \
rows) L=2 D=32 H=$H Hkv=$Hkv F=86 maxT=32, [0-9]* float32 parameters in 21 tensors" "$dir.export.log"
    same_ids "$name" "$ckpt" "$pt" "$n" "${prompts[@]}"
}
for v in vanilla phd-3 phd-swa-3-2 phd-cswa-2-2-2 naive-2; do exported "$v" "$v" 256 4 2; done
# A padded vocabulary, V = 120 (the shard's bytes are all below it): E and wout have Vp = 128
# rows, the last 8 padding, whose logits the engine and the reference must both leave out;
# and head size 16 (H = 2, one KV head), RoPE's frequencies twice as many as at head size 8.
exported padded phd-cswa-2-2-2 120 2 1

# The longest continuation max T allows, from the one-token prompt a sample starts with.
v=phd-cswa-2-2-2
same_ids "$v, 31 tokens" "$tmp/$v/$model" "$tmp/$v/model.pt" 31 0

# The file is a plain PyTorch object: torch.load alone (weights_only) reads it, and its
# tensors are the checkpoint's float32 payload in param_tensors order, bit for bit.
check "torch.load(weights_only=True) alone reads every exported file: its config, the checkpoint's exact float32 values" \
    run "$py" - "$tmp" "$model" <<'EOF'
import os, sys, torch
for name, variant, kind, K, W, C, V, Vp, H, Hkv in [
        ("vanilla", "vanilla", "vanilla", 1, 0, 0, 256, 256, 4, 2), ("phd-3", "phd-3", "phd", 3, 0, 0, 256, 256, 4, 2),
        ("phd-swa-3-2", "phd-swa-3-2", "phd-swa", 3, 2, 0, 256, 256, 4, 2),
        ("phd-cswa-2-2-2", "phd-cswa-2-2-2", "phd-cswa", 2, 2, 2, 256, 256, 4, 2),
        ("naive-2", "naive-2", "naive", 2, 0, 0, 256, 256, 4, 2), ("padded", "phd-cswa-2-2-2", "phd-cswa", 2, 2, 2, 120, 128, 2, 1)]:
    obj = torch.load(os.path.join(sys.argv[1], name, "model.pt"), weights_only=True)
    c, sd = obj["config"], obj["state_dict"]
    names = ["E"] + [f"layer{l}.{s}" for l in range(2)
                     for s in ("g_attn", "wq", "wk", "wv", "wo", "g_ffn", "w1", "w3", "w2")] + ["g_final", "wout"]
    payload = open(os.path.join(sys.argv[1], name, sys.argv[2]), "rb").read()[1024:]
    flat = torch.cat([sd[n].reshape(-1) for n in names])
    assert list(sd) == names, list(sd)
    assert all(t.dtype == torch.float32 for t in sd.values())
    want = dict(variant=variant, kind=kind, K=K, W=W, C=C, V=V, Vp=Vp, L=2, D=32, H=H, Hkv=Hkv, F=86, maxT=32,
                params=flat.numel())
    assert c == want, (c, want)
    # H * hd = 32 query rows; Hkv * hd = 16 key rows at both (H, Hkv) = (4, 2) and (2, 1)
    assert sd["E"].shape == (Vp, 32) and sd["wout"].shape == (Vp, 32) and sd["layer0.wq"].shape == (32, 32)
    assert sd["layer0.wk"].shape == (16, 32) and sd["layer1.w2"].shape == (32, 86) and sd["g_final"].shape == (32,)
    assert not sd["E"][V:].any() and not sd["wout"][V:].any(), name  # the padding rows, zero as the checkpoint's
    assert flat.numpy().astype("<f4").tobytes() == payload, name
EOF

# Bad inputs: one line `error: ...` on stderr, exit 1, nothing on stdout, no OUT.pt left.
src=$tmp/vanilla
head -c 3000 "$src/$model" > "$tmp/truncated.bin"
head -c 500 "$src/$model" > "$tmp/short.bin"
{ cat "$src/$model"; printf 'xxxx'; } > "$tmp/longer.bin"
cp "$src/$model" "$tmp/badconfig.bin"
printf '\x07\x00\x00\x00' | dd of="$tmp/badconfig.bin" bs=1 seek=$((4 * 6)) conv=notrunc status=none  # H = 7: D % H != 0
refused() {  # NAME FILE PATTERN
    local out=$tmp/refused.pt rc=0
    run "$py" "$root/dev/export.py" "$2" "$out" > "$tmp/refused.out" 2> "$tmp/refused.err" || rc=$?
    if [ "$rc" -eq 1 ] && [ ! -s "$tmp/refused.out" ] && [ "$(wc -l < "$tmp/refused.err")" -eq 1 ] &&
            grep -q "^error: $2: .*$3" "$tmp/refused.err" && [ ! -e "$out" ] && [ ! -e "$out.tmp" ]; then
        ok "export.py refuses $1: $(cat "$tmp/refused.err")"
    else
        bad "export.py refuses $1 (exit $rc, want 1 and one line matching '$3'): $(head -c 400 "$tmp/refused.err")"
    fi
}
refused "a truncated checkpoint" "$tmp/truncated.bin" "file has 3000 bytes, its header implies"
refused "a file shorter than the header" "$tmp/short.bin" "truncated file"
refused "trailing bytes" "$tmp/longer.bin" "its header implies"
refused "a training state" "$src/$state" "bad magic 20261125 .*training state"
refused "a token shard" "$tmp/syn_train_000000.bin" "bad magic 20240520"
refused "an invalid config" "$tmp/badconfig.bin" "invalid model config: D must be a multiple of H"
refused "a missing file" "$tmp/missing.bin" "No such file"

# The reference's loader refuses what is not an exported model, in one line.
rc=0; run "$py" "$root/dev/phd_reference.py" generate "$src/$model" --prompt-ids 1 --generate 1 \
    > /dev/null 2> "$tmp/ref.err" || rc=$?
one_error_line() { [ "$1" -eq 1 ] && [ "$(wc -l < "$2")" -eq 1 ] && grep -q '^error: ' "$2"; }
check "phd_reference.py generate refuses a raw checkpoint: $(head -c 200 "$tmp/ref.err")" one_error_line "$rc" "$tmp/ref.err"

finish
