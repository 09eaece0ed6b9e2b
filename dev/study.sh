#!/usr/bin/env bash
# Does PHD help? (issue 19) Trains a list of variants on the same data, in the same order,
# with the same token budget, hyperparameters and seeds, and writes one CSV row per
# (variant, seed, validation step), then the plots and the summary table (dev/study_plot.sh).
#
#   dev/study.sh                      # CPU size: byte-level KJV, 8 variants x 3 seeds
#   dev/study.sh --size gpu           # GPU size: GPT-2-small shape on GPT-2 KJV+Brown, TF32
#   dev/study.sh --help               # every option
#
# It resumes: a finished run (its runs/VARIANT/seedS/rows.csv exists) is skipped, an
# unfinished one (its directory exists without rows.csv) is deleted and redone from scratch,
# so the study can be stopped at any time and run in parts. study.csv is rebuilt from the
# rows.csv of every finished run, so it never holds a half run's rows.
#
# CSV columns:
#   variant, seed   the run
#   step            optimizer updates done when validated (train_phd validates a step before
#                   its update; the script asks for steps+1 updates so that the validation
#                   points are 0, v, 2v, ..., steps and the last one sees `steps` updates)
#   tokens          original tokens trained on: step * B * T (copies not counted)
#   train_flops     training FLOPs so far: step * B * T * flops_per_token (validation and
#                   sampling not counted), flops_per_token from train_phd's "cost model:" line
#                   (model_flops_per_token in model.h, model.h §7: the layers on K rows
#                   per position, the LM head on the last copy, attention over the visible
#                   pairs, as the kernels visit them)
#   val_loss        train_phd's validation loss (log.txt, 9 digits)
#   train_s         seconds of training steps so far (the sum of the step times train_phd
#                   prints: forward, backward, AdamW; no validation, no start-up)
#   wall_s          seconds since train_phd was started, when it printed this validation
#                   (start-up, validation and everything else included)
#   TASK_acc, TASK_acc_norm
#                   with --evals or --accuracy, for each task in order: train_phd --eval's
#                   multiple-choice accuracy at this validation (log.txt, 6 digits)
set -euo pipefail
export LC_ALL=C   # '.' as the decimal point for awk, printf and EPOCHREALTIME

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "error: $*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: dev/study.sh [options]
  --size cpu|gpu       preset (cpu): see below
  --variants "A B .."  variants to train (default: vanilla phd-2 phd-3 phd-swa-2-16
                       phd-swa-3-16 phd-cswa-2-16-32 phd-cswa-3-16-32 naive-2)
  --seeds N            seeds 1..N per variant, train_phd -r (3)
  --steps N            optimizer steps, a multiple of --val-every (preset)
  --out DIR            runs, study.csv, plots, summary.md (dev/study/SIZE)
  --bin PATH           the train_phd binary (./train_phd at the repository root)
  --device cpu|cuda    where train_phd runs (cpu for --size cpu, cuda for --size gpu)
  --tf32 0|1           GPU tensor cores (1 on cuda, as the measured step times; 0 on cpu)
  --threads N          OpenMP threads for train_phd (default: its own, all cores)
  --data DIR           shard directory with *_train_*.bin and *_val_*.bin (preset; prepared
                       when it is the preset's and missing)
  --vocab V --layers L --dim D --heads H --batch B --seq T --lr LR --warmup N
  --val-every N --val-steps N
                       override the preset's model, batch and schedule
  --block llama|olmo2  the transformer block (train_phd --block; llama)
  --evals "A.bin .."   multiple-choice tasks (llm.c's eval files) scored at every validation
  --accuracy           the CPU size's two tasks as --evals, built when missing into
                       DATA/evals/examplesN-seqT/ (build/prepare --eval-lines, byte-level, at
                       most --examples, none longer than --seq; the preset's data only): KJV
                       verse completion from the study's own
                       validation chapters, Brown sentence completion (no Brown text is
                       trained on); chance 0.25 in both
  --examples N         examples a task for --accuracy (100)
  --keep-ckpt          keep each run's final checkpoint (deleted by default: ~12 MB a run
                       at the CPU size, 1.9 GB at the GPU size)
  --no-plot            skip the plots and the summary
  --plot-only          only redraw the plots and summary from DIR/study.csv
  --dry-run            print the train_phd command lines and exit
presets (all runs: AdamW, weight decay 0.1, cosine to 0.1*lr, no sampling):
  cpu  byte-level KJV (V=256; chapters in a fixed scrambled order), L=4 D=128 H=4
       (854k parameters), B=8 T=256, 300 steps (614k tokens a run), lr 3e-3 warm-up 20,
       validation every 30 steps on 6 batches (12k tokens); 24 runs ~52 min on 2 quiet cores
  gpu  GPT-2 BPE KJV+Brown (V=50257; documents scrambled likewise), L=12 D=768 H=12,
       B=8 T=1024, 70 steps (573k tokens a run), lr 6e-4 warm-up 10, validation every 10
       steps on 4 batches (33k tokens), TF32; 24 runs ~10 min on one H200 (an estimate from
       measured step times)
EOF
}

valid_variant() { [[ $1 =~ ^(vanilla|phd-[1-9][0-9]*|phd-swa-[1-9][0-9]*-[0-9]+|phd-cswa-[1-9][0-9]*-[0-9]+-[1-9][0-9]*|naive-[1-9][0-9]*)$ ]]; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]]; }

