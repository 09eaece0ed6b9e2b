// kernels/generate.h: text out. train_phd's --generate decodes a prompt on an engine's
// decoder (kernels/engine.h: pre-fill, then one step a token with the PHD KV cache) and
// prints the tokens as they come, then the time and what the KV cache holds.
#pragma once
#include <chrono>
#include <cstdio>
#include <vector>
#include "../data/tokenizer.h"
#include "../model.h"
#include "decode_blocks.h"

// A token as text (ids where no tokenizer was given), at once.
inline void print_token(const Tokenizer& tok, int id) {
    if (tok.vocab_size()) fputs(tok.decode(id).c_str(), stdout);
    else printf(" %d", id);
    fflush(stdout);
}

// The document separator starts samples and empty prompts: the tokenizer's end-of-text, or
// GPT-2's 50256 when the vocabulary has it, else 0 (the byte-level separator).
inline int separator_token(const Tokenizer& tok, const Config& c) {
    return tok.eot >= 0 ? tok.eot : (c.V > 50256 ? 50256 : 0);
}

// prompt -> pre-fill -> n decode steps on the engine's device, streamed; with S samples, S
// continuations decoded together (one pre-fill, each sample's own draws: sample s is what
// seed + s gives alone), printed one after another. The prompt and the n tokens fit in maxT
// (the caller checks, naming its flags).
template<typename Engine>
int generate(Engine& E, const Config& c, const Tokenizer& tok, const std::vector<int>& prompt, int n, int S, const Sampling& sampling) {
    auto print_prompt = [&] {
        for (int t : prompt) print_token(tok, t);
        printf(tok.vocab_size() ? "" : " |");
    };
    if (S == 1) print_prompt();
    auto t0 = std::chrono::steady_clock::now();
    auto dec = E.decoder(S, sampling);
    std::vector<std::vector<int>> out(S);  // (S, n)
    dec.generate(prompt, n, [&](const std::vector<int>& next) {
        if (S == 1) print_token(tok, next[0]);
        for (int s = 0; s < S; s++) out[s].push_back(next[s]);
    });
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    for (int s = 0; S > 1 && s < S; s++) {
        printf("%s--- sample %d of %d (seed %llu)\n", s ? "\n" : "", s + 1, S, (unsigned long long)(sampling.seed + s));
        print_prompt();
        for (int t : out[s]) print_token(tok, t);
    }
    const double kib = 1.0 / 1024, per_entry = dec.entry_bytes();
    const size_t t = dec.t;
    if (S == 1)
        printf("\n%d tokens in %.0f ms on %s in %s (%.1f ms/token incl. pre-fill of %zu)\n", n, ms, E.name(), dec.precision(),
               ms / n, prompt.size());
    else
        printf("\n%d tokens x %d samples in %.0f ms on %s in %s (%.1f ms/step, %.0f tokens/s, incl. one pre-fill of %zu)\n", n, S,
               ms, E.name(), dec.precision(), ms / n, 1e3 * n * S / ms, prompt.size());
    printf("KV cache after %zu tokens: %zu entries/layer = %.1f KiB/layer, %.1f KiB/sequence (%s); "
           "vanilla %.1f KiB, naive-%d %.1f KiB per layer\n", t, dec.cache_entries(), dec.cache_entries() * per_entry * kib,
           dec.cache_bytes() * kib, variant_name(c).c_str(), t * per_entry * kib, c.K, c.K * t * per_entry * kib);
    return 0;
}
