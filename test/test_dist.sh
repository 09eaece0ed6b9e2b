#!/usr/bin/env bash
# Data-parallel training under mpirun (issue 18, kernels/dist.h): 2 ranks on the CPU path
# against one process with twice the micro-batch (the same token stream, the same total
# batch), ZeRO-1's gathered moments, resuming on 2, 1 and 2 ranks, the GPU path's rank logic
# on the CUDA emulation (its NCCL over MPI): 2 and 3 ranks, the reduction overlapped with the
# backward or not, resumed on other rank counts, and in bf16 (the GPU's default dtype); and bad
# input or a NaN gradient stopping every rank with one line.
#   test/test_dist.sh [TRAIN_PHD_CPU [TRAIN_PHD_EMU]]  (default build/train_phd_cpu, build/train_phd_emu)
# KEEP_TMP=1 keeps the temporary directory. The last line is "N passed, M failed". No mpirun,
# or a binary built without MPI, is a failure, not a skip: dev/setup.sh installs OpenMPI.
#
# Why 2 ranks do not give one process's bits: the ranks' gradients are summed after each
# rank summed its own rows (one process sums all rows in one pass, e.g. into the embedding's
# rows), the loss is the mean of the ranks' means, and the gradient norm the sum of the
# shards' sums of squares: the same numbers in another order, so float rounding differs in
# the last bits (seen: losses ~2e-7 relative). Hence 1e-6 relative for losses; parameters to
# 1e-5 of their largest value, and Adam's m and v each to 1e-5 of its own (v ~ m^2 is far
# smaller than m: one scale for both would let v be anything). Resuming on the same ranks is
# bit for bit.
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-$root/build/train_phd_cpu}
emu=${2:-$root/build/train_phd_emu}

source "$(dirname "$0")/check.sh"

if ! command -v mpirun >/dev/null; then echo "no mpirun (dev/setup.sh installs openmpi-bin)"; echo "0 passed, 1 failed"; exit 1; fi
if [ ! -x "$bin" ]; then bad "train_phd binary $bin exists (make build/train_phd_cpu)"; finish; fi
if ! ldd "$bin" | grep libmpi >/dev/null; then echo "$bin was built without MPI (dev/setup.sh installs libopenmpi-dev)"; echo "0 passed, 1 failed"; exit 1; fi

tmp=$(mktemp -d)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT

export OMP_NUM_THREADS=1
# Root (CI) may start ranks only when it says so; containers often forbid the single-copy
# shared-memory path (ptrace), which the ranks do not need.
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# -q: mpirun's own banners off, so that what is printed is train_phd's.
mpi() { timeout -k 5 60 mpirun -q --oversubscribe --bind-to none "$@"; }

mkdir -p "$tmp/data"
make_shard "$tmp/data/syn_train_000000.bin" 20000 1
make_shard "$tmp/data/syn_train_000001.bin" 20000 3
make_shard "$tmp/data/syn_val_000000.bin" 4000 2
model=(--variant phd-cswa-2-4-8 --vocab 256 --layers 1 --dim 16 --heads 2 -t 32 -s 0 -l 1e-2 --threads 1)
flags=(-i "$tmp/data/syn_train_*.bin" -j "$tmp/data/syn_val_*.bin" "${model[@]}" -x 5 -v 4 -m 2 -n 3 -d 256)