default_variants="vanilla phd-2 phd-3 phd-swa-2-16 phd-swa-3-16 phd-cswa-2-16-32 phd-cswa-3-16-32 naive-2"
size=cpu variants=$default_variants seeds=3 out="" bin="$root/train_phd" device="" tf32="" threads=""
data="" keep_ckpt=0 plot=1 plot_only=0 dry_run=0 block=llama evals="" accuracy=0 examples=100
declare -A over=()   # preset overrides, by key

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1: missing value (see --help)"; }
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --size) need "$@"; size=$2; shift ;;
        --variants) need "$@"; variants=$2; shift ;;
        --seeds) need "$@"; is_uint "$2" && [ "$2" -ge 1 ] || die "--seeds: expected a positive integer, got '$2'"; seeds=$2; shift ;;
        --out) need "$@"; out=$2; shift ;;
        --bin) need "$@"; bin=$2; shift ;;
        --device) need "$@"; device=$2; shift ;;
        --tf32) need "$@"; tf32=$2; shift ;;
        --threads) need "$@"; is_uint "$2" && [ "$2" -ge 1 ] || die "--threads: expected a positive integer, got '$2'"; threads=$2; shift ;;
        --data) need "$@"; data=$2; shift ;;
        --block) need "$@"; case $2 in llama|olmo2) block=$2 ;; *) die "--block: expected llama or olmo2, got '$2'" ;; esac; shift ;;
        --evals) need "$@"; evals=$2; shift ;;
        --accuracy) accuracy=1 ;;
        --examples) need "$@"; is_uint "$2" && [ "$2" -ge 1 ] || die "--examples: expected a positive integer, got '$2'"; examples=$2; shift ;;
        --steps|--vocab|--layers|--dim|--heads|--batch|--seq|--warmup|--val-every|--val-steps)
            need "$@"
            if [ "$1" = --warmup ]; then is_uint "$2" || die "$1: expected an integer >= 0, got '$2'"
            else is_uint "$2" && [ "$2" -ge 1 ] || die "$1: expected a positive integer, got '$2'"; fi
            over[${1#--}]=$2; shift ;;
        --lr) need "$@"; is_num "$2" || die "--lr: expected a number, got '$2'"; over[lr]=$2; shift ;;
        --keep-ckpt) keep_ckpt=1 ;;
        --no-plot) plot=0 ;;
        --plot-only) plot_only=1 ;;
        --dry-run) dry_run=1 ;;
        *) die "$1: unknown option (see --help)" ;;
    esac
    shift
done

