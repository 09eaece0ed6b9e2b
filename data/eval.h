// data/eval.h: multiple-choice evaluation (HellaSwag-style), in llm.c's eval file format,
// and its scoring on either engine.
//
// File: a header of 256 little-endian int32 (magic 20240522, version 1, the number of
// examples, the longest example in bytes), then each example as uint16 values:
//   65535 (start), its size in bytes (these three values included), its index (0, 1, ...),
//   the label (the correct completion), the number of completions N, the context's length
//   and tokens, then N times a completion's length and tokens.
// A file llm.c's dev/data scripts write loads unchanged; read_eval refuses anything else with
// one line naming the file.
//
// Scoring: each completion is a row of its own, the context followed by the completion, and
// passes through the model like any sequence (the PHD model: K copies, the same masks); its
// log-likelihood is the sum over its tokens of log p(token | everything before), read from
// the per-position losses of a forward with the completion as targets. acc takes the
// completion with the largest sum, acc_norm the largest mean per token (ties: the first).
// Several examples share a forward, their completions side by side in the B rows.
#pragma once
#include <algorithm>
#include <string>
#include <vector>
#include "../kernels/utils.h"

static constexpr int kEvalMagic = 20240522, kEvalVersion = 1;

struct EvalExample {
    std::vector<int> context;               // the shared prefix
    std::vector<std::vector<int>> endings;  // the completions
    int label;                              // the correct one
};

// The examples of an eval file; any malformed part: one line, exit 1.
static inline std::vector<EvalExample> read_eval(const char* path) {
    FILE* f = fopen_check(path, "rb");
    const int64_t size = file_size_check(f, path);
    int32_t h[256];
    if (size < (int64_t)sizeof h) die("%s: not an eval file (shorter than the 1024-byte header)", path);
    fread_check(h, sizeof(int32_t), 256, f, path);
    if (h[0] != kEvalMagic || h[1] != kEvalVersion)
        die("%s: bad eval magic/version %d/%d (want %d/%d: llm.c's multiple-choice format)%s", path, h[0], h[1], kEvalMagic, kEvalVersion,
            h[0] == 20240520 || h[0] == 20240801 ? "; this is a token shard" : "");
    if (h[2] < 0) die("%s: %d examples in the header", path, h[2]);
    std::vector<uint16_t> all((size - (int64_t)sizeof h) / 2);
    if (size % 2) die("%s: truncated (an odd number of bytes)", path);
    fread_check(all.data(), sizeof(uint16_t), all.size(), f, path);
    fclose_check(f, path);
    std::vector<EvalExample> out;
    size_t at = 0;
    for (int i = 0; i < h[2]; i++) {
        auto take = [&](const char* what) -> int {
            if (at >= all.size()) die("%s: truncated in example %d (its %s)", path, i, what);
            return all[at++];
        };
        const size_t start = at;
        if (take("start") != 65535) die("%s: example %d does not start with 65535", path, i);
        const int bytes = take("size"), index = take("index");
        if (index != i) die("%s: example %d has index %d", path, i, index);
        EvalExample e;
        e.label = take("label");
        const int n = take("number of completions");
        if (n < 1) die("%s: example %d has no completions", path, i);
        if (e.label >= n) die("%s: example %d has label %d of %d completions", path, i, e.label, n);
        e.context.resize(take("context length"));
        if (e.context.empty()) die("%s: example %d has an empty context", path, i);
        for (int& t : e.context) t = take("context");
        e.endings.resize(n);
        for (std::vector<int>& c : e.endings) {
            c.resize(take("completion length"));
            if (c.empty()) die("%s: example %d has an empty completion", path, i);
            for (int& t : c) t = take("completion");
        }
        if ((size_t)bytes != 2 * (at - start)) die("%s: example %d says %d bytes, holds %zu", path, i, bytes, 2 * (at - start));
        if (bytes > h[3]) die("%s: example %d has %d bytes, more than the header's longest, %d", path, i, bytes, h[3]);
        out.push_back(std::move(e));
    }
    if (at != all.size()) die("%s: %zu bytes after the header's %d examples", path, 2 * (all.size() - at), h[2]);
    return out;
}