# run NAME RANKS B [FLAGS...]: $exe with $flags trains into $tmp/NAME (log in $tmp/NAME.log);
# true on success.
exe=$bin
run() {
    local name=$1 np=$2 b=$3; shift 3
    if [ "$np" -eq 1 ]; then "$exe" "${flags[@]}" -b "$b" -o "$tmp/$name" "$@" > "$tmp/$name.log" 2>&1
    else mpi -np "$np" "$exe" "${flags[@]}" -b "$b" -o "$tmp/$name" "$@" > "$tmp/$name.log" 2>&1; fi
}
# The numbers of log.txt's lines for steps >= FROM ("step S train|val X").
log_from() { awk -v from="$2" '$2 >= from' "$1/log.txt"; }
# close FILE_A FILE_B TOL: the same lines, and each line's numbers within TOL relative.
close() {
    awk -v tol="$3" 'NR == FNR { a[FNR] = $0; n = FNR; next }
        { split(a[FNR], x); if (x[1] != $1 || x[2] != $2 || x[3] != $3) exit 1
          d = x[4] - $4; if (d < 0) d = -d; s = $4 < 0 ? -$4 : $4; if (d > tol * s) exit 1; m = FNR }
        END { exit !(m == n && n > 0) }' "$1" "$2"
}
# near FILE_A FILE_B TOL [PARTS]: equal 1024-byte headers, and the float32 payloads, cut into
# PARTS equal parts (1; a state file is 2: m, then v), each within TOL of the largest |value|
# of B's part (the moments are zero-based: a relative test per element would divide by ~0).
near() {
    cmp -s -n 1024 "$1" "$2" || return 1
    perl -e '
        my ($fa, $fb, $tol, $parts) = @ARGV;
        local $/; open(my $f, "<", $fa) or die; binmode $f; my $a = <$f>; open($f, "<", $fb) or die; binmode $f; my $b = <$f>;
        length($a) == length($b) or exit 1;
        my @x = unpack("f<*", substr($a, 1024)); my @y = unpack("f<*", substr($b, 1024));
        my $n = @y / $parts; $n == int($n) && $n > 0 or exit 1;
        my $ok = 1;
        for my $p (0 .. $parts - 1) {
            my ($d, $s) = (0, 0);
            for my $i ($p * $n .. ($p + 1) * $n - 1) { my $e = abs($x[$i] - $y[$i]); $d = $e if $e > $d; $s = abs($y[$i]) if abs($y[$i]) > $s }
            printf "    part %d of %d: max |diff| %.3g of max |value| %.3g\n", $p + 1, $parts, $d, $s;
            $ok &&= $s > 0 && $d <= $tol * $s;
        }
        exit !$ok;' "$1" "$2" "$3" "${4:-1}"
}
fails() { ! "$@"; }
p5=model_00000005.bin s5=state_00000005.bin p3=model_00000003.bin s3=state_00000003.bin

# 1. Two ranks = one process with twice the micro-batch.
check "1 process, B=4 trains" run one 1 4
check "2 ranks (mpirun -np 2), B=2 each, train" run two 2 2
check "2 ranks print one step line per step" [ "$(grep -c '^step .*/5 |' "$tmp/two.log")" -eq 5 ]
check "2 ranks: the losses of 1 process to 1e-6 relative" close "$tmp/one/log.txt" "$tmp/two/log.txt" 1e-6
check "2 ranks: the parameters after 5 steps, to 1e-5" near "$tmp/two/$p5" "$tmp/one/$p5" 1e-5
check "2 ranks: the gathered AdamW moments (state file) equal the unsharded ones, m and v each to 1e-5" near "$tmp/two/$s5" "$tmp/one/$s5" 1e-5 2
# A test that the comparison can fail: a different batch gives other losses.
check "1 process, B=2, a total batch of 128, trains" run other 1 2 -d 128
check "(the loss comparison fails on another batch)" fails close "$tmp/one/log.txt" "$tmp/other/log.txt" 1e-6