# Presets. The CPU size from step times measured on the 2-core machine (train_phd -O3
# -march=native, OMP_NUM_THREADS=2, quiet machine, median ms per step at this shape):
# vanilla 127, phd-2 270, phd-3 534, phd-swa-2-16 370, phd-swa-3-16 531, phd-cswa-2-16-32 372,
# phd-cswa-3-16-32 525, naive-2 524: 3.25 s a step for the 8 variants, 9.8 s for 3 seeds.
# A validation of 6 batches is ~2 steps' work, so 300 steps + 11 validations ~ 322 steps:
# ~52 min, the rest of the hour a margin for this machine's noise (+-40 %, more when it
# builds). The GPU size from the H200 measurements (dev/measurements/h200-2026-11-27,
# TF32, B=8 T=1024): vanilla 93.8 ms/step, phd-2 181.3, phd-cswa-2-16-32 184.8,
# phd-cswa-3-16-32 284.5; phd-swa-K taken as phd-cswa-K, phd-3 as phd-cswa-3, naive-2
# ~315 (phd-2 plus its attention again: attention was ~130 of phd-cswa-2's 185 ms and
# naive-2 has twice phd-2's visible pairs). Sum 1.81 s a step for the 8 variants, x 3 seeds
# = 5.4 s; 71 steps + 8 validations of 4 forward batches (~1.3 steps each) ~ 81 steps =
# 440 s, plus ~5 s start-up a run (parameters initialised on the host, allocation) = 120 s:
# ~9.5 min. An H100 may take ~10-20 % longer. Neither is measured end to end yet.
case $size in
    cpu) declare -A p=([vocab]=256 [layers]=4 [dim]=128 [heads]=4 [batch]=8 [seq]=256 [steps]=300
                       [lr]=3e-3 [warmup]=20 [val-every]=30 [val-steps]=6)
         def_data=$root/data/shards/study-kjv-bytes def_device=cpu ;;
    gpu) declare -A p=([vocab]=50257 [layers]=12 [dim]=768 [heads]=12 [batch]=8 [seq]=1024 [steps]=70
                       [lr]=6e-4 [warmup]=10 [val-every]=10 [val-steps]=4)
         def_data=$root/data/shards/study-kjv-brown-gpt2 def_device=cuda ;;
    *) die "--size: expected cpu or gpu, got '$size'" ;;
