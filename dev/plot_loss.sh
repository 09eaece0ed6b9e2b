#!/usr/bin/env bash
# Loss curve from a train_phd log: dev/plot_loss.sh out/kjv/log.txt out/kjv/loss.png
set -euo pipefail
log=$1 png=$2
[ -f "$log" ] || { echo "error: $log: no such log" >&2; exit 1; }
command -v gnuplot >/dev/null || { echo "error: gnuplot is not installed (dev/setup.sh installs it)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '$3 == "train" {print $2, $4}' "$log" > "$tmp/train"
awk '$3 == "val" {print $2, $4}' "$log" > "$tmp/val"
plots="'$tmp/train' using 1:2 with lines title 'train'"
[ -s "$tmp/val" ] && plots="$plots, '$tmp/val' using 1:2 with linespoints title 'val'"
gnuplot -e "set terminal pngcairo size 900,540; set output '$png.tmp'; set xlabel 'step'; set ylabel 'loss (nats/token)'; set grid; set title '$(dirname "$log")'; plot $plots"
mv "$png.tmp" "$png"
echo "wrote $png"