# 2. Resuming: from the step-3 files of each run, on 2 ranks and on 1.
resume_from() {  # NAME FROM: $tmp/NAME starts with FROM's step-3 model and state
    mkdir -p "$tmp/$1" && cp "$tmp/$2/$p3" "$tmp/$2/$s3" "$tmp/$1/"
}
# resumed LAUNCH NAME FROM N B WHAT: run NAME resumes FROM's step 3 on N ranks of B (LAUNCH:
# run, or gpu below) and gives FROM's losses of steps 3-4 to 1e-6.
resumed() {
    local launch=$1 name=$2 from=$3 np=$4 b=$5 what=$6
    resume_from "$name" "$from"
    check "$what" "$launch" "$name" "$np" "$b" -y 1
    log_from "$tmp/$from" 3 > "$tmp/$from.tail"
    check "... with the uninterrupted run's losses to 1e-6" close "$tmp/$name/log.txt" "$tmp/$from.tail" 1e-6
}
resume_from two_on_two two
check "2 ranks resume at step 3" run two_on_two 2 2 -y 1
check "2 ranks resumed: model_5 is the uninterrupted run's, bit for bit" cmp "$tmp/two_on_two/$p5" "$tmp/two/$p5"
check "2 ranks resumed: state_5 too" cmp "$tmp/two_on_two/$s5" "$tmp/two/$s5"
log_from "$tmp/two" 3 > "$tmp/two.tail"
check "2 ranks resumed: the losses of steps 3-4, bit for bit" cmp "$tmp/two_on_two/log.txt" "$tmp/two.tail"
resumed run two_on_one two 1 4 "the 2-rank run resumes on 1 process (B=4)"
resumed run one_on_two one 2 2 "the 1-process run resumes on 2 ranks (B=2)"

# 3. Three ranks, D = 20: P = 15140 = 3 * 5046 + 2, so the last rank's shard is longer (P is
# even for every model, so 2 ranks always have equal shards), on the CPU and on the GPU path:
# train_phd --device cuda on the CUDA emulation, its NCCL calls (test/cuda_emu_nccl.h) over
# MPI. The GPU path shards each layer's bucket by itself (E 5120, the layer 4880, the head
# 5140: 2, 2 and 1 left over to the last rank, through NCCL's reduce and broadcast). 2
# micro-batches a step: the reduction may only start in the last one's backward.
three=(-i "$tmp/data/syn_train_*.bin" "${model[@]}" --dim 20 -x 5 -v 0 -n 3 -d 384)
# cpu and gpu: run with these flags (bash's locals reach the functions called), on the CPU
# and on the emulated GPU.
cpu() { local flags=("${three[@]}"); run "$@"; }
gpu() { local exe=$emu flags=("${three[@]}" --device cuda --dtype fp32); run "$@"; }
# same_as_one NAME N [LOSS_TOL TOL]: run NAMEN (N ranks) has run NAME1's (1 process, B=6)
# losses to LOSS_TOL relative (1e-6), parameters and gathered moments to TOL (1e-5).
same_as_one() {
    local one=$tmp/${1}1 many=$tmp/$1$2 lt=${3:-1e-6} pt=${4:-1e-5}
    check "$1, $2 ranks: the losses of 1 process to $lt" close "$one/log.txt" "$many/log.txt" "$lt"
    check "$1, $2 ranks: the parameters after 5 steps, to $pt" near "$many/$p5" "$one/$p5" "$pt"
    check "$1, $2 ranks: the gathered moments, m and v each to $pt" near "$many/$s5" "$one/$s5" "$pt" 2
}
check "cpu, 1 process, B=6, trains" cpu cpu1 1 6
check "cpu, 3 ranks, B=2 each, train" cpu cpu3 3 2
same_as_one cpu 3
# The emulated GPU ranks need $emu built with MPI, as $bin is (make gives both the same flags):
# one missing or without MPI is a broken build, a failure, not a machine without the tools.
# (grep reads ldd's whole output: under pipefail, grep -q's early exit could fail ldd with SIGPIPE)
emu_ok=$([ -x "$emu" ] && ldd "$emu" | grep libmpi > /dev/null && echo 1 || true)
check "the emulated GPU build $emu exists and has MPI (make build/train_phd_emu)" [ -n "$emu_ok" ]
if [ -n "$emu_ok" ]; then
    check "emulated GPU, 1 process, B=6, trains" gpu gpu1 1 6
    check "emulated GPU, 2 ranks, B=3 each, train" gpu gpu2 2 3
    same_as_one gpu 2
    check "emulated GPU, 3 ranks, B=2 each, train" gpu gpu3 3 2
    same_as_one gpu 3
    # Overlap off issues the same reductions after the backward: a bucket reduced before
    # the backward wrote all of its gradients would give other bits.
    check "emulated GPU, 3 ranks, --overlap 0, train" gpu gpu3_after 3 2 --overlap 0
    check "--overlap 0: the overlapped run's losses, bit for bit" cmp "$tmp/gpu3_after/log.txt" "$tmp/gpu3/log.txt"
    check "--overlap 0: its parameters, bit for bit" cmp "$tmp/gpu3_after/$p5" "$tmp/gpu3/$p5"
    check "--overlap 0: its gathered moments, bit for bit" cmp "$tmp/gpu3_after/$s5" "$tmp/gpu3/$s5"
    # The two event waits that order the overlapped reduction (kernels/engine.h), each dropped
    # by the emulation (PHD_EMU_IGNORE_WAITS, test/cuda_emu_stream.h): its queues then run a
    # reduce-scatter before the gradients it reads, or the norm before the reductions, as a
    # GPU may, and the run fails or ends with other parameters.
    caught() { ! { PHD_EMU_IGNORE_WAITS=$1 gpu "gpu3_no_$1" 3 2 && cmp -s "$tmp/gpu3_no_$1/$p5" "$tmp/gpu3/$p5"; }; }
    check "without the reduction's wait for the backward's gradients, the emulation's bits differ" caught nonblocking
    check "without the step's wait for the reductions, the emulation's bits differ" caught legacy
    resumed gpu gpu3_on_2 gpu3 2 3 "emulated GPU: the 3-rank run resumes on 2 ranks (B=3)"
    resumed gpu gpu2_on_3 gpu2 3 2 "emulated GPU: the 2-rank run resumes on 3 ranks (B=2)"
    # bf16, the GPU's default dtype, under ZeRO: head size 16 (D = 32, H = 2; the models above
    # have 8 and 10, which have no bf16 kernel and run in fp32), 2 ranks against 1 process,
    # one micro-batch a step (the runs above have two). A sum whose last bit the ranks' order
    # moves can round to another bf16 weight or activation (2^-9 relative), so the runs agree
    # less closely than in fp32 (seen: losses to 2e-6 relative, parameters to 7e-6 and
    # moments to 5e-5 of their scales): 1e-4 and 1e-3, still far below what a stale bf16 copy
    # of the other rank's shard gives (tried: losses 3 % off at step 2, 11 % at step 5).
    bf16() { local exe=$emu flags=("${three[@]}" --dim 32 -d 192 --device cuda --dtype bf16); run "$@"; }
    check "bf16 (emulated GPU, head size 16), 1 process, B=6, trains" bf16 bf161 1 6
    check "bf16, 2 ranks, B=3 each, train" bf16 bf162 2 3
    check "... on bf16 tensor cores" grep -q "(bf16 tensor cores" "$tmp/bf162.log"
    same_as_one bf16 2 1e-4 1e-3
    resumed bf16 bf162_on_2 bf162 2 3 "bf16: the 2-rank run resumes on 2 ranks, its bf16 weights made anew from the fp32 ones"
    check "... its model_5 is the uninterrupted run's, bit for bit" cmp "$tmp/bf162_on_2/$p5" "$tmp/bf162/$p5"
