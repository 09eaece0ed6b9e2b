#!/usr/bin/env bash
# Models leave the engine (issue 17, item 6): for several variants, train a tiny model on a
# synthetic byte shard, export its checkpoint with dev/export.py, and check that the PyTorch
# reference (dev/phd_reference.py generate: float64, a full dense forward per token) continues
# prompts greedily with exactly the token ids that `train_phd --generate --temperature 0`
# (the engine's KV-cache decoder, float32) prints; also that the exported file is the
# checkpoint's values under plain torch.load, and that export.py refuses bad files with one
# line and a non-zero exit.
#   test/test_export.sh [TRAIN_PHD [TRAIN_PHD_EMU]]   (default build/train_phd_cpu; builds nothing)
# With TRAIN_PHD_EMU (the CUDA emulation's build) the multiple-choice scores are also checked
# on the emulated GPU.
# KEEP_TMP=1 keeps the temporary directory. The last line is "N passed, M failed" (exit
# status non-zero when a check failed), or "SKIPPED: ..." (exit 0) where /usr/bin/python3
# has no torch.
set -uo pipefail
export LC_ALL=C OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/build/train_phd_cpu}
emu=${2:-}
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
# Every export and every reference generation runs in one Python process (each import of
# torch costs ~2 s): a job is export.py's or `phd_reference.py generate`'s own main(argv),
# its output and exit status kept as the command line would give them (the command lines
# themselves run in the refusals below).
jobs=$tmp/torch_jobs.tsv
job() { local IFS=$'\t'; echo "$*" >> "$jobs"; }  # PREFIX export|generate ARGS...
run_jobs() {
run "$py" - "$root/dev" "$jobs" <<'EOF'
import contextlib, sys, traceback
sys.path.insert(0, sys.argv[1])
import export, phd_reference
for line in open(sys.argv[2]):
    prefix, what, *args = line.rstrip("\n").split("\t")
    with open(prefix + ".out", "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:  # a job that raises fails alone, its traceback in its own output
            rc = (export.main if what == "export" else phd_reference.generate_main)(args)
        except BaseException as e:
            traceback.print_exc()
            rc = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
    open(prefix + ".rc", "w").write(f"{rc}\n")
EOF
}
# Queues the reference's greedy continuations of the prompts, from the exported file.
torch_lines() {  # PREFIX PT N PROMPT...
    local prefix=$1 pt=$2 n=$3 p args=(); shift 3
    for p in "$@"; do args+=(--prompt-ids "$p"); done
    job "$prefix" generate "$pt" --generate "$n" "${args[@]}"
}
# On a mismatch shows both sides and the reference's smallest gap between the best and the
# second-best logit (a gap near float32 rounding would point at a near-tie, not a wrong model).
same_ids() {  # NAME CKPT PREFIX N PROMPT...: PREFIX is torch_lines's, after run_jobs
    local name=$1 ckpt=$2 prefix=$3 n=$4 want got; shift 4
    want=$(engine_lines "$ckpt" "$n" "$@") || { bad "$name: train_phd --generate failed"; return; }
    got=$(cat "$prefix.out" 2>&1)
    [ "$(cat "$prefix.rc" 2>&1)" = 0 ] || { bad "$name: phd_reference.py generate failed: $got"; return; }
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
# exported NAME VARIANT V H HKV [BLOCK]: trains $tmp/NAME (L = 2, D = 32) with a vocabulary of
# V, H heads and HKV KV heads (and --block BLOCK, llama by default), and queues its export to
# $tmp/NAME/model.pt and the reference's continuations; after run_jobs, `checked NAME` checks
# export.py's line and the greedy continuations.
declare -A lines=()  # the line export.py must print for each model
models=()            # every model queued, in order
exported() {
    local name=$1 v=$2 V=$3 H=$4 Hkv=$5 block=${6:-llama} dir=$tmp/$1 tensors=21 blockline="qk-norm 0 norm pre z-loss 0"
    [ "$block" = olmo2 ] && tensors=25 blockline="qk-norm 1 norm reordered z-loss 1e-05"
    seed=$((seed + 1))
    if ! run "$bin" -i "$tmp/syn_train_*.bin" -o "$dir" --device cpu --variant "$v" --vocab "$V" --layers 2 --dim 32 \
            --heads "$H" --kv-heads "$Hkv" --block "$block" -b 4 -t 32 -x "$steps" -l 1e-2 -s 0 -r "$seed" > "$dir.train.log" 2>&1; then
        bad "$name: training failed ($(tail -n 1 "$dir.train.log"))"; return
    fi
    models+=("$name")
    lines[$name]="wrote $dir/model.pt: $v V=$V (E, wout with Vp=$(((V + 127) / 128 * 128)) \
rows) L=2 D=32 H=$H Hkv=$Hkv F=86 maxT=32, [0-9]* float32 parameters in $tensors tensors, block $blockline"
    job "$dir.export" export "$dir/$model" "$dir/model.pt"
    torch_lines "$dir.torch" "$dir/model.pt" "$n" "${prompts[@]}"
}
checked() {  # NAME
    local dir=$tmp/$1
    if [ "$(cat "$dir.export.rc" 2>&1)" != 0 ]; then bad "$1: export failed ($(tail -n 1 "$dir.export.out" 2>&1))"; return; fi
    check "$1: export.py prints one summary line" grep -qx "${lines[$1]}" "$dir.export.out"
    same_ids "$1" "$dir/$model" "$dir.torch" "$n" "${prompts[@]}"
}
for v in vanilla phd-3 phd-swa-3-2 phd-cswa-2-2-2 naive-2; do exported "$v" "$v" 256 4 2; done
# A padded vocabulary, V = 120 (the shard's bytes are all below it): E and wout have Vp = 128
# rows, the last 8 padding, whose logits the engine and the reference must both leave out;
# and head size 16 (H = 2, one KV head), RoPE's frequencies twice as many as at head size 8.
exported padded phd-cswa-2-2-2 120 2 1
# The OLMo 2 block (model.h §10): its gains and options travel, and the reference generates alike.
exported olmo2 phd-cswa-2-2-2 256 4 2 olmo2

# The longest continuation max T allows, from the one-token prompt a sample starts with.
v=phd-cswa-2-2-2
torch_lines "$tmp/long.torch" "$tmp/$v/model.pt" 31 0
check "the reference's jobs ran (one Python process)" run_jobs
for name in "${models[@]}"; do checked "$name"; done
same_ids "$v, 31 tokens" "$tmp/$v/$model" "$tmp/long.torch" 31 0

# The file is a plain PyTorch object: torch.load alone (weights_only) reads it, and its
# tensors are the checkpoint's float32 payload in param_tensors order, bit for bit.
check "torch.load(weights_only=True) alone reads every exported file: its config, the checkpoint's exact float32 values" \
    run "$py" - "$tmp" "$model" <<'EOF'
import os, sys, torch
for name, variant, kind, K, W, C, V, Vp, H, Hkv in [
        ("vanilla", "vanilla", "vanilla", 1, 0, 0, 256, 256, 4, 2), ("phd-3", "phd-3", "phd", 3, 0, 0, 256, 256, 4, 2),
        ("phd-swa-3-2", "phd-swa-3-2", "phd-swa", 3, 2, 0, 256, 256, 4, 2),
        ("phd-cswa-2-2-2", "phd-cswa-2-2-2", "phd-cswa", 2, 2, 2, 256, 256, 4, 2),
        ("naive-2", "naive-2", "naive", 2, 0, 0, 256, 256, 4, 2), ("padded", "phd-cswa-2-2-2", "phd-cswa", 2, 2, 2, 120, 128, 2, 1),
        ("olmo2", "phd-cswa-2-2-2", "phd-cswa", 2, 2, 2, 256, 256, 4, 2)]:
    obj = torch.load(os.path.join(sys.argv[1], name, "model.pt"), weights_only=True)
    c, sd = obj["config"], obj["state_dict"]
    olmo2 = name == "olmo2"  # model.h §10: g_q and g_k after w2
    names = ["E"] + [f"layer{l}.{s}" for l in range(2)
                     for s in ("g_attn", "wq", "wk", "wv", "wo", "g_ffn", "w1", "w3", "w2") + ("g_q", "g_k") * olmo2] + ["g_final", "wout"]
    payload = open(os.path.join(sys.argv[1], name, sys.argv[2]), "rb").read()[1024:]
    flat = torch.cat([sd[n].reshape(-1) for n in names])
    assert list(sd) == names, list(sd)
    assert all(t.dtype == torch.float32 for t in sd.values())
    want = dict(variant=variant, kind=kind, K=K, W=W, C=C, V=V, Vp=Vp, L=2, D=32, H=H, Hkv=Hkv, F=86, maxT=32,
                qk_norm=int(olmo2), norm=int(olmo2), z_loss="9.99999975e-06" if olmo2 else "0", params=flat.numel())
    assert c == want, (c, want)
    # H * hd = 32 query rows; Hkv * hd = 16 key rows at both (H, Hkv) = (4, 2) and (2, 1)
    assert sd["E"].shape == (Vp, 32) and sd["wout"].shape == (Vp, 32) and sd["layer0.wq"].shape == (32, 32)
    assert sd["layer0.wk"].shape == (16, 32) and sd["layer1.w2"].shape == (32, 86) and sd["g_final"].shape == (32,)
    assert not sd["E"][V:].any() and not sd["wout"][V:].any(), name  # the padding rows, zero as the checkpoint's
    assert flat.numpy().astype("<f4").tobytes() == payload, name
EOF

# Multiple-choice evaluation (data/eval.h, issue 28): a task in llm.c's eval format, written
# here by a few lines of Python from the format as llm.c documents it (dev/data's
# write_evalfile): 40 examples of the shard's own grammar, a context of words and the next
# word against three strings of random letters as long. The trained model spells words, so
# it must pick the word nearly always; a fresh one is near chance (1 in 4). Each
# completion's log-likelihood must be the PyTorch reference's on the exported model.
/usr/bin/python3 - "$tmp/words.bin" "$tmp/bad_label.bin" "$tmp/short.bin" <<'EOF2'
import random, struct, sys
def write_evalfile(path, examples):  # llm.c's layout: 256 int32 header, then uint16 examples
    body, longest = b"", 0
    for i, (ctx, ends, label) in enumerate(examples):
        s = [65535, 0, i, label, len(ends), len(ctx)] + ctx
        for e in ends:
            s += [len(e)] + e
        s[1] = 2 * len(s)
        longest = max(longest, s[1])
        body += struct.pack("<%dH" % len(s), *s)
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *([20240522, 1, len(examples), longest] + [0] * 252)) + body)
words = "in the beginning god created heaven and earth was without form void darkness upon face of deep".split()
r = random.Random(5)
examples = []
for _ in range(40):
    ctx = " ".join(r.choice(words) for _ in range(r.randrange(1, 4))) + " "
    word = r.choice(words)
    ends = [[ord(ch) for ch in "".join(r.choice("bcfjkmqxz") for _ in word)] for _ in range(3)]
    label = r.randrange(4)
    ends.insert(label, [ord(ch) for ch in word])
    examples.append(([ord(ch) for ch in ctx], ends, label))
