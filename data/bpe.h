// data/bpe.h: the byte-level BPE encoder of GPT-2 and cl100k_base (needs PCRE2), as OpenAI's
// tiktoken runs it.
//
// 1. Pre-tokenise with the tokenizer's pattern (PCRE2, Unicode classes; kGpt2Pattern or
//    kCl100kPattern, data/tokenizer.h).
// 2. Split each piece into its bytes; merge the adjacent pair whose concatenation is the
//    token of lowest id, the leftmost of equals, until no adjacent pair is a token. The ids
//    below Tokenizer::ranked are in merge order, so this is BPE with the tokenizer's merges
//    (for GPT-2 the ids of encoder.json, which are the ranks of vocab.bpe's merges).
// 3. The ids of the parts.
// The vocabulary comes from a Tokenizer: tokenizer.bin, or the vocabulary files through
// data/bpe_files.h. Special tokens (<|endoftext|>, ...) are never produced from text: the
// data pipeline inserts the end-of-text token between documents.
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <climits>
#include <unordered_map>
#include "tokenizer.h"

// Byte offset of the first invalid UTF-8 sequence, or -1 if the text is valid.
static inline long long utf8_error_offset(const std::string& s) {
    int errcode;
    PCRE2_SIZE off;
    pcre2_code* re = pcre2_compile((PCRE2_SPTR) "", 0, PCRE2_UTF, &errcode, &off, nullptr);
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
    int rc = pcre2_match(re, (PCRE2_SPTR)s.data(), s.size(), 0, 0, md, nullptr);
    long long bad = rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21 ? (long long)pcre2_get_startchar(md) : -1;
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return bad;
}

struct Bpe {
    std::unordered_map<std::string, int> rank;                     // token bytes -> id, the ids below Tokenizer::ranked
    std::unordered_map<std::string, std::vector<uint32_t>> cache;  // piece -> ids
    pcre2_code* re = nullptr;
    pcre2_match_data* md = nullptr;

    explicit Bpe(const Tokenizer& t) {
        if (t.pattern.empty() || t.ranked < 256) die("tokenizer has no BPE: a byte-level tokenizer encodes bytes as they are");
        for (int id = 0; id < t.ranked; id++) rank[t.pieces[id]] = id;
        for (int b = 0; b < 256; b++)
            if (!rank.count(std::string(1, (char)b))) die("tokenizer: byte %d has no token, so some text has no encoding", b);
        int err;
        PCRE2_SIZE off;
        re = pcre2_compile((PCRE2_SPTR)t.pattern.c_str(), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
        if (!re) die("tokenizer: its pattern failed to compile (PCRE2 error %d at %zu)", err, (size_t)off);
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  // optional speed-up; matching works without it
        md = pcre2_match_data_create_from_pattern(re, nullptr);
    }
    ~Bpe() {
        pcre2_match_data_free(md);
        pcre2_code_free(re);
    }
    Bpe(const Bpe&) = delete;
    Bpe& operator=(const Bpe&) = delete;

    // Appends the ids of text, which must be valid UTF-8 (see utf8_error_offset).
    void encode(const std::string& text, std::vector<uint32_t>& out) {
        PCRE2_SIZE pos = 0;
        while (pos < text.size()) {  // the whole text was validated once: no per-match UTF check
            int rc = pcre2_match(re, (PCRE2_SPTR)text.data(), text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
            if (rc < 0) die("BPE pre-tokeniser failed at byte %zu (PCRE2 error %d)", (size_t)pos, rc);
            PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
            encode_piece(text.substr(ov[0], ov[1] - ov[0]), out);
            pos = ov[1];
        }
    }

    void encode_piece(const std::string& piece, std::vector<uint32_t>& out) {
        auto hit = cache.find(piece);
        if (hit == cache.end()) {
            std::vector<std::string> part;
            for (char b : piece) part.push_back(std::string(1, b));
            while (part.size() > 1) {
                int best = INT_MAX;
                size_t at = 0;
                for (size_t i = 0; i + 1 < part.size(); i++) {
                    auto r = rank.find(part[i] + part[i + 1]);
                    if (r != rank.end() && r->second < best) { best = r->second; at = i; }
                }
                if (best == INT_MAX) break;
                part[at] += part[at + 1];
                part.erase(part.begin() + at + 1);
            }
            std::vector<uint32_t> ids;
            for (const std::string& s : part) ids.push_back((uint32_t)rank.at(s));
            hit = cache.emplace(piece, ids).first;
        }
        out.insert(out.end(), hit->second.begin(), hit->second.end());
    }
};