fi

# 4. Bad input: every rank stops, one line, non-zero exit, no hang (mpi's timeout: exit 124).
# refused NAME PATTERN COMMAND...: besides rank 0's lines of a run under way (model,
# batch, ..., step lines), the output is exactly one line, "error: ..." holding PATTERN.
refused() {
    local name=$1 pattern=$2 rc=0 rest; shift 2
    "$@" > "$tmp/bad.log" 2>&1 || rc=$?
    rest=$(grep -vE '^(ranks: |model |batch |memory: |cost model: |MFU: |step )' "$tmp/bad.log" || true)
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$(echo "$rest" | wc -l)" -eq 1 ] && echo "$rest" | grep "^error: .*$pattern" > /dev/null; then
        ok "$name: $rest"
    else
        bad "$name (exit $rc, want one line with '$pattern'):"; sed 's/^/    /' "$tmp/bad.log" | head -n 20
    fi
}
one=("$bin" "${flags[@]}" -b 2 -o "$tmp/bad")
refused "a total batch the 2 ranks cannot share" "not a multiple of B\*T\*ranks = 2\*32\*2" mpi -np 2 "${one[@]}" -d 192
refused "ranks that disagree on the model" "rank 1: model: .*L=2 .* here, .*L=1 .* on rank 0" \
    mpi -np 1 "${one[@]}" : -np 1 "${one[@]}" --layers 2