write_evalfile(sys.argv[1], examples)
examples[3] = (examples[3][0], examples[3][1], 4)  # a label past the completions
write_evalfile(sys.argv[2], examples)
short = [w for w in words if len(w) <= 5]  # at most 16 tokens an example: rows of 16, not T
write_evalfile(sys.argv[3], [([ord(ch) for ch in r.choice(short) + " "], [[ord(ch) for ch in r.choice(short)] for _ in range(3)], 1)
                             for _ in range(10)])
EOF2
v=phd-cswa-2-2-2
eval_line() { grep -o 'acc [0-9.]*' <<< "$1" | head -n 1 | cut -d' ' -f2; }
out=$(run "$bin" -e "$tmp/$v/$model" --device cpu -b 8 -t 32 --eval "$tmp/words.bin" --eval-scores 1 2>&1) || bad "eval: train_phd failed: $out"
acc=$(eval_line "$out")
check "eval: the trained $v picks the word against random letters (acc $acc of 40 examples, want >= 0.9)" \
    awk -v a="$acc" 'BEGIN { exit !(a >= 0.9) }'
fresh=$(run "$bin" --device cpu --variant "$v" --vocab 256 --layers 2 --dim 32 --heads 4 --kv-heads 2 -b 8 -t 32 --eval "$tmp/words.bin" 2>&1)
facc=$(eval_line "$fresh")
check "eval: a fresh $v is near chance (acc $facc, want <= 0.5)" awk -v a="$facc" 'BEGIN { exit !(a <= 0.5) }'
check "eval: one line 'eval words: acc X acc_norm Y (40 examples)'" grep -qx "eval words: acc [01]\.[0-9]* acc_norm [01]\.[0-9]* (40 examples)" <<< "$out"
# The reference's log-likelihoods of the same completions (float64): within 1e-5 relative.
reference_scores() {  # EVAL_FILE
run "$py" - "$root/dev" "$tmp/$v/model.pt" "$1" <<'EOF2'
import struct, sys, torch
sys.path.insert(0, sys.argv[1])
from phd_reference import load_export, forward
cfg, P = load_export(sys.argv[2])
data = open(sys.argv[3], "rb").read()
n = struct.unpack_from("<256i", data)[2]
u = struct.unpack_from("<%dH" % ((len(data) - 1024) // 2), data, 1024)
at = 0
for i in range(n):
    nc, lc = u[at + 4], u[at + 5]
    ctx = list(u[at + 6: at + 6 + lc]); at += 6 + lc
    for c in range(nc):
        le = u[at]; end = list(u[at + 1: at + 1 + le]); at += 1 + le
        toks = ctx + end
        with torch.no_grad():
            logits, _ = forward(cfg, P, torch.tensor([toks]))
        lp = torch.log_softmax(logits[0, :, : cfg["V"]], dim=-1)
        ll = sum(lp[len(ctx) - 1 + j, end[j]].item() for j in range(le))
        print(f"example {i} completion {c}: log-likelihood {ll:.12g} ({le} tokens)")
EOF2
}
ref=$(reference_scores "$tmp/words.bin")
same_scores() {  # WANT GOT TOL: the lines of both match, each log-likelihood within TOL relative
    paste -d'|' <(grep '^example' <<< "$1") <(grep '^example' <<< "$2") | awk -F'|' -v tol="$3" '
        { split($1, a, " "); split($2, b, " "); n++
          if (a[2] != b[2] || a[4] != b[4] || a[7] != b[7]) exit 1
          d = a[6] - b[6]; if (d < 0) d = -d; s = a[6] < 0 ? -a[6] : a[6]; if (d > tol * s) exit 1 }
        END { exit !(n == want) }' want="${4:-160}"
}
check "eval: every completion's log-likelihood is the PyTorch reference's within 1e-5 (160 completions)" same_scores "$ref" "$out" 1e-5
short=$(run "$bin" -e "$tmp/$v/$model" --device cpu -b 8 -t 32 --eval "$tmp/short.bin" --eval-scores 1 2>&1)
check "eval: a task of short examples (rows of 16 tokens where T is 32) scores as the reference does" \
    same_scores "$(reference_scores "$tmp/short.bin")" "$short" 1e-5 30
if [ -n "$emu" ]; then
    gpu=$(run "$emu" -e "$tmp/$v/$model" --device cuda --dtype fp32 -b 8 -t 32 --eval "$tmp/words.bin" --eval-scores 1 2>&1)
    check "eval: the emulated GPU (fp32) scores every completion as the CPU does, within 1e-5" same_scores "$out" "$gpu" 1e-5
fi
# In training: at every validation step (step 0 and the last included), on the screen and in
# log.txt; and under mpirun, two ranks each scoring half of the examples, the counts summed.
run "$bin" -i "$tmp/syn_train_*.bin" -o "$tmp/evaltrain" --device cpu --variant "$v" --vocab 256 --layers 2 --dim 32 --heads 4 \
    --kv-heads 2 -b 8 -t 32 -x 6 -v 5 -s 0 --eval "$tmp/words.bin" > "$tmp/evaltrain.log" 2>&1
check "eval: training prints it at step 0 and at the last (5), and logs it" \
    bash -c '[ "$(grep -c "^eval words: acc .* (40 examples)$" "$1")" -eq 2 ] &&
             [ "$(grep -c "^step [05] eval words acc [0-9.]* acc_norm [0-9.]*$" "$2")" -eq 2 ]' _ "$tmp/evaltrain.log" "$tmp/evaltrain/log.txt"
if command -v mpirun > /dev/null; then
    [ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    two=$(timeout -k 5 120 mpirun -q --oversubscribe --bind-to none -np 2 "$bin" -e "$tmp/$v/$model" --device cpu -b 8 -t 32 \
          --eval "$tmp/words.bin" --threads 1 2>&1 | grep '^eval words')
    check "eval: 2 ranks give the one rank's line ($two)" [ "$two" = "$(grep '^eval words' <<< "$out")" ]
fi
# Bad tasks: one line naming the file, exit 1.
eval_refused() {  # NAME FILE PATTERN [FLAGS...]
    local name=$1 file=$2 pattern=$3 rc=0; shift 3
    run "$bin" -e "$tmp/$v/$model" --device cpu -b 8 -t 32 --eval "$file" "$@" > "$tmp/eval.out" 2> "$tmp/eval.err" || rc=$?
    if [ "$rc" -eq 1 ] && [ "$(wc -l < "$tmp/eval.err")" -eq 1 ] && grep -q "^error: $file: .*$pattern" "$tmp/eval.err"; then
        ok "eval refuses $name: $(cat "$tmp/eval.err")"
    else
        bad "eval refuses $name (exit $rc, want 1 and one line matching '$pattern'): $(head -c 300 "$tmp/eval.err")"
    fi
}
head -c 1500 "$tmp/words.bin" > "$tmp/words_cut.bin"
eval_refused "a token shard" "$tmp/syn_train_000000.bin" "bad eval magic.*token shard"
eval_refused "a truncated file" "$tmp/words_cut.bin" "truncated"
eval_refused "a label past the completions" "$tmp/bad_label.bin" "example 3 has label 4 of 4 completions"
eval_refused "an example longer than T" "$tmp/words.bin" "more than T=4" -t 4
eval_refused "more completions than rows" "$tmp/words.bin" "more than the 2 rows" -b 2
eval_refused "a missing file" "$tmp/none.bin" "cannot open"

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
