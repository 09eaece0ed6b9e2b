#!/usr/bin/env bash
# Loss curve from a train_phd log: dev/plot_loss.sh out/kjv/log.txt out/kjv/loss.png
# With --eval tasks in the log (lines "step N eval NAME acc X acc_norm Y"), a second panel
# shows each task's acc and acc_norm against the step.
set -euo pipefail
log=$1 png=$2
[ -f "$log" ] || { echo "error: $log: no such log" >&2; exit 1; }
command -v gnuplot >/dev/null || { echo "error: gnuplot is not installed (dev/setup.sh installs it)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '$3 == "train" {print $2, $4}' "$log" > "$tmp/train"
awk '$3 == "val" {print $2, $4}' "$log" > "$tmp/val"
awk -v d="$tmp" '$3 == "eval" {print $2, $6, $8 > (d "/eval_" $4)}' "$log"
plots="'$tmp/train' using 1:2 with lines title 'train'"
[ -s "$tmp/val" ] && plots="$plots, '$tmp/val' using 1:2 with linespoints title 'val'"
loss="set xlabel 'step'; set ylabel 'loss (nats/token)'; set grid; set title '$(dirname "$log")'; plot $plots"
evals=""
for f in "$tmp"/eval_*; do
    [ -e "$f" ] || continue
    name=${f##*/eval_}
    evals="${evals:+$evals, }'$f' using 1:2 with linespoints title '$name acc', '$f' using 1:3 with linespoints dashtype 2 title '$name acc_norm'"
done
if [ -n "$evals" ]; then
    gnuplot -e "set terminal pngcairo size 900,900 noenhanced; set output '$png.tmp'; set multiplot layout 2,1; $loss;
                set ylabel 'accuracy'; set yrange [0:1]; set title 'multiple-choice tasks'; plot $evals; unset multiplot"
else
    gnuplot -e "set terminal pngcairo size 900,540 noenhanced; set output '$png.tmp'; $loss"
fi
mv "$png.tmp" "$png"
echo "wrote $png"