refused "ranks that disagree on the learning rate" "rank 1: schedule: .* on rank 0" mpi -np 1 "${one[@]}" : -np 1 "${one[@]}" -l 2e-2
mkdir -p "$tmp/data1"
cp "$tmp/data/syn_train_000000.bin" "$tmp/data/syn_val_000000.bin" "$tmp/data1/"
refused "a shard missing on rank 1" "rank 1: training shards: 1 files, 20000 tokens here, 2 files, 40000 tokens on rank 0" \
    mpi -np 1 "${one[@]}" : -np 1 "${one[@]}" -i "$tmp/data1/syn_train_*.bin"
refused "no shard at all on rank 1" "rank 1: $tmp/nowhere/x_\*.bin: no file matches" \
    mpi -np 1 "${one[@]}" : -np 1 "${one[@]}" -i "$tmp/nowhere/x_*.bin"
# A bad token in a shard that only rank 1 reaches, after 2 steps: rank 0 waits in a
# collective then, and must be stopped, not left hanging.
mkdir -p "$tmp/late0" "$tmp/late1"
make_shard "$tmp/late0/s_000000.bin" 600 1 && make_shard "$tmp/late0/s_000001.bin" 600 3
cp "$tmp/late0/"*.bin "$tmp/late1/"
perl -e 'open(my $f, "+<", $ARGV[0]) or die; binmode $f; seek($f, 1024 + 2 * 100, 0); print $f pack("S<", 300); close $f or die' \
    "$tmp/late1/s_000001.bin"
late=("$bin" "${model[@]}" -x 5 -v 0 -b 2 -d 256 -o "$tmp/bad")
refused "a bad token that rank 1 meets mid-run" "rank 1: .*s_000001.bin: token 300 at byte offset 1224 is out of range" \
    mpi -np 1 "${late[@]}" -i "$tmp/late0/s_*.bin" : -np 1 "${late[@]}" -i "$tmp/late1/s_*.bin"
refused "--generate under mpirun" "run in one process" mpi -np 2 "$bin" --generate 4 -e "$tmp/one/$p5"
# A NaN gradient under a finite loss: a NaN in a padded row of wout (V = 200, Vp = 256) gives
# a logit that never counts, but the backward's 0 * NaN reaches every gradient. Every rank
# stops at step 0, before its update, with one line, and writes no checkpoint (-n 1).
check "1 process, V = 200, trains a step: the model to plant the NaN in" run v200 1 2 --vocab 200 -x 1 -v 0
check "... a NaN planted in wout's first padded row" perl -e '
    open(my $f, "+<", $ARGV[0]) or die; binmode $f; read($f, my $h, 1024) == 1024 or die;
    my ($V, $Vp, $D, $lo, $hi) = (unpack("l<256", $h))[2, 3, 5, 14, 15];
    seek($f, 1024 + 4 * ($lo + $hi * 2**32 - ($Vp - $V) * $D), 0); print $f pack("L<", 0x7fc00000); close $f or die' \
    "$tmp/v200/model_00000001.bin"
nan_norm=(-e "$tmp/v200/model_00000001.bin" "${flags[@]}" -b 2 -n 1 -o "$tmp/nan")
refused "a NaN gradient norm, 2 ranks" "gradient norm is NaN at step 0; no checkpoint written for this step" mpi -np 2 "$bin" "${nan_norm[@]}"
[ -z "$emu_ok" ] || refused "a NaN gradient norm, 2 emulated GPUs" "gradient norm is NaN at step 0; no checkpoint written for this step" \
    mpi -np 2 "$emu" "${nan_norm[@]}" --device cuda
check "... and no checkpoint" [ ! -e "$tmp/nan/model_00000001.bin" ]

