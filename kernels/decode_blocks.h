// kernels/decode_blocks.h: the blocks of rows both decoders (kernels/cpu_decode.h and
// kernels/gpu_decode.cuh) run, and how they sample.
#pragma once
#include <cstdint>
#include <vector>
#include "../model.h"

// Inference (model.h §6) runs in blocks of rows, on the CPU (kernels/cpu_decode.h) and the GPU
// (kernels/gpu_decode.cuh) alike, for S samples at once (--samples): continuations of one
// prompt, each with its own cache after the prompt's. A block is in the row order: originals
// of consecutive positions, then hidden tokens of consecutive stream indices. DecodeBlocks
// makes the blocks of any Dec with cfg(), t and run_block(ns, cs, toks): the rows' positions
// and copies (R each) and their tokens, (B, R) for B samples: the pre-fill of a P-token
// prompt as one block of one sample (the samples share it), then one block of the K copies
// of each sample's next token.
template<typename Dec> struct DecodeBlocks {
    // The pre-fill computes every original, and the hidden tokens from the first position
    // whose hidden tokens the last position's copies see, directly or through the hidden
    // tokens they see (the window rule's closure): phd, the last position's; phd-cswa, the
    // last chunk's; phd-swa and naive, all of them. Later queries see no earlier ones.
    void prefill(const int* prompt, int P) {
        Dec& d = static_cast<Dec&>(*this);
        const Config& c = d.cfg();
        int first = P - 1;
        while (c.K > 1 && first > 0) {
            const int m = hidden_live_from(c, first) / (c.K - 1);  // position of the lowest hidden token seen
            if (m >= first) break;
            first = m;
        }
        std::vector<int> ns, cs, toks;
        auto add = [&](int n, int copy) { ns.push_back(n); cs.push_back(copy); toks.push_back(prompt[n]); };
        for (int n = 0; n < P; n++) add(n, 0);
        for (int n = first; n < P; n++)
            for (int copy = 1; copy < c.K; copy++) add(n, copy);
        d.run_block(ns, cs, toks);
    }
    // Feeds the K copies of each sample's next token, tokens (S); each sample's logits then
    // hold its last copy's prediction.
    void step(const std::vector<int>& tokens) {
        Dec& d = static_cast<Dec&>(*this);
        const int K = d.cfg().K;
        std::vector<int> ns(K, d.t), cs, toks;
        for (int k = 0; k < K; k++) cs.push_back(k);
        for (int tok : tokens) toks.insert(toks.end(), K, tok);
        d.run_block(ns, cs, toks);
    }
    // n tokens for each sample after the prompt: the pre-fill, then each token's draws (the
    // decoder's sample(), its Sampling), which on_tokens(next) sees, fed back by a step.
    template<typename OnTokens> void generate(const std::vector<int>& prompt, int n, OnTokens on_tokens) {
        Dec& d = static_cast<Dec&>(*this);
        prefill(prompt.data(), (int)prompt.size());
        for (int i = 0; i < n; i++) {
            const std::vector<int> next = d.sample();
            on_tokens(next);
            if (i + 1 < n) step(next);
        }
    }
};

// How both decoders pick each sample's next token from its logits (Vp, the first V real):
// greedy at temperature 0 (the lowest id among the largest), else a draw from the softmax at
// the temperature over the logits at or above the top_k-th largest (all when top_k <= 0).
// Sample s draws from an Rng (kernels/utils.h) of its own, seeded seed + s, once per block:
// sample s of a batch is what seed + s gives alone.
struct Sampling {
    float temperature = 1.0f;
    int top_k = 0;
    uint64_t seed = 0;
};
