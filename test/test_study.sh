#!/usr/bin/env bash
# The study's machinery (issue 19), not its outcome: dev/study.sh trains a tiny study (two
# variants, two seeds, 6 steps of a 1-layer D=16 model on synthetic byte shards written
# here) into a temporary directory, and the checks below read what it wrote, rerun it, and
# break it on purpose.
#   test/test_study.sh [TRAIN_PHD]      (default build/train_phd_cpu)
# KEEP_TMP=1 keeps the temporary directory (the logs the check names point to).
# The last line is "N passed, M failed"; the exit status is non-zero when a check failed.
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/build/train_phd_cpu}
study=$root/dev/study.sh

source "$(dirname "$0")/check.sh"

tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT

if [ ! -x "$bin" ]; then bad "train_phd binary $bin exists (make build/train_phd_cpu)"; finish; fi

mkdir -p "$tmp/data"
make_shard "$tmp/data/syn_train_000000.bin" 20000 1
make_shard "$tmp/data/syn_val_000000.bin" 2000 2

out=$tmp/study
L=1 D=16 H=2 B=2 T=32 steps=6 every=2
variants="vanilla phd-cswa-2-4-8"
args=(--bin "$bin" --size cpu --device cpu --data "$tmp/data" --out "$out" --variants "$variants" --seeds 2
      --layers "$L" --dim "$D" --heads "$H" --batch "$B" --seq "$T" --steps "$steps" --val-every "$every" --val-steps 2
      --lr 1e-2 --warmup 2)
nrows=$((2 * 2 * (steps / every + 1)))
csv=$out/study.csv

# 1. A fresh study.
rc=0; "$study" "${args[@]}" > "$tmp/run1.log" 2>&1 || rc=$?
check "the study runs (exit $rc; log: $tmp/run1.log)" [ "$rc" -eq 0 ]
[ "$rc" -eq 0 ] || { sed 's/^/    /' "$tmp/run1.log" | tail -n 20; finish; }
check "4 runs trained" [ "$(grep -c '\] train ' "$tmp/run1.log")" -eq 4 ]
check "CSV header" [ "$(head -n 1 "$csv")" = "variant,seed,step,tokens,train_flops,val_loss,train_s,wall_s" ]
check "CSV has variants x seeds x validation points = $nrows rows" [ "$(($(wc -l < "$csv") - 1))" -eq "$nrows" ]
check "every run has the validation steps 0 2 4 6, in order" [ "$(awk -F, 'NR > 1 { s[$1 " " $2] = s[$1 " " $2] " " $3 }
    END { for (k in s) print k ":" s[k] }' "$csv" | sort | tr '\n' ';')" = \
    "phd-cswa-2-4-8 1: 0 2 4 6;phd-cswa-2-4-8 2: 0 2 4 6;vanilla 1: 0 2 4 6;vanilla 2: 0 2 4 6;" ]
check "tokens = step * B * T" awk -F, -v bt=$((B * T)) 'NR > 1 && $4 != $3 * bt { exit 1 }' "$csv"
check "validation losses are numbers in (0, 8)" awk -F, 'NR > 1 && !($6 + 0 > 0 && $6 + 0 < 8 && $6 ~ /^[0-9.e+-]+$/) { exit 1 }' "$csv"
check "the validation loss falls from step 0 to step $steps in every run" awk -F, '
    NR > 1 { k = $1 " " $2; if ($3 == 0) first[k] = $6; if ($3 == '$steps') last[k] = $6 }
    END { for (k in first) if (!(last[k] < first[k] - 0.1)) exit 1 }' "$csv"
check "train_s and wall_s grow with the step; wall_s >= train_s" awk -F, '
    NR > 1 { k = $1 " " $2; if ($7 + 0 < pt[k] || $8 + 0 < pw[k] || $8 + 0 < $7 + 0) exit 1; pt[k] = $7; pw[k] = $8 }' "$csv"

# FLOPs per token (model.h §7), computed here independently: the layer parameters
# from the architecture (two gains, q k v o at D x D, SwiGLU's three D x F, F = (8D+2)/3),
# the visible pairs from train_phd --show-mask.
F=$(((8 * D + 2) / 3)) V=256
body=$((L * (2 * D + 4 * D * D + 3 * D * F)))
pairs_of() { "$bin" --show-mask "$1" -t "$2" | head -n 1 | sed -E 's/.*: ([0-9]+) of .*/\1/'; }
fpt_want() { awk -v b=$body -v K="$2" -v D=$D -v V=$V -v L=$L -v T=$T -v p="$(pairs_of "$1" $T)" \
    'BEGIN { printf "%.9g", 6 * (b * K + D * V) + 12 * L * D * p / T }'; }
fpt_got() { awk -F, -v v="$1" 'NR > 1 && $1 == v && $3 > 0 { r = $5 / $4 } END { printf "%.9g", r }' "$csv"; }
near() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= 1e-5 * b) }'; }
check "train_flops at step 0 is 0" awk -F, 'NR > 1 && $3 == 0 && $5 + 0 != 0 { exit 1 }' "$csv"
check "vanilla FLOPs/token $(fpt_got vanilla) = $(fpt_want vanilla 1)" near "$(fpt_got vanilla)" "$(fpt_want vanilla 1)"
check "phd-cswa-2-4-8 FLOPs/token $(fpt_got phd-cswa-2-4-8) = $(fpt_want phd-cswa-2-4-8 2)" \
    near "$(fpt_got phd-cswa-2-4-8)" "$(fpt_want phd-cswa-2-4-8 2)"