esac
for k in "${!over[@]}"; do p[$k]=${over[$k]}; done
out=${out:-$root/dev/study/$size}
data=${data:-$def_data}
device=${device:-$def_device}
case $device in cpu|cuda) ;; *) die "--device: expected cpu or cuda, got '$device'" ;; esac
if [ -z "$tf32" ]; then [ "$device" = cuda ] && tf32=1 || tf32=0; fi
case $tf32 in 0|1) ;; *) die "--tf32: expected 0 or 1, got '$tf32'" ;; esac
[ "$tf32" = 0 ] || [ "$device" = cuda ] || die "--tf32 1: tensor cores are the GPU's; this study runs on the CPU"
[ $((p[steps] % p[val-every])) -eq 0 ] || die "--steps ${p[steps]} is not a multiple of --val-every ${p[val-every]}"
[ $((p[dim] % p[heads])) -eq 0 ] || die "--dim ${p[dim]} is not a multiple of --heads ${p[heads]}"
read -r -a vlist <<< "$variants"
[ ${#vlist[@]} -gt 0 ] || die "--variants: no variant given"
for v in "${vlist[@]}"; do valid_variant "$v" || die "--variants: unknown variant '$v' (vanilla, phd-K, phd-swa-K-W, phd-cswa-K-W-C, naive-K)"; done

[ "$accuracy" = 0 ] || [ -z "$evals" ] || die "--accuracy and --evals: one or the other"
[ "$accuracy" = 0 ] || [ "$size" = cpu ] || die "--accuracy: the CPU size's tasks only (the GPU size mixes KJV and Brown documents, whose validation split its tasks would have to follow; give --evals)"
[ "$accuracy" = 0 ] || [ "$data" = "$def_data" ] || die "--accuracy: its KJV task follows the preset's data and split; with --data give --evals"
tasks_dir=$data/evals/examples$examples-seq${p[seq]}  # --accuracy's tasks, made for these settings
[ "$accuracy" = 0 ] || evals="$tasks_dir/kjv_verses.bin $tasks_dir/brown_sentences.bin"
read -r -a elist <<< "$evals"
tasks=()  # train_phd's names of the tasks: the files' names without .bin
for e in "${elist[@]}"; do t=${e##*/}; tasks+=("${t%.*}"); done

csv=$out/study.csv
header="variant,seed,step,tokens,train_flops,val_loss,train_s,wall_s"
for t in "${tasks[@]}"; do header+=",${t}_acc,${t}_acc_norm"; done

# study.csv from every finished run under $out: the default variants in their order, then
# any others by name; seeds in numeric order.
assemble_csv() {
    local order=() v d s
    for v in $default_variants; do [ -d "$out/runs/$v" ] && order+=("$v"); done
    for d in "$out"/runs/*/; do
        [ -d "$d" ] || continue
        v=$(basename "$d")
        [[ " $default_variants " == *" $v "* ]] || order+=("$v")
    done
    {
        echo "$header"
        for v in "${order[@]}"; do
            for s in $(for d in "$out/runs/$v"/seed*; do echo "${d##*/seed}"; done | grep -E '^[0-9]+$' | sort -n); do
                [ -f "$out/runs/$v/seed$s/rows.csv" ] && cat "$out/runs/$v/seed$s/rows.csv"
            done
        done
    } > "$csv.tmp"
    mv "$csv.tmp" "$csv"
}

run_plots() {
    [ "$plot" = 1 ] || return 0
    bash "$root/dev/study_plot.sh" "$csv"
}

if [ "$plot_only" = 1 ]; then
    [ -f "$csv" ] || die "--plot-only: $csv: no such file"
    plot=1; run_plots; exit 0
fi

train_glob="$data/*_train_*.bin" val_glob="$data/*_val_*.bin"
shards() { local f; for f in "$data"/*_train_*.bin "$data"/*_val_*.bin; do [ -f "$f" ] && echo "$f"; done; return 0; }
have_shards() { compgen -G "$train_glob" >/dev/null && compgen -G "$val_glob" >/dev/null; }

# The preset's shards, prepared when they are missing. train_phd reads its shards in order
# and never shuffles, and the corpora are in book order (KJV chapters Genesis to Revelation,
# Brown files by genre): a study that trains on its first ~15 % would learn Genesis to
# Numbers and be validated on the whole Bible. So the documents are first put into one fixed,
# scrambled order (document i of N goes to place i*S mod N, S a stride coprime to N: no RNG,
# the same order everywhere), then build/prepare (README "Data") splits every 20th document
# off for validation and writes the shards.
mix_documents() {  # FILE...: the documents (a file, or a file's parts between lines that
                   # are exactly <|endoftext|>) in the scrambled order, separator lines between
    awk '
        function gcd(a, b,    t) { while (b) { t = a % b; a = b; b = t }; return a }
        FNR == 1 || sep { n++; doc[n] = ""; sep = 0 }
        $0 == "<|endoftext|>" { sep = 1; next }
        { doc[n] = doc[n] $0 "\n" }
        END {
            stride = 7919
            while (gcd(stride, n) != 1) stride++
            for (i = 0; i < n; i++) {
                if (i) print "<|endoftext|>"
                printf "%s", doc[(i * stride) % n + 1]
            }
        }' "$@"
}
# --accuracy's tasks: KJV verses from the validation chapters of the same scrambled text and
# split as the shards (so no verse of them is trained on), Brown sentences from the corpus.
prepare_tasks() {
    [ "$accuracy" = 1 ] || return 0
    [ -f "$tasks_dir/kjv_verses.bin" ] && [ -f "$tasks_dir/brown_sentences.bin" ] && return 0
    local tmpdir args=(--tokenizer byte --eval-lines --examples "$examples" --max-tokens "${p[seq]}")
    [ -x "$root/build/prepare" ] || make -C "$root" build/prepare
    tmpdir=$(mktemp -d)
    mkdir -p "$tasks_dir"
    mix_documents "$root/data/cache/text/kjv/kjv.txt" > "$tmpdir/mixed.txt"
    "$root/build/prepare" "${args[@]}" --out "$tasks_dir/kjv_verses.bin" "$tmpdir/mixed.txt"
    "$root/build/prepare" "${args[@]}" --out "$tasks_dir/brown_sentences.bin" "$root"/data/cache/text/brown/*.txt
    rm -rf "$tmpdir"
}
prepare_data() {
    have_shards && return 0
    [ "$data" = "$def_data" ] || die "--data $data: no *_train_*.bin and *_val_*.bin shards there"
    local kjv=$root/data/cache/text/kjv/kjv.txt brown=$root/data/cache/text/brown texts tmpdir
    if [ ! -f "$kjv" ] || { [ "$size" = gpu ] && ! compgen -G "$brown/*.txt" >/dev/null; }; then
        echo "study: corpus missing, running dev/setup.sh"
        bash "$root/dev/setup.sh"
    fi
    [ -x "$root/build/prepare" ] || make -C "$root" build/prepare
    tmpdir=$(mktemp -d)
    texts=("$kjv")
    [ "$size" = gpu ] && texts+=("$brown"/*.txt)
    mix_documents "${texts[@]}" > "$tmpdir/mixed.txt"
    if [ "$size" = cpu ]; then
        "$root/build/prepare" --tokenizer byte --out "$data" --name kjv "$tmpdir/mixed.txt"
    else
        "$root/build/prepare" --tokenizer gpt2 --out "$data" --name kjvbrown "$tmpdir/mixed.txt"
    fi
    rm -rf "$tmpdir"
    have_shards || die "$data: preparation wrote no shards"
}

# Everything that makes runs comparable; a study directory holds one setting only.
settings() {
    local k
    for k in vocab layers dim heads batch seq steps lr warmup val-every val-steps; do echo "$k=${p[$k]}"; done
    echo "device=$device"; echo "tf32=$tf32"
    echo "data=$(cd "$data" && pwd)"
    # shards re-prepared differently make another study
    echo "data_bytes=$(shards | while IFS= read -r f; do stat -c %s "$f"; done | awk '{ n += $1 } END { print n }')"
    # (written only where set, so that a study from before them keeps its settings)
    [ "$block" = llama ] || echo "block=$block"
    local e
    for e in "${elist[@]}"; do echo "eval=${e##*/} $(stat -c %s "$e")"; done
}

