#!/usr/bin/env bash
# Plots and summary of a study CSV (dev/study.sh writes it and calls this at its end):
#   dev/study_plot.sh dev/study/cpu/study.csv
# writes next to the CSV:
#   loss_tokens.png       validation loss against original tokens, one line per variant: the
#                         mean over seeds, the min-max range over seeds as a shaded band
#   loss_flops.png        the same against training FLOPs (model.h §7's count)
#   final_vs_vanilla.png  final validation loss minus vanilla's, per variant (mean over seeds;
#                         error bar: half the min-max range of that variant's seeds)
#   accuracy_tokens.png   with task columns (dev/study.sh --evals): each task's acc_norm against
#                         original tokens, a panel a task, as loss_tokens.png
#   summary.md            the table, also printed (with each task's final acc and acc_norm)
# Without gnuplot it still writes the table and prints "SKIPPED: no gnuplot".
# Aggregation is awk over the CSV; the variants keep the CSV's order.
set -euo pipefail
export LC_ALL=C
die() { echo "error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: dev/study_plot.sh STUDY.csv"
csv=$1
[ -f "$csv" ] || die "$csv: no such file"
header="variant,seed,step,tokens,train_flops,val_loss,train_s,wall_s"
first=$(head -n 1 "$csv")
[[ $first =~ ^$header(,[A-Za-z0-9_.-]+_acc,[A-Za-z0-9_.-]+_acc_norm)*$ ]] || die "$csv: the first line is not '$header[,TASK_acc,TASK_acc_norm]...'"
IFS=, read -r -a cols <<< "$first"
tasks=()  # the tasks of the accuracy columns, in order: columns 9 + 2i (acc), 10 + 2i (acc_norm)
for ((c = 8; c < ${#cols[@]}; c += 2)); do tasks+=("${cols[$c]%_acc}"); done
[ "$(wc -l < "$csv")" -gt 1 ] || die "$csv: no rows"
dir=$(dirname "$csv")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Per (variant, step): tokens, FLOPs, mean, min, max of the loss over seeds. One gnuplot data
# block per variant (blocks separated by two blank lines, addressed with `index`). Step 0 (the
# untrained loss, ~ln V) is left out when there are at least two later points: it would
# squeeze the differences between the variants into a few pixels.
# curves COLUMN SKIP0: of the CSV's column COLUMN (6: the loss; an accuracy column), step 0
# left out when SKIP0 is 1 and there are two later points.
curves_of() {
awk -F, -v col="$1" -v want_skip="$2" -v vars="$tmp/variants" -v skipped="$tmp/skipped0" '
    NR == 1 { next }
    !($1 in seen) { seen[$1] = 1; order[++nv] = $1 }
    {
        k = $1 SUBSEP $3
        if (!(k in n)) { steps[$1] = steps[$1] " " $3; lo[k] = $col; hi[k] = $col }
        n[k]++; sum[k] += $col; tok[k] = $4; fl[k] = $5
        if ($col < lo[k]) lo[k] = $col
        if ($col > hi[k]) hi[k] = $col
        if ($3 + 0 > 0 && !($3 in later)) { later[$3] = 1; nlater++ }
    }
    END {
        skip0 = want_skip && nlater >= 2
        print skip0 > skipped
        for (i = 1; i <= nv; i++) {
            v = order[i]; print v > vars
            m = split(steps[v], st, " ")
            for (j = 1; j <= m; j++) {
                k = v SUBSEP st[j]
                if (skip0 && st[j] + 0 == 0) continue
                printf "%s %s %s %.9g %.9g %.9g\n", st[j], tok[k], fl[k], sum[k] / n[k], lo[k], hi[k]
            }
            printf "\n\n"
        }
    }' "$csv"
}
for i in "${!tasks[@]}"; do curves_of $((10 + 2 * i)) 0 > "$tmp/acc$i.dat"; done
curves_of 6 1 > "$tmp/curves.dat"

# Final validation point of each variant: its largest step. Also the bars for the chart.
awk -F, -v bars="$tmp/bars.dat" -v tasks="${tasks[*]}" '
    NR == 1 { next }
    !($1 in seen) { seen[$1] = 1; order[++nv] = $1 }
    { if (!($1 in last) || $3 + 0 > last[$1]) last[$1] = $3 + 0; rows[NR] = $0 }
    END {
        for (r in rows) {
            split(rows[r], f, ",")
            if (f[3] + 0 != last[f[1]]) continue
            v = f[1]
            if (!(v in n)) { lo[v] = f[6]; hi[v] = f[6] }
            n[v]++; sum[v] += f[6]; ts[v] += f[7]; tok[v] = f[4]; fpt[v] = f[4] > 0 ? f[5] / f[4] : 0
            if (f[6] < lo[v]) lo[v] = f[6]
            if (f[6] > hi[v]) hi[v] = f[6]
            for (c = 9; c in f; c++) {  # the accuracy columns
                x = f[c] + 0
                if (n[v] == 1 || x < alo[v, c]) alo[v, c] = x
                if (n[v] == 1 || x > ahi[v, c]) ahi[v, c] = x
                asum[v, c] += x; ncol = c
            }
        }
        nt = split(tasks, task, " ")
        base = ("vanilla" in n) ? sum["vanilla"] / n["vanilla"] : ""
        bfpt = ("vanilla" in n) ? fpt["vanilla"] : ""
        printf "Final validation loss after %d steps (%.3g original tokens a run), mean over seeds ± half the min-max range over seeds.\n\n", last[order[1]], tok[order[1]]
        if (nt) print "Accuracy: the fraction of examples whose correct completion the model scores highest, by summed (acc) and per-token (acc_norm) log-likelihood; chance 0.25 for 4 completions.\n"
        printf "| variant | seeds | final val loss | Δ vs vanilla | FLOPs/token | FLOPs/token vs vanilla | training s (mean) |"
        for (t = 1; t <= nt; t++) printf " %s acc | %s acc_norm |", task[t], task[t]
        printf "\n|---|---|---|---|---|---|---|"
        for (t = 1; t <= nt; t++) printf "---|---|"
        printf "\n"
        for (i = 1; i <= nv; i++) {
            v = order[i]; mean = sum[v] / n[v]
            d = base == "" ? "n/a" : sprintf("%+.4f", mean - base)
            r = bfpt == "" || bfpt == 0 ? "n/a" : sprintf("%.2f×", fpt[v] / bfpt)
            printf "| %s | %d | %.4f ± %.4f | %s | %.3g | %s | %.1f |", v, n[v], mean, (hi[v] - lo[v]) / 2, d, fpt[v], r, ts[v] / n[v]
            for (c = 9; c <= ncol; c++) printf " %.3f ± %.3f |", asum[v, c] / n[v], (ahi[v, c] - alo[v, c]) / 2
            printf "\n"
            if (base != "") printf "%d %.9g %.9g %s\n", i - 1, mean - base, (hi[v] - lo[v]) / 2, v > bars
        }
        if (last[order[1]] == 0) print "\n(no training step yet)"
    }' "$csv" > "$dir/summary.md"
cat "$dir/summary.md"
echo "wrote $dir/summary.md"

if ! command -v gnuplot >/dev/null; then
    echo "SKIPPED: no gnuplot (dev/setup.sh installs gnuplot-nox): no PNGs drawn"
    exit 0
fi

mapfile -t variants < "$tmp/variants"
seeds=$(awk -F, 'NR > 1 && !($2 in s) { s[$2] = 1; n++ } END { print n + 0 }' "$csv")
common="set terminal pngcairo size 1000,620 font ',10'; set grid; set key outside right top;
set ylabel 'validation loss (nats/token)'; set style fill transparent solid 0.18 noborder"

# One band and one line per variant, with the same colour (linetype i).
curves() {  # X_COLUMN
    local i cmd=""
    for i in "${!variants[@]}"; do
        [ -n "$cmd" ] && cmd+=", "
        cmd+="'$tmp/curves.dat' index $i using $1:5:6 with filledcurves lt $((i + 1)) notitle, "
        cmd+="'' index $i using $1:4 with linespoints lt $((i + 1)) pt 7 ps 0.6 lw 2 title '${variants[$i]}'"
    done
    echo "$cmd"
}
what="mean of $seeds seed(s), band: min-max over seeds"
[ "$(cat "$tmp/skipped0")" = 1 ] && what+="; step 0 not shown"
gnuplot -e "$common; set output '$dir/loss_tokens.png.tmp'; set xlabel 'original tokens';
    set title 'validation loss vs tokens ($what)'; plot $(curves 2)"
gnuplot -e "$common; set output '$dir/loss_flops.png.tmp'; set xlabel 'training FLOPs (model.h §7)';
    set format x '%.1e'; set title 'validation loss vs training FLOPs ($what)'; plot $(curves 3)"
mv "$dir/loss_tokens.png.tmp" "$dir/loss_tokens.png"
mv "$dir/loss_flops.png.tmp" "$dir/loss_flops.png"
echo "wrote $dir/loss_tokens.png $dir/loss_flops.png"
if [ ${#tasks[@]} -gt 0 ]; then
    panels=""
    for i in "${!tasks[@]}"; do
        cmd=""
        for j in "${!variants[@]}"; do
            [ -n "$cmd" ] && cmd+=", "
            cmd+="'$tmp/acc$i.dat' index $j using 2:5:6 with filledcurves lt $((j + 1)) notitle, "
            cmd+="'' index $j using 2:4 with linespoints lt $((j + 1)) pt 7 ps 0.6 lw 2 title '${variants[$j]}'"
        done
        panels+="set title '${tasks[$i]}: acc_norm (mean of $seeds seed(s), band: min-max; chance 0.25)'; plot $cmd, 0.25 with lines dt 2 lc rgb 'gray' title 'chance';"
    done
    gnuplot -e "set terminal pngcairo noenhanced size 1000,$((380 * ${#tasks[@]})) font ',10'; set output '$dir/accuracy_tokens.png.tmp';
        set grid; set key outside right top; set style fill transparent solid 0.18 noborder; set xlabel 'original tokens';
        set ylabel 'acc_norm'; set multiplot layout ${#tasks[@]},1; $panels unset multiplot"
    mv "$dir/accuracy_tokens.png.tmp" "$dir/accuracy_tokens.png"
    echo "wrote $dir/accuracy_tokens.png"
fi

if [ -s "$tmp/bars.dat" ] && [ ${#variants[@]} -ge 2 ]; then  # (vanilla alone has nothing to compare)
    gnuplot -e "set terminal pngcairo size 900,520 font ',10'; set output '$dir/final_vs_vanilla.png.tmp';
        set grid ytics; set style fill solid 0.6 border -1; set boxwidth 0.6; set xtics rotate by -30;
        set ylabel 'final val loss - vanilla (nats/token)'; set xrange [-0.6:${#variants[@]}-0.4];
        set title 'final validation loss relative to vanilla (lower is better; error bar: half the min-max range over seeds)';
        set offsets 0, 0, graph 0.08, graph 0.08;
        plot '$tmp/bars.dat' using 1:2:xtic(4) with boxes lc rgb '#4a7ebb' notitle,
             '' using 1:2:3 with yerrorbars lc rgb 'black' lw 1.5 ps 0 notitle,
             '' using 1:(\$2 >= 0 ? \$2 + \$3 : NaN):(sprintf('%+.4f', \$2)) with labels offset 0, char 0.8 notitle,
             '' using 1:(\$2 < 0 ? \$2 - \$3 : NaN):(sprintf('%+.4f', \$2)) with labels offset 0, char -0.8 notitle,
             0 with lines lc rgb 'black' notitle"
    mv "$dir/final_vs_vanilla.png.tmp" "$dir/final_vs_vanilla.png"
    echo "wrote $dir/final_vs_vanilla.png"
else
    rm -f "$dir/final_vs_vanilla.png"
    echo "no vanilla, or nothing beside it, in $csv: no final_vs_vanilla.png"
fi