# 2. Plots and table.
check "summary.md has a row per variant, vanilla at +0.0000" awk '
    /^\| vanilla \|/ && /\| \+0\.0000 \|/ { a = 1 } /^\| phd-cswa-2-4-8 \|/ { b = 1 } END { exit !(a && b) }' "$out/summary.md"
if command -v gnuplot >/dev/null; then
    for png in loss_tokens loss_flops final_vs_vanilla; do
        check "$png.png is a PNG" [ "$(head -c 4 "$out/$png.png" 2>/dev/null | tail -c 3)" = PNG ]
    done
else
    bad "the PNG checks: no gnuplot here (dev/setup.sh installs gnuplot-nox)"
fi

# 3. Resume: a second call trains nothing and changes nothing.
cp "$csv" "$tmp/csv1"
stamps() { stat -c '%n %Y %s' "$out"/runs/*/seed*/stdout.txt "$out"/runs/*/seed*/rows.csv; }
stamps > "$tmp/stamps1"
sleep 1   # so that a rewritten file would show a new modification time
rc=0; "$study" "${args[@]}" > "$tmp/run2.log" 2>&1 || rc=$?
check "the rerun exits 0" [ "$rc" -eq 0 ]
check "the rerun skips all 4 finished runs" [ "$(grep -c '\] skip ' "$tmp/run2.log")" -eq 4 ]
check "the rerun trains nothing" [ "$(grep -c '\] train ' "$tmp/run2.log" || true)" -eq 0 ]
check "the rerun leaves the runs' files untouched" cmp -s "$tmp/stamps1" <(stamps)
check "the rerun writes the same CSV" cmp -s "$tmp/csv1" "$csv"

# 4. A half-finished run (no rows.csv, a stray file) is redone from scratch; the same seed
#    and data give the same losses.
run=$out/runs/phd-cswa-2-4-8/seed2
rm "$run/rows.csv"; echo partial > "$run/stray"
rc=0; "$study" "${args[@]}" > "$tmp/run3.log" 2>&1 || rc=$?
check "after an interrupted run: exit 0" [ "$rc" -eq 0 ]
check "the unfinished run is redone, the 3 others skipped" \
    [ "$(grep -c '\] redo phd-cswa-2-4-8 seed 2' "$tmp/run3.log")-$(grep -c '\] skip ' "$tmp/run3.log")" = 1-3 ]
check "its partial files are gone" [ ! -e "$run/stray" ]
check "the CSV again has $nrows rows" [ "$(($(wc -l < "$csv") - 1))" -eq "$nrows" ]
check "the redone run has the same validation losses" \
    cmp -s <(awk -F, '$1 == "phd-cswa-2-4-8" && $2 == 2 { print $6 }' "$tmp/csv1") \
           <(awk -F, '$1 == "phd-cswa-2-4-8" && $2 == 2 { print $6 }' "$csv")
cp "$csv" "$tmp/csv3"
check "no checkpoints are left behind" [ -z "$(find "$out/runs" -name '*_0*.bin')" ]