train_args() {  # VARIANT SEED DIR
    local a=(-i "$train_glob" -j "$val_glob" -o "$3" --variant "$1" -r "$2"
             --vocab "${p[vocab]}" --layers "${p[layers]}" --dim "${p[dim]}" --heads "${p[heads]}"
             -b "${p[batch]}" -t "${p[seq]}" -x $((p[steps] + 1)) -l "${p[lr]}" -u "${p[warmup]}"
             -v "${p[val-every]}" -m "${p[val-steps]}" -s 0 -n 0 --device "$device")
    [ "$device" = cuda ] && a+=(--tf32 "$tf32")
    [ -n "$threads" ] && a+=(--threads "$threads")
    [ "$block" = llama ] || a+=(--block "$block")
    local e
    for e in "${elist[@]}"; do a+=(--eval "$e"); done
    printf '%s\n' "${a[@]}"
}

if [ "$dry_run" = 1 ]; then
    for v in "${vlist[@]}"; do
        for ((s = 1; s <= seeds; s++)); do
            mapfile -t a < <(train_args "$v" "$s" "$out/runs/$v/seed$s")
            printf '%q ' "$bin" "${a[@]}"; echo
        done
    done
    exit 0
fi

[ -x "$bin" ] || die "--bin $bin: no such executable (make, or make build/train_phd_cpu)"
mkdir -p "$out/runs"
# One study.sh at a time in a directory: two would train the same runs into the same files.
exec 9> "$out/.lock"
flock -n 9 || die "another dev/study.sh is running in $out"
prepare_data
prepare_tasks
for e in "${elist[@]}"; do [ -f "$e" ] || die "--evals: $e: no such file"; done
settings > "$out/settings.tmp"
if [ -f "$out/settings.txt" ]; then
    if ! cmp -s "$out/settings.txt" "$out/settings.tmp"; then
        was=$({ diff "$out/settings.txt" "$out/settings.tmp" || true; } | sed -n 's/^< //p' | paste -sd' ')
        now=$({ diff "$out/settings.txt" "$out/settings.tmp" || true; } | sed -n 's/^> //p' | paste -sd' ')
        rm -f "$out/settings.tmp"
        die "$out holds a study with other settings ($was; now $now): use another --out or delete it"
    fi
    rm -f "$out/settings.tmp"
else
    mv "$out/settings.tmp" "$out/settings.txt"
fi