# 5. A launch without mpirun (PHD_RENDEZVOUS: the ranks from torchrun's or Slurm's variables,
# the NCCL id through a file, the host collectives over NCCL). The emulation's NCCL runs on
# MPI, so the ranks are still started by mpirun here, with the scheduler's variables made
# from mpirun's; train_phd itself does not start MPI (the emulated NCCL does). Such runs
# must give the bits of the same ranks launched by mpirun.
torchrun_vars='export WORLD_SIZE=$OMPI_COMM_WORLD_SIZE RANK=$OMPI_COMM_WORLD_RANK LOCAL_RANK=$OMPI_COMM_WORLD_LOCAL_RANK'
slurm_vars='export SLURM_NTASKS=$OMPI_COMM_WORLD_SIZE SLURM_PROCID=$OMPI_COMM_WORLD_RANK SLURM_LOCALID=$OMPI_COMM_WORLD_LOCAL_RANK'
mkdir -p "$tmp/rdv"
# by_env RANKS VARS COMMAND...: RANKS copies of COMMAND, launched as a scheduler would.
by_env() { local np=$1 vars=$2; shift 2; mpi -np "$np" -x PHD_RENDEZVOUS="$tmp/rdv" sh -c "$vars; exec \"\$@\"" _ "$@"; }
if [ -n "$emu_ok" ]; then
    # env_run NAME RANKS B VARS: as gpu NAME RANKS B, launched by VARS.
    env_run() {
        by_env "$2" "$4" "$emu" "${three[@]}" --device cuda --dtype fp32 -b "$3" -o "$tmp/$1" > "$tmp/$1.log" 2>&1
    }
    for r in "2 3 torchrun" "3 2 slurm"; do  # ranks, B, whose variables
        read -r np b by <<< "$r"
        vars=${by}_vars
        check "$by's variables, $np emulated GPUs, train" env_run "$by$np" "$np" "$b" "${!vars}"
        check "... without MPI: its line says so" grep -q "^ranks: $np, started by .*'s variables without MPI" "$tmp/$by$np.log"
        for f in log.txt "$p5" "$s5"; do check "... $f: the mpirun-launched run's, bit for bit" cmp "$tmp/$by$np/$f" "$tmp/gpu$np/$f"; done
    done
    check "the rendezvous file is gone after the run" [ ! -e "$tmp/rdv/nccl_id" ]
    alone=("$emu" "${three[@]}" -b 2 -o "$tmp/alone")
    refused "--device cpu without mpirun" "rank 0: --device cpu: ranks started without mpirun (PHD_RENDEZVOUS) run on GPUs" \
        by_env 2 "$torchrun_vars" "${alone[@]}" --device cpu
    # A process alone: rank 1 waits for rank 0's file, which never comes; rank 0 finds a
    # file left by a failed run.
    refused "rank 1, no rank 0" "rank 1: $tmp/rdv/nccl_id: no NCCL id from rank 0 after 1 s" \
        env PHD_RENDEZVOUS="$tmp/rdv" PHD_RENDEZVOUS_TIMEOUT=1 WORLD_SIZE=2 RANK=1 LOCAL_RANK=0 "${alone[@]}"
    touch "$tmp/rdv/nccl_id"
    refused "a rendezvous file left by an earlier run" "rank 0: $tmp/rdv/nccl_id: left by an earlier run" \
        env PHD_RENDEZVOUS="$tmp/rdv" WORLD_SIZE=2 RANK=0 LOCAL_RANK=0 "${alone[@]}"
    refused "RANK missing" "PHD_RENDEZVOUS is set, but RANK is not" env PHD_RENDEZVOUS="$tmp/rdv" WORLD_SIZE=2 "${alone[@]}"
fi
refused "WORLD_SIZE=2 without PHD_RENDEZVOUS" "2 ranks from the scheduler's variables: set PHD_RENDEZVOUS" env WORLD_SIZE=2 "${one[@]}"
refused "PHD_RENDEZVOUS on a build without NCCL" "built without NCCL" \
    env PHD_RENDEZVOUS="$tmp/rdv" WORLD_SIZE=2 RANK=0 LOCAL_RANK=0 "${one[@]}"

finish