# 5. Refusals: other settings in the same --out, bad options.
rc=0; "$study" "${args[@]}" --steps 4 > "$tmp/run4.log" 2>&1 || rc=$?
refused() { [ "$rc" -ne 0 ] && grep -q "^error: .*other settings" "$tmp/run4.log"; }
check "other settings in the same --out are refused" refused
check "... and the CSV is unchanged" cmp -s "$tmp/csv3" "$csv"
locked() {  # a second study.sh while the directory is locked (as by a running one)
    local o rc=0
    o=$(exec 9> "$out/.lock"; flock 9; "$study" "${args[@]}" 2>&1) || rc=$?
    [ "$rc" -ne 0 ] && [[ $o == *"error: another dev/study.sh is running in"* ]]
}
check "a second study.sh in the same --out is refused" locked
bad_option() {  # prints one line "error: ..." and exits non-zero
    local o rc=0
    o=$("$study" "$@" 2>&1) || rc=$?
    [ "$rc" -ne 0 ] && [ "$(printf '%s\n' "$o" | wc -l)" -eq 1 ] && [[ $o == error:* ]]
}
check "--size tpu: one error line" bad_option --size tpu
check "--variants 'vanilla phd-x': one error line" bad_option --variants "vanilla phd-x"
check "--steps 5 --val-every 2: one error line" bad_option --steps 5 --val-every 2
check "--seeds 0: one error line" bad_option --seeds 0
check "--bogus: one error line" bad_option --bogus
check "--seeds without a value: one error line" bad_option --seeds
check "--dry-run prints one command per run, with steps+1 updates" \
    [ "$("$study" "${args[@]}" --dry-run | grep -c -- "-x $((steps + 1)) ")" -eq 4 ]
check "--block opus: one error line" bad_option --block opus
check "--accuracy with --evals: one error line" bad_option --accuracy --evals x.bin
check "--accuracy at the GPU size: one error line" bad_option --accuracy --size gpu
check "--accuracy on other --data: one error line" bad_option --accuracy --data "$tmp/data"

# 6. Accuracy and the OLMo 2 block: two tiny byte-level tasks (build/prepare --eval; two
#    completions an example, as a batch has two rows) scored at every validation, one vanilla
#    run with --block olmo2.
prepare=$root/build/prepare
if [ -x "$prepare" ]; then
    printf '%s\n' '{"context": "abc", "endings": [" de", " xy"], "label": 0}' \
        '{"context": "hello", "endings": [" w", " zz"], "label": 1}' > "$tmp/t1.jsonl"
    printf '%s\n' '{"context": "x", "endings": [" y", " z"], "label": 1}' > "$tmp/t2.jsonl"
    "$prepare" --tokenizer byte --eval "$tmp/t1.jsonl" --out "$tmp/first.bin" > /dev/null
    "$prepare" --tokenizer byte --eval "$tmp/t2.jsonl" --out "$tmp/second.bin" > /dev/null
    out2=$tmp/study-acc
    acc_args=(--bin "$bin" --size cpu --device cpu --data "$tmp/data" --out "$out2" --variants vanilla --seeds 1
              --layers "$L" --dim "$D" --heads "$H" --batch "$B" --seq "$T" --steps "$steps" --val-every "$every" --val-steps 2
              --lr 1e-2 --warmup 2 --block olmo2 --evals "$tmp/first.bin $tmp/second.bin")
    rc=0; "$study" "${acc_args[@]}" > "$tmp/run5.log" 2>&1 || rc=$?
    check "a study with --evals and --block olmo2 runs (exit $rc; log: $tmp/run5.log)" [ "$rc" -eq 0 ]
    check "... its runs train the OLMo 2 block" grep -q -- "--block olmo2" "$out2/runs/vanilla/seed1/cmd.txt"
    check "... its settings name the block and the tasks" [ "$(grep -c '^block=olmo2$\|^eval=first.bin \|^eval=second.bin ' "$out2/settings.txt")" -eq 3 ]
    check "... its CSV header adds each task's acc and acc_norm" \
        [ "$(head -n 1 "$out2/study.csv")" = "$(head -n 1 "$csv"),first_acc,first_acc_norm,second_acc,second_acc_norm" ]
    check "... every validation has the four accuracies, each in [0, 1], as log.txt has them" awk -F, -v logf="$out2/runs/vanilla/seed1/log.txt" '
        BEGIN { while ((getline l < logf) > 0) { split(l, f, " "); if (f[3] == "eval") want[f[2], f[4]] = f[6] "," f[8] } }
        NR > 1 { n++; if (NF != 12 || $9 "," $10 != want[$3, "first"] || $11 "," $12 != want[$3, "second"]) exit 1
                 for (c = 9; c <= 12; c++) if (!($c >= 0 && $c <= 1)) exit 1 }
        END { exit n != '$((steps / every + 1))' }' "$out2/study.csv"
    check "... summary.md gives each task's final acc and acc_norm" grep -q '| first acc | first acc_norm | second acc | second acc_norm |' "$out2/summary.md"
    if command -v gnuplot >/dev/null; then
        check "accuracy_tokens.png is a PNG" [ "$(head -c 4 "$out2/accuracy_tokens.png" 2>/dev/null | tail -c 3)" = PNG ]
    fi
else
    bad "the accuracy checks: no $prepare (make build/prepare)"
fi

finish