# Prefixes each line with the time it arrived (seconds since the epoch, microseconds).
stamp() { local line; while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

child=""
trap '[ -z "$child" ] || kill "$child" 2>/dev/null; echo "study: stopped; the unfinished run is redone next time" >&2; exit 130' INT TERM

# Trains one (variant, seed) in $dir and writes its rows.csv last, atomically: the marker
# that the run is finished.
run_one() {
    local v=$1 s=$2 dir=$3 t0 rc
    mkdir -p "$dir"
    mapfile -t a < <(train_args "$v" "$s" "$dir")
    printf '%q ' "$bin" "${a[@]}" > "$dir/cmd.txt"; echo >> "$dir/cmd.txt"
    rm -f "$dir/fifo"; mkfifo "$dir/fifo"
    stamp < "$dir/fifo" > "$dir/stdout.txt" &
    local stamper=$!
    t0=$EPOCHREALTIME
    "$bin" "${a[@]}" > "$dir/fifo" 2>&1 &
    child=$!
    rc=0; wait "$child" || rc=$?
    child=""
    wait "$stamper" || true
    rm -f "$dir/fifo"
    if [ "$rc" -ne 0 ]; then
        echo "error: $v seed $s: $bin exited with status $rc; the end of $dir/stdout.txt:" >&2
        tail -n 5 "$dir/stdout.txt" | cut -d' ' -f2- >&2
        exit 1
    fi
    # One row per validation point with step <= steps (the extra last update is never
    # validated). Sources: the cost model and batch lines (FLOPs and tokens per
    # step), the step lines' times, the stamped validation lines, log.txt's losses.
    awk -v variant="$v" -v seed="$s" -v t0="$t0" -v steps="${p[steps]}" \
        -v ve="${p[val-every]}" -v logf="$dir/log.txt" -v tasks="${tasks[*]}" '
        $2 == "cost" && $3 == "model:" { fpt = $4 + 0 }
        $2 == "batch" { for (i = 3; i <= NF; i++) if ($(i + 1) == "tokens/step,") tps = $i + 0 }
        $2 == "step" && $4 == "|" {             # "step k/S | ... | X ms | ...": update k done
            split($3, ks, "/"); k = ks[1] + 0
            for (i = 4; i <= NF; i++) if ($i == "ms") cum[k] = cum[k - 1] + $(i - 1)
        }
        $2 == "step" && $4 == "val" { wall[$3 + 0] = $1 - t0 }
        END {
            if (!fpt || !tps) { print "no cost model or batch line in the output" > "/dev/stderr"; exit 1 }
            nt = split(tasks, task, " ")
            while ((getline line < logf) > 0) {  # "step S eval NAME acc X acc_norm Y"
                split(line, f, " ")
                if (f[3] == "eval") { acc[f[2] + 0, f[4]] = f[6] "," f[8]; continue }
                if (f[3] != "val" || f[2] + 0 > steps) continue
                val[++nv] = f[2] + 0; loss[nv] = f[4]
            }
            for (i = 1; i <= nv; i++) {
                s = val[i]
                if (!(s in wall)) { print "validation at step " s " missing from the output" > "/dev/stderr"; exit 1 }
                printf "%s,%d,%d,%d,%.6e,%s,%.3f,%.3f", variant, seed, s, s * tps, s * tps * fpt, loss[i], cum[s] / 1000, wall[s]
                for (t = 1; t <= nt; t++) {
                    if (!((s, task[t]) in acc)) { print "task " task[t] " at step " s " missing from log.txt" > "/dev/stderr"; exit 1 }
                    printf ",%s", acc[s, task[t]]
                }
                printf "\n"
                n++
            }
            if (n != steps / ve + 1) { print "expected " steps / ve + 1 " validation points, got " n > "/dev/stderr"; exit 1 }
        }' "$dir/stdout.txt" > "$dir/rows.tmp" || die "$v seed $s: could not read $dir/stdout.txt and $dir/log.txt"
    [ "$keep_ckpt" = 1 ] || rm -f "$dir"/model_*.bin "$dir"/state_*.bin
    mv "$dir/rows.tmp" "$dir/rows.csv"
}

total=$(( ${#vlist[@]} * seeds )) i=0
SECONDS=0
for v in "${vlist[@]}"; do
    for ((s = 1; s <= seeds; s++)); do
        i=$((i + 1))
        dir=$out/runs/$v/seed$s
        if [ -f "$dir/rows.csv" ]; then
            echo "study: [$i/$total] skip $v seed $s: done ($dir/rows.csv)"
            continue
        fi
        if [ -d "$dir" ]; then
            echo "study: [$i/$total] redo $v seed $s: an unfinished run was there, removed"
            rm -rf "$dir"
        fi
        echo "study: [$i/$total] train $v seed $s ($((SECONDS / 60)) min $((SECONDS % 60)) s so far)"
        run_one "$v" "$s" "$dir"
        tail -n 1 "$dir/rows.csv" | awk -F, '{ printf "study:   final val loss %.4f after %d steps, %.1f s training, %.1f s wall\n", $6, $3, $7, $8 }'
        assemble_csv   # after each run, so a stopped study still has a current CSV
    done
done
assemble_csv
echo "study: $(($(wc -l < "$csv") - 1)) rows in $csv ($((SECONDS / 60)) min $((SECONDS % 60)) s)"
run_plots
