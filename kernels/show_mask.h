// kernels/show_mask.h: train_phd's --show-mask, the mask of a variant drawn as text.
#pragma once
#include <cstdio>
#include <string>
#include <vector>
#include "../model.h"

static constexpr int kShowMaxT = 64, kShowMaxRows = 256;  // what a terminal can show

// The visibility grid of one sequence of T positions, straight from phd_visible
// (model.h §4), for readers learning the method. Rows are queries, columns keys, both
// in the logical order (position n, copy c) and labelled n.c (row labels with their dots
// aligned; a column's label reads downwards). '#': the query sees the key. With K > 1 a space
// separates the columns of consecutive positions. T <= kShowMaxT, T*K <= kShowMaxRows (the
// caller checks, naming its flags).
inline void print_mask(const Config& c, int T) {
    const int K = c.K, N = T * K;
    auto digits = [](int x) { int d = 1; for (; x >= 10; x /= 10) d++; return d; };
    const int dn = digits(T - 1), dc = digits(K - 1), lw = dn + 1 + dc;
    std::vector<std::string> grid(N);
    long visible = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            if (K > 1 && j > 0 && j % K == 0) grid[i] += ' ';
            const bool v = phd_visible(c, i / K, i % K, j / K, j % K);
            grid[i] += v ? '#' : '.';
            visible += v;
        }
    auto param = [](bool used, int x) { return used ? std::to_string(x) : std::string("-"); };
    printf("%s K=%d W=%s C=%s T=%d: %ld of %d pairs visible; # = query n.c (row) sees key m.d (column, read down)\n",
           variant_name(c).c_str(), K,
           param(c.variant == PHD_SWA || c.variant == PHD_CSWA, c.W).c_str(), param(c.variant == PHD_CSWA, c.C).c_str(),
           T, visible, N * N);
    // Column labels, one character per line: the position's digits (right-aligned, so padded
    // at the top), a '.', the copy's digits.
    auto digit_line = [&](int ndig, int line, bool copy) {
        std::string s(lw + 2, ' ');
        for (int j = 0; j < N; j++) {
            if (K > 1 && j > 0 && j % K == 0) s += ' ';
            const int x = copy ? j % K : j / K, place = ndig - 1 - line;
            int p10 = 1;
            for (int k = 0; k < place; k++) p10 *= 10;
            s += x >= p10 || place == 0 ? (char)('0' + x / p10 % 10) : ' ';
        }
        printf("%s\n", s.c_str());
    };
    for (int l = 0; l < dn; l++) digit_line(dn, l, false);
    std::string dots(lw + 2, ' ');
    for (int j = 0; j < N; j++) dots += K > 1 && j > 0 && j % K == 0 ? " ." : ".";
    printf("%s\n", dots.c_str());
    for (int l = 0; l < dc; l++) digit_line(dc, l, true);
    for (int i = 0; i < N; i++) printf("%*d.%-*d  %s\n", dn, i / K, dc, i % K, grid[i].c_str());  // dots aligned
}