// Writes examples in that format (to a temporary file, renamed when complete).
static inline void write_eval(const char* path, const std::vector<EvalExample>& examples) {
    std::vector<uint16_t> body;
    int longest = 0;
    for (size_t i = 0; i < examples.size(); i++) {
        const EvalExample& e = examples[i];
        const size_t start = body.size();
        body.insert(body.end(), {65535, 0, (uint16_t)i, (uint16_t)e.label, (uint16_t)e.endings.size(), (uint16_t)e.context.size()});
        // uint16 ids, 65535 the examples' marker: a vocabulary past that (cl100k's) does not fit
        auto put = [&](const std::vector<int>& ids) {
            for (int t : ids)
                if (t < 0 || t >= 65535) die("%s: token %d of example %zu does not fit llm.c's uint16 eval format", path, t, i);
            body.insert(body.end(), ids.begin(), ids.end());
        };
        put(e.context);
        for (const std::vector<int>& c : e.endings) {
            body.push_back((uint16_t)c.size());
            put(c);
        }
        const size_t bytes = 2 * (body.size() - start);
        if (bytes > 65535 || i > 65534) die("%s: example %zu does not fit the format's 16-bit fields", path, i);
        body[start + 1] = (uint16_t)bytes;
        longest = std::max(longest, (int)bytes);
    }
    int32_t h[256] = {kEvalMagic, kEvalVersion, (int32_t)examples.size(), longest};
    FILE* f = atomic_open(path);
    fwrite_check(h, sizeof(int32_t), 256, f, path);
    fwrite_check(body.data(), sizeof(uint16_t), body.size(), f, path);
    atomic_commit(f, path);
}

struct EvalCounts {
    double examples = 0, correct = 0, correct_norm = 0;  // doubles: summed over the ranks as they are
};

// Scores every ranks-th example from the rank-th (its share) with E, forwards of B rows of
// at most T tokens (the training batch's shape): of the longest example rounded up to 16, so
// that short tasks cost what their tokens cost (the GPU engine lays them out in training's
// buffers: its step graph stays valid). scores, when given, receives each scored
// completion's log-likelihood, example by example. path names the file in errors: a token
// id of V or more, a completion that does not fit in T, or more completions than B rows.
template<typename Engine>
EvalCounts evaluate(Engine& E, const std::vector<EvalExample>& examples, const char* path, int V, int B, int T, int rank, int ranks,
                    std::vector<std::vector<double>>* scores = nullptr) {
    for (size_t i = 0; i < examples.size(); i++) {
        const EvalExample& e = examples[i];
        if ((int)e.endings.size() > B)
            die("%s: example %zu has %zu completions, more than the %d rows of a batch (-b)", path, i, e.endings.size(), B);
        for (const std::vector<int>& c : e.endings) {
            if (e.context.size() + c.size() > (size_t)T)
                die("%s: example %zu has %zu context and %zu completion tokens, more than T=%d (-t)", path, i, e.context.size(), c.size(), T);
            for (const std::vector<int>* s : {&e.context, &c})
                for (int t : *s)
                    if (t >= V) die("%s: example %zu has token id %d, outside the model's vocabulary of %d", path, i, t, V);
        }
    }
    size_t longest = 1;
    for (const EvalExample& e : examples)
        for (const std::vector<int>& c : e.endings) longest = std::max(longest, e.context.size() + c.size());
    T = std::min(T, (int)(longest + 15) / 16 * 16);
    EvalCounts n;
    std::vector<int> in((size_t)B * T), tg(in.size());
    for (size_t next = rank; next < examples.size();) {
        std::vector<size_t> batch;  // examples in this forward, their completions in rows from 0
        int rows = 0;
        std::fill(in.begin(), in.end(), 0);
        std::fill(tg.begin(), tg.end(), 0);
        for (; next < examples.size() && rows + (int)examples[next].endings.size() <= B; next += ranks) {
            const EvalExample& e = examples[next];
            for (const std::vector<int>& c : e.endings) {
                int* row = in.data() + (size_t)rows++ * T;
                std::copy(e.context.begin(), e.context.end(), row);
                std::copy(c.begin(), c.end(), row + e.context.size());
                std::copy(c.begin(), c.end(), tg.begin() + (row - in.data()) + e.context.size() - 1);  // each token predicted by the one before
            }
            batch.push_back(next);
        }
        E.forward(in.data(), tg.data(), B, T);
        const std::vector<float> loss = E.row_losses();
        rows = 0;
        for (size_t i : batch) {
            const EvalExample& e = examples[i];
            int best = 0, best_norm = 0;
            std::vector<double> ll(e.endings.size());
            for (size_t c = 0; c < e.endings.size(); c++, rows++) {
                for (size_t j = 0; j < e.endings[c].size(); j++) ll[c] -= loss[(size_t)rows * T + e.context.size() - 1 + j];
                if (ll[c] > ll[best]) best = (int)c;
                if (ll[c] / e.endings[c].size() > ll[best_norm] / e.endings[best_norm].size()) best_norm = (int)c;
            }
            n.examples++;
            n.correct += best == e.label;
            n.correct_norm += best_norm == e.label;
            if (scores) scores->push_back(ll);
        }
    }
    return n;
}
